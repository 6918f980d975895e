//! The ClassBench / dpdk-test-acl text formats: rule files and traces.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use lb_core::acl::{AddrMatch, FlowKey, MatchRule, PortRange};

/// A parsed rule file.
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Vec<MatchRule>,
    pub ipv6: bool,
}

/// Parses a rule file: `@src/len dst/len lo : hi lo : hi 0xPP/0xMM [...]`
/// per line, `#` comments; line order is precedence.
pub fn read_rules(path: &Path, ipv6: bool) -> Result<RuleSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_rules(&text, &path.display().to_string(), ipv6)
}

pub fn parse_rules(text: &str, name: &str, force_ipv6: bool) -> Result<RuleSet> {
    let mut rules = Vec::new();
    let mut saw_v6 = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rule = parse_rule(line, force_ipv6).map_err(|e| anyhow!("{name}:{}: {e}", n + 1))?;
        saw_v6 |= matches!(&rule.src, AddrMatch::Prefixes(p) if p.iter().any(|n| matches!(n, IpNet::V6(_))));
        rules.push(rule);
    }
    Ok(RuleSet {
        rules,
        ipv6: force_ipv6 || saw_v6,
    })
}

fn parse_rule(line: &str, force_ipv6: bool) -> Result<MatchRule> {
    let body = line
        .strip_prefix('@')
        .ok_or_else(|| anyhow!("a rule line starts with '@'"))?;
    let mut tokens = body.split_whitespace();
    let mut addr = |what: &str| -> Result<AddrMatch> {
        let t = tokens
            .next()
            .ok_or_else(|| anyhow!("missing {what} prefix"))?;
        let net: IpNet = t.parse().map_err(|_| anyhow!("bad {what} prefix {t:?}"))?;
        if force_ipv6 && net.addr().is_ipv4() {
            bail!("{what} prefix {t} is IPv4 in an IPv6 rule file");
        }
        Ok(AddrMatch::Prefixes(vec![net]))
    };
    let src = addr("source")?;
    let dst = addr("destination")?;
    // The rest: ports and protocol; `lo:hi` may be written with or without
    // spaces.
    let rest: Vec<String> = tokens.map(|t| t.replace(':', " : ")).collect();
    let rest = rest.join(" ");
    let mut t = rest.split_whitespace();
    let mut port_range = |what: &str| -> Result<Vec<PortRange>> {
        let lo = t.next().ok_or_else(|| anyhow!("missing {what} ports"))?;
        if t.next() != Some(":") {
            bail!("expected 'lo : hi' for {what} ports");
        }
        let hi = t
            .next()
            .ok_or_else(|| anyhow!("missing {what} port high end"))?;
        let lo: u16 = lo.parse().map_err(|_| anyhow!("bad {what} port {lo:?}"))?;
        let hi: u16 = hi.parse().map_err(|_| anyhow!("bad {what} port {hi:?}"))?;
        if lo > hi {
            bail!("empty {what} port range {lo} : {hi}");
        }
        Ok(vec![PortRange::new(lo, hi)])
    };
    let sport = port_range("source")?;
    let dport = port_range("destination")?;
    let proto = t.next().ok_or_else(|| anyhow!("missing protocol"))?;
    let (value, mask) = proto
        .split_once('/')
        .ok_or_else(|| anyhow!("protocol {proto:?} is not 0xPP/0xMM"))?;
    let hex = |s: &str| -> Result<u8> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| anyhow!("protocol {proto:?} is not 0xPP/0xMM"))?;
        u8::from_str_radix(digits, 16).map_err(|_| anyhow!("bad protocol {proto:?}"))
    };
    let proto = match (hex(value)?, hex(mask)?) {
        (_, 0) => None,
        (v, 0xff) => Some(v),
        (_, m) => bail!("unsupported protocol mask 0x{m:02x} (only 0x00 and 0xff)"),
    };
    Ok(MatchRule {
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

/// Reads a dpdk-test-acl trace: `src dst sport dport proto [...]` per line,
/// IPv4 addresses as host-order decimal integers, IPv6 as text.
pub fn read_trace(path: &Path) -> Result<Vec<FlowKey>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key =
            parse_trace_line(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        keys.push(key);
    }
    Ok(keys)
}

fn parse_trace_line(line: &str) -> Result<FlowKey> {
    let mut t = line.split_whitespace();
    let mut next = |what: &str| t.next().ok_or_else(|| anyhow!("missing {what}"));
    let addr = |s: &str| -> Result<IpAddr> {
        if let Ok(v) = s.parse::<u32>() {
            return Ok(IpAddr::V4(Ipv4Addr::from(v)));
        }
        s.parse().map_err(|_| anyhow!("bad address {s:?}"))
    };
    let src = addr(next("source")?)?;
    let dst = addr(next("destination")?)?;
    let num = |s: &str, what: &str| -> Result<u64> {
        let parsed = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        };
        parsed.map_err(|_| anyhow!("bad {what} {s:?}"))
    };
    let sport = u16::try_from(num(next("source port")?, "source port")?)?;
    let dport = u16::try_from(num(next("destination port")?, "destination port")?)?;
    let proto = u8::try_from(num(next("protocol")?, "protocol")?)?;
    Ok(FlowKey {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6() {
        let text = "# c\n@7.122.78.94/32\t7.122.75.77/32\t0 : 65535\t1433 : 1433\t0x06/0xFF\t0x1000/0x1000\t\n\
                    @::/0\t2001:db8::/32\t0:65535\t10 : 20\t0x00/0x00\n";
        let set = parse_rules(text, "t", false).unwrap();
        assert!(set.ipv6);
        assert_eq!(set.rules.len(), 2);
        assert_eq!(set.rules[0].proto, Some(6));
        assert_eq!(set.rules[0].sport, vec![PortRange::ANY]);
        assert_eq!(set.rules[0].dport, vec![PortRange::single(1433)]);
        assert_eq!(set.rules[1].proto, None);
        assert_eq!(set.rules[1].dport, vec![PortRange::new(10, 20)]);
    }

    #[test]
    fn rejects_malformed() {
        let err = parse_rules(
            "\n@1.2.3.4/32 5.6.7.8/32 0 : 70000 0 : 1 0x06/0xff\n",
            "f",
            false,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "f:2: bad source port \"70000\"");
        assert!(parse_rules("1.2.3.4/32", "f", false).is_err());
        assert!(parse_rules("@1.2.3.4/32 5.6.7.8/32 0 : 1 0 : 1 0x06/0x0f", "f", false).is_err());
        assert!(parse_rules("@1.2.3.4/32 5.6.7.8/32 0 : 1 0 : 1 0x06/0xff", "f", true).is_err());
        assert!(parse_rules("@1.2.3.4/33 5.6.7.8/32 0 : 1 0 : 1 0x06/0xff", "f", false).is_err());
    }

    #[test]
    fn parses_trace_lines() {
        let k = parse_trace_line("16909060\t84281096\t1\t2\t6\t99").unwrap();
        assert_eq!(k.src, "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(k.dst, "5.6.7.8".parse::<IpAddr>().unwrap());
        assert_eq!((k.sport, k.dport, k.proto), (1, 2, 6));
        let k = parse_trace_line("2001:db8::1 ::2 1 2 17").unwrap();
        assert!(k.is_ipv6());
        assert!(parse_trace_line("1 2 3").is_err());
    }
}
