//! The rule sets of one interface, compiled: security groups (stateful,
//! evaluated on the first packet of a session, and on its next packet
//! after a reload) and network ACLs (stateless, every packet).
//!
//! Matching order, from the cloud documents: the rules of all groups of an
//! interface are merged and sorted by priority (smaller first), then deny
//! before allow; the first rule that matches decides. The implicit default
//! rules come after every custom rule.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{AddrMatch, Classifier, FlowKey, MatchRule};
use crate::model::{Action, Config, Direction, GroupKind, Peer, PortRange, Rule};

/// What decided a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Rule `rule` (0-based, configuration order) of security group `group`.
    SgRule { group: u32, rule: u32 },
    /// Rule `rule` of network ACL `acl`.
    NaclRule { acl: u32, rule: u32 },
    /// A basic group's implicit rule: members of `group` reach each other.
    InternalAccess { group: u32 },
    /// A basic group's implicit ingress deny.
    BasicIngressDefault,
    /// A basic group's implicit egress allow.
    BasicEgressDefault,
    /// An enterprise group's implicit deny (both directions).
    EnterpriseDefault,
    /// A load balancer's group lets unmatched listener traffic through.
    LoadBalancerDefault,
    /// No network ACL rule matched `acl`: denied.
    NaclDefault { acl: u32 },
}

/// A verdict and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    pub action: Action,
    pub origin: Origin,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

/// Which kind of interface the groups protect; it sets the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceKind {
    Instance,
    LoadBalancer,
}

/// A rule list in precedence order, compiled.
#[derive(Debug, Clone)]
pub struct RuleSet {
    classifier: Classifier,
    /// Kept for linting and for the reference scan in tests.
    rules: Vec<MatchRule>,
    decisions: Vec<Decision>,
    /// What no match means.
    fallback: Option<Decision>,
}

impl RuleSet {
    fn new(entries: Vec<(MatchRule, Decision)>, fallback: Option<Decision>) -> RuleSet {
        let (rules, decisions): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        RuleSet {
            classifier: Classifier::build_staged(&rules),
            rules,
            decisions,
            fallback,
        }
    }

    /// The decision for `key`, or `None` when nothing matches and the set
    /// has no fallback.
    pub fn evaluate(&self, key: &FlowKey) -> Option<Decision> {
        match self.classifier.classify(key) {
            Some(i) => self.decisions.get(i as usize).copied(),
            None => self.fallback,
        }
    }

    /// Completes the set's staged classifier (see
    /// [`Classifier::build_staged`]): the same answers, faster. Returns
    /// whether there was anything to do.
    pub fn refine(&self) -> bool {
        self.classifier.refine(&self.rules)
    }

    /// Whether [`RuleSet::refine`] has work left.
    pub fn needs_refinement(&self) -> bool {
        self.classifier.needs_refinement()
    }

