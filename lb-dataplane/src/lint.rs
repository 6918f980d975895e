//! `lbctl lint`: rules that never decide, duplicates, redundant rules.

use std::collections::BTreeSet;

use lb_core::acl::lint::{lint, LintRule};
use lb_core::acl::policy::{
    Decision, GroupMembers, InterfaceKind, NaclPolicy, Origin, RuleSet, SgPolicy,
};
use lb_core::model::{Action, Config};

/// One finding, ready to print.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    pub line: u32,
    pub message: String,
}

/// Lints every security group on its own, the merged groups of every
/// interface, and every network ACL.
pub fn lint_config(cfg: &Config) -> Vec<Note> {
    let members = GroupMembers::new(cfg);
    let mut notes = BTreeSet::new();
    for g in 0..cfg.security_groups.len() {
        let p = SgPolicy::compile(cfg, &members, &[g], InterfaceKind::Instance);
        lint_sets(cfg, &p, None, &mut notes);
    }
    for inst in &cfg.instances {
        let p = SgPolicy::compile(
            cfg,
            &members,
            &inst.security_groups,
            InterfaceKind::Instance,
        );
        lint_sets(cfg, &p, Some(&inst.id), &mut notes);
    }
    for lb in cfg
        .load_balancers
        .iter()
        .filter(|lb| !lb.security_groups.is_empty())
    {
        let p = SgPolicy::compile(
            cfg,
            &members,
            &lb.security_groups,
            InterfaceKind::LoadBalancer,
        );
        lint_sets(cfg, &p, Some(&lb.id), &mut notes);
    }
    for a in 0..cfg.network_acls.len() {
        let p = NaclPolicy::compile(cfg, &members, a);
        lint_set(cfg, &p.ingress, "ingress", None, &mut notes);
        lint_set(cfg, &p.egress, "egress", None, &mut notes);
    }
    notes.into_iter().collect()
}

fn lint_sets(cfg: &Config, p: &SgPolicy, on: Option<&str>, notes: &mut BTreeSet<Note>) {
    lint_set(cfg, &p.ingress, "ingress", on, notes);
    lint_set(cfg, &p.egress, "egress", on, notes);
}

fn lint_set(cfg: &Config, set: &RuleSet, dir: &str, on: Option<&str>, notes: &mut BTreeSet<Note>) {
    // Only configured rules: the implicit defaults are not the user's to fix.
    let (rules, decisions): (Vec<LintRule>, Vec<Decision>) = set
        .entries()
        .filter(|(_, d)| matches!(d.origin, Origin::SgRule { .. } | Origin::NaclRule { .. }))
        .map(|(m, d)| {
            (
                LintRule {
                    rule: m.clone(),
                    allow: d.action == Action::Allow,
                },
                *d,
            )
        })
        .collect();
    for f in lint(&rules) {
        let (line, this) = describe(cfg, &decisions[f.rule]);
        let (_, by) = describe(cfg, &decisions[f.by]);
        let scope = match on {
            Some(id) => format!(" ({dir} of {id}, groups merged)"),
            None => format!(" ({dir})"),
        };
        let message = format!("{this} is {} {by}", f.kind);
        // The same finding seen from several interfaces is reported once,
        // from the first place it was found (the group on its own first).
        if notes
            .iter()
            .any(|n| n.line == line && n.message.starts_with(&message))
        {
            continue;
        }
        notes.insert(Note {
            line,
            message: format!("{message}{scope}"),
        });
    }
}

fn describe(cfg: &Config, d: &Decision) -> (u32, String) {
    match d.origin {
        Origin::SgRule { group, rule } => {
            let g = &cfg.security_groups[group as usize];
            (
                g.rules[rule as usize].line,
                format!("sg {} rule {}", g.id, rule + 1),
            )
        }
        Origin::NaclRule { acl, rule } => {
            let a = &cfg.network_acls[acl as usize];
            (
                a.rules[rule as usize].line,
                format!("nacl {} rule {}", a.id, rule + 1),
            )
        }
        _ => (0, "default rule".to_string()),
    }
}
