//! The 5-tuple every layer above the packet parser speaks.

use std::net::IpAddr;

/// A packet's 5-tuple. For ICMP echo both ports carry the echo identifier;
/// for other protocols without ports both are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Hashes as five machine words (two 128-bit addresses, one word of ports
/// and protocol): the session table hashes every packet's key.
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u128(addr_bits(self.src));
        h.write_u128(addr_bits(self.dst));
        h.write_u64(
            (u64::from(self.sport) << 24) | (u64::from(self.dport) << 8) | u64::from(self.proto),
        );
    }
}

/// An address as 128 bits, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
#[inline]
pub fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) | (0xffff_u128 << 32),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            sport: self.dport,
            dport: self.sport,
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }
}

/// A protocol's name in traces: tcp, udp, icmp, icmpv6, gre, else the number.
pub fn proto_name(proto: u8) -> std::borrow::Cow<'static, str> {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        58 => "icmpv6".into(),
        n => n.to_string().into(),
    }
}

/// A protocol number from its trace name or number.
pub fn proto_from_name(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        "gre" => Some(47),
        "icmpv6" => Some(58),
        n => n.parse().ok(),
    }
}

/// The trace notation of `lbctl eval`: `tcp 198.18.0.2:1025 > 198.19.1.11:80`,
/// `tcp [2001:db8::2]:1025 > [2001:db8::11]:80`, `icmp 198.18.0.2 > 198.18.0.10`.
impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let with_port = matches!(self.proto, 6 | 17);
        write!(f, "{} ", proto_name(self.proto))?;
        let end = |f: &mut std::fmt::Formatter<'_>, a: IpAddr, p: u16| match (a, with_port) {
            (IpAddr::V6(a), true) => write!(f, "[{a}]:{p}"),
            (a, true) => write!(f, "{a}:{p}"),
            (a, false) => write!(f, "{a}"),
        };
        end(f, self.src, self.sport)?;
        write!(f, " > ")?;
        end(f, self.dst, self.dport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_notation() {
        let k = FlowKey {
            src: "198.19.1.250".parse().expect("addr"),
            dst: "198.19.1.11".parse().expect("addr"),
            proto: 6,
            sport: 1025,
            dport: 80,
        };
        assert_eq!(k.to_string(), "tcp 198.19.1.250:1025 > 198.19.1.11:80");
        let k6 = FlowKey {
            src: "2001:db8::2".parse().expect("addr"),
            dst: "2001:db8::11".parse().expect("addr"),
            ..k
        };
        assert_eq!(k6.to_string(), "tcp [2001:db8::2]:1025 > [2001:db8::11]:80");
        let icmp = FlowKey { proto: 1, ..k };
        assert_eq!(icmp.to_string(), "icmp 198.19.1.250 > 198.19.1.11");
        assert_eq!(proto_from_name("GRE"), Some(47));
        assert_eq!(proto_from_name("132"), Some(132));
        assert_eq!(proto_from_name("sctp"), None);
    }
}
