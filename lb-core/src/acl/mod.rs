//! Security groups, network ACLs and listener ACLs.
//!
//! Rules are first reduced to [`MatchRule`]s over the packet's own 5-tuple
//! (source/destination, not remote/local), in precedence order. A
//! [`Classifier`] answers "which is the first rule that matches" for a
//! [`FlowKey`]; [`linear_classify`] is the reference it must agree with.

mod classifier;
pub mod lint;
pub mod policy;

pub use classifier::{Classifier, KeyColumns, KeyColumnsBuf, NO_MATCH};

use ipnet::IpNet;

pub use crate::flow::FlowKey;
pub use crate::model::PortRange;

/// An address field of a [`MatchRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    /// Any address of either family.
    Any,
    /// Any address inside one of these prefixes (either family; an empty list
    /// matches nothing, e.g. a security group without members).
    Prefixes(Vec<IpNet>),
}

impl AddrMatch {
    pub fn matches(&self, addr: std::net::IpAddr) -> bool {
        match self {
            AddrMatch::Any => true,
            AddrMatch::Prefixes(nets) => nets.iter().any(|n| n.contains(&addr)),
        }
    }
}

/// One rule reduced to what a packet's 5-tuple is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchRule {
    /// `None` = every protocol.
    pub proto: Option<u8>,
    pub src: AddrMatch,
    pub dst: AddrMatch,
    /// Source ports (`[PortRange::ANY]` = any).
    pub sport: Vec<PortRange>,
    /// Destination ports (`[PortRange::ANY]` = any).
    pub dport: Vec<PortRange>,
}

impl MatchRule {
    /// A rule that matches every packet.
    pub fn any() -> MatchRule {
        MatchRule {
            proto: None,
            src: AddrMatch::Any,
            dst: AddrMatch::Any,
            sport: vec![PortRange::ANY],
            dport: vec![PortRange::ANY],
        }
    }

    pub fn matches(&self, key: &FlowKey) -> bool {
        self.proto.is_none_or(|p| p == key.proto)
            && self.src.matches(key.src)
            && self.dst.matches(key.dst)
            && self.sport.iter().any(|r| r.contains(key.sport))
            && self.dport.iter().any(|r| r.contains(key.dport))
    }
}

/// The reference classifier: the index of the first rule that matches.
pub fn linear_classify(rules: &[MatchRule], key: &FlowKey) -> Option<u32> {
    rules
        .iter()
        .position(|r| r.matches(key))
        .map(|i| u32::try_from(i).expect("rule sets hold fewer than 2^32 rules"))
}
