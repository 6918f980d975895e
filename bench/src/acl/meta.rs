//! The `<rules>.meta` side files of the security-group sets, and the grouped
//! form of such a set: the lines expanded from one remote security group or
//! prefix list merged back into one rule with a prefix list.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lb_core::acl::{AddrMatch, MatchRule};

/// One `line,sg_prio,action,origin` row per rule line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Per rule (line order): the action is `allow`.
    pub allow: Vec<bool>,
    /// Per rule: the security-group priority column, as written.
    pub prio: Vec<String>,
    /// Per rule: `cidr`, `sg:<id>` or `pl:<id>`.
    pub origin: Vec<String>,
}

/// `<rules>.meta` beside `rules`, if it exists.
pub fn meta_path(rules: &Path) -> PathBuf {
    let mut meta = rules.as_os_str().to_owned();
    meta.push(".meta");
    PathBuf::from(meta)
}

/// Reads the `.meta` of a rule file of `n` rules; `None` when there is none.
pub fn read_meta(rules: &Path, n: usize) -> Result<Option<Meta>> {
    let path = meta_path(rules);
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_meta(&text, &path.display().to_string(), n).map(Some)
}

pub fn parse_meta(text: &str, name: &str, n: usize) -> Result<Meta> {
    let mut meta = Meta {
        allow: vec![true; n],
        prio: vec![String::new(); n],
        origin: vec!["cidr".to_owned(); n],
    };
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split(',');
        let (Some(num), Some(prio), Some(action)) = (cols.next(), cols.next(), cols.next()) else {
            bail!("{name}:{}: expected line,sg_prio,action,origin", i + 1);
        };
        let origin = cols.next().unwrap_or("cidr").trim();
        let num: usize = num
            .trim()
            .parse()
            .with_context(|| format!("{name}:{}: bad line number", i + 1))?;
        let Some(r) = num.checked_sub(1).filter(|&r| r < n) else {
            bail!("{name}:{}: line {num} is not a rule of the file", i + 1);
        };
        meta.allow[r] = action.trim() == "allow";
        meta.prio[r] = prio.trim().to_owned();
        meta.origin[r] = origin.to_owned();
    }
    Ok(meta)
}

/// A rule set in grouped form.
#[derive(Debug, Clone)]
pub struct Grouped {
    /// One rule per group, in line order.
    pub rules: Vec<MatchRule>,
    /// Per line: the index of its group in `rules`.
    pub group_of: Vec<u32>,
    /// Per group: allow (from its lines, which all agree).
    pub allow: Vec<bool>,
}

/// Merges runs of consecutive lines with the same origin `sg:*` / `pl:*`,
/// action and priority whose fields differ only in the source prefix into one
/// rule matching any of their sources. First-match semantics are unchanged:
/// the first matching line of a run is in the run's group, and a run's lines
/// are adjacent.
pub fn group(lines: &[MatchRule], meta: &Meta) -> Grouped {
    let mut out = Grouped {
        rules: Vec::new(),
        group_of: Vec::with_capacity(lines.len()),
        allow: Vec::new(),
    };
    let mut prev: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        let joins = prev.is_some_and(|p| {
            let (pr, ln) = (&lines[p], line);
            meta.origin[i] != "cidr"
                && meta.origin[i] == meta.origin[p]
                && meta.allow[i] == meta.allow[p]
                && meta.prio[i] == meta.prio[p]
                && pr.proto == ln.proto
                && pr.dst == ln.dst
                && pr.sport == ln.sport
                && pr.dport == ln.dport
                && matches!(pr.src, AddrMatch::Prefixes(_))
                && matches!(ln.src, AddrMatch::Prefixes(_))
        });
        let last = out.rules.last_mut();
        match (joins, last, &line.src) {
            (true, Some(rule), AddrMatch::Prefixes(nets)) => {
                if let AddrMatch::Prefixes(all) = &mut rule.src {
                    all.extend(nets.iter().copied());
                }
            }
            _ => {
                out.rules.push(line.clone());
                out.allow.push(meta.allow[i]);
            }
        }
        let g = u32::try_from(out.rules.len() - 1).expect("fewer than 2^32 rules");
        out.group_of.push(g);
        prev = Some(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::classbench::parse_rules;
    use lb_core::acl::{linear_classify, FlowKey};

    #[test]
    fn groups_runs_of_one_origin() {
        let rules = parse_rules(
            "@10.0.0.1/32 10.9.0.0/16 0 : 65535 22 : 22 0x06/0xff\n\
             @10.0.0.2/32 10.9.0.0/16 0 : 65535 22 : 22 0x06/0xff\n\
             @10.0.0.3/32 10.9.0.0/16 0 : 65535 80 : 80 0x06/0xff\n\
             @10.0.0.4/32 10.9.0.0/16 0 : 65535 80 : 80 0x06/0xff\n\
             @10.0.0.5/32 10.9.0.0/16 0 : 65535 80 : 80 0x06/0xff\n\
             @0.0.0.0/0 0.0.0.0/0 0 : 65535 0 : 65535 0x00/0x00\n",
            "t",
            false,
        )
        .unwrap()
        .rules;
        let meta = parse_meta(
            "line,sg_prio,action,origin\n1,1,allow,sg:1\n2,1,allow,sg:1\n3,1,allow,sg:1\n\
             4,1,allow,pl:2\n5,1,allow,pl:2\n6,2,deny,cidr\n",
            "m",
            rules.len(),
        )
        .unwrap();
        let g = group(&rules, &meta);
        assert_eq!(g.group_of, vec![0, 0, 1, 2, 2, 3]);
        assert_eq!(g.rules.len(), 4);
        assert_eq!(g.allow, vec![true, true, true, false]);
        for last in 1..=6u8 {
            let key = FlowKey {
                src: format!("10.0.0.{last}").parse().unwrap(),
                dst: "10.9.1.1".parse().unwrap(),
                proto: 6,
                sport: 1000,
                dport: 80,
            };
            let line = linear_classify(&rules, &key);
            let want = line.map(|l| g.group_of[l as usize]);
            assert_eq!(linear_classify(&g.rules, &key), want);
        }
    }
}