    /// The rules in precedence order with their decisions.
    pub fn entries(&self) -> impl Iterator<Item = (&MatchRule, &Decision)> {
        self.rules.iter().zip(self.decisions.iter())
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The aggregated security groups of one interface.
#[derive(Debug, Clone)]
pub struct SgPolicy {
    pub groups: Vec<u32>,
    pub ingress: RuleSet,
    pub egress: RuleSet,
}

impl SgPolicy {
    /// Compiles the groups `groups` (indices into `cfg.security_groups`, in
    /// attachment order) for an interface of kind `kind`.
    pub fn compile(
        cfg: &Config,
        members: &GroupMembers,
        groups: &[usize],
        kind: InterfaceKind,
    ) -> SgPolicy {
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        // (priority, action, attachment position, rule index): a stable total order.
        let mut order: Vec<(u8, Action, usize, usize)> = Vec::new();
        for (pos, &g) in groups.iter().enumerate() {
            for (i, r) in cfg.security_groups[g].rules.iter().enumerate() {
                order.push((r.priority, r.action, pos, i));
            }
        }
        order.sort_unstable();
        for (_, _, pos, i) in order {
            let g = groups[pos];
            let rule = &cfg.security_groups[g].rules[i];
            let m = match_rule(cfg, members, rule);
            let d = Decision {
                action: rule.action,
                origin: Origin::SgRule {
                    group: idx32(g),
                    rule: idx32(i),
                },
            };
            match rule.direction {
                Direction::Ingress => ingress.push((m, d)),
                Direction::Egress => egress.push((m, d)),
            }
        }

        let allow = |origin| Decision {
            action: Action::Allow,
            origin,
        };
        let deny = |origin| Decision {
            action: Action::Deny,
            origin,
        };
        let (in_fallback, out_fallback) = match kind {
            InterfaceKind::LoadBalancer => {
                // A load balancer's egress is its forwarding toward backends,
                // which its own groups do not filter.
                (
                    allow(Origin::LoadBalancerDefault),
                    allow(Origin::LoadBalancerDefault),
                )
            }
            InterfaceKind::Instance => {
                let enterprise = groups
                    .iter()
                    .any(|&g| cfg.security_groups[g].kind == GroupKind::Enterprise);
                if enterprise {
                    (
                        deny(Origin::EnterpriseDefault),
                        deny(Origin::EnterpriseDefault),
                    )
                } else {
                    for &g in groups {
                        if cfg.security_groups[g].kind
                            == (GroupKind::Basic {
                                internal_access: true,
                            })
                        {
                            let m = MatchRule {
                                src: AddrMatch::Prefixes(members.prefixes(g)),
                                ..MatchRule::any()
                            };
                            ingress.push((m, allow(Origin::InternalAccess { group: idx32(g) })));
                        }
                    }
                    (
                        deny(Origin::BasicIngressDefault),
                        allow(Origin::BasicEgressDefault),
                    )
                }
            }
        };
        SgPolicy {
            groups: groups.iter().map(|&g| idx32(g)).collect(),
            ingress: RuleSet::new(ingress, Some(in_fallback)),
            egress: RuleSet::new(egress, Some(out_fallback)),
        }
    }

    /// The verdict for a packet leaving (`Egress`) or entering (`Ingress`)
    /// the interface.
    pub fn evaluate(&self, direction: Direction, key: &FlowKey) -> Decision {
        let set = match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        set.evaluate(key)
            .expect("security-group rule sets always have a fallback")
    }
}

/// A network ACL, compiled. Stateless: every packet is evaluated, in the
/// direction it crosses the subnet boundary; no match = deny.
#[derive(Debug, Clone)]
pub struct NaclPolicy {
    pub ingress: RuleSet,
    pub egress: RuleSet,
}

impl NaclPolicy {
    pub fn compile(cfg: &Config, members: &GroupMembers, acl: usize) -> NaclPolicy {
        let rules = &cfg.network_acls[acl].rules;
        let mut order: Vec<(u8, Action, usize)> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.priority, r.action, i))
            .collect();
        order.sort_unstable();
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for (_, _, i) in order {
            let rule = &rules[i];
            let d = Decision {
                action: rule.action,
                origin: Origin::NaclRule {
                    acl: idx32(acl),
                    rule: idx32(i),
                },
            };
            let m = match_rule(cfg, members, rule);
            match rule.direction {
                Direction::Ingress => ingress.push((m, d)),
                Direction::Egress => egress.push((m, d)),
            }
        }
        let fallback = Some(Decision {
            action: Action::Deny,
            origin: Origin::NaclDefault { acl: idx32(acl) },
        });
        NaclPolicy {
            ingress: RuleSet::new(ingress, fallback),
            egress: RuleSet::new(egress, fallback),
        }
    }

    pub fn evaluate(&self, direction: Direction, key: &FlowKey) -> Decision {
        let set = match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        set.evaluate(key)
            .expect("network ACL rule sets always have a fallback")
    }
}

/// The private addresses of each security group's members: instances, and
/// the local addresses of load balancers attached to the group.
#[derive(Debug, Clone, Default)]
pub struct GroupMembers {
    members: Vec<Vec<IpAddr>>,
}

impl GroupMembers {
    pub fn new(cfg: &Config) -> GroupMembers {
        let mut members = vec![Vec::new(); cfg.security_groups.len()];
        for inst in &cfg.instances {
            for &g in &inst.security_groups {
                members[g].extend(inst.addresses.iter().copied());
            }
        }
        for lb in &cfg.load_balancers {
            for &g in &lb.security_groups {
                members[g].extend(lb.local_addresses.iter().copied());
            }
        }
        for m in &mut members {
            m.sort_unstable();
            m.dedup();
        }
        GroupMembers { members }
    }

    pub fn addresses(&self, group: usize) -> &[IpAddr] {
        &self.members[group]
    }

    /// The members as host prefixes.
    pub fn prefixes(&self, group: usize) -> Vec<IpNet> {
        self.members[group]
            .iter()
            .map(|&a| IpNet::from(a))
            .collect()
    }
}

/// A configuration rule as a match over the packet's own 5-tuple.
pub fn match_rule(cfg: &Config, members: &GroupMembers, rule: &Rule) -> MatchRule {
    let peer = match &rule.peer {
        Peer::Cidr(net) => AddrMatch::Prefixes(vec![*net]),
        Peer::Group(g) => AddrMatch::Prefixes(members.prefixes(*g)),
        Peer::PrefixList(p) => AddrMatch::Prefixes(cfg.prefix_lists[*p].entries.clone()),
    };
    let local = match rule.local {
        Some(net) => AddrMatch::Prefixes(vec![net]),
        None => AddrMatch::Any,
    };
    let (src, dst) = match rule.direction {
        Direction::Ingress => (peer, local),
        Direction::Egress => (local, peer),
    };
    MatchRule {
        proto: rule.protocol,
        src,
        dst,
        sport: vec![rule.source_ports],
        dport: if rule.ports.is_empty() {
            vec![PortRange::ANY]
        } else {
            rule.ports.clone()
        },
    }
}

fn idx32(i: usize) -> u32 {
    u32::try_from(i).expect("configuration indices fit in u32")
}
