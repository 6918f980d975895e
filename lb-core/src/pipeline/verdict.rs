//! What becomes of a frame ([`Verdict`]), why ([`Reason`]), the drop
//! counter each reason counts in ([`DropKind`]), and the words `lbctl eval`
//! uses for a reason ([`Snapshot::describe`]).

use super::*;

impl Snapshot {
    /// Describes a reason in the words of `lbctl eval`.
    pub fn describe(&self, reason: &Reason) -> String {
        let mut s = String::new();
        self.write_reason(&mut s, reason);
        s
    }

    fn write_reason(&self, s: &mut String, reason: &Reason) {
        let cfg = &self.cfg;
        let listener = |lb: u32, l: u32| {
            let lbc = &cfg.load_balancers[lb as usize];
            format!("{}:{}", lbc.id, lbc.listeners[l as usize].port)
        };
        // Writing into a String cannot fail.
        let _ = match reason {
            Reason::Listener { lb, listener: l } => write!(s, "listener {}", listener(*lb, *l)),
            Reason::Session { lb: Some((lb, l)) } => {
                write!(s, "session listener {}", listener(*lb, *l))
            }
            Reason::Session { lb: None } => write!(s, "session"),
            Reason::Policy(d) => {
                self.write_decision(s, d);
                Ok(())
            }
            Reason::ListenerAcl {
                lb,
                listener: l,
                mode,
            } => {
                let lbc = &cfg.load_balancers[*lb as usize];
                let acl = lbc.listeners[*l as usize]
                    .acl
                    .map(|a| cfg.prefix_lists[a.prefix_list].id.as_str());
                let what = match mode {
                    AclMode::Whitelist => "not in whitelist",
                    AclMode::Blacklist => "in blacklist",
                };
                write!(
                    s,
                    "listener {} acl: client {} {}",
                    listener(*lb, *l),
                    what,
                    acl.unwrap_or("?")
                )
            }
            Reason::PathMtu => write!(s, "always allowed: icmp path-mtu error"),
            Reason::Related => write!(s, "icmp error related to a session"),
            Reason::Metadata => write!(s, "always allowed: metadata address"),
            Reason::RestrictSmtp => write!(s, "restrict_smtp: egress tcp/25 blocked"),
            Reason::NoHealthyServer { lb, listener: l } => {
                let sg = cfg.load_balancers[*lb as usize].listeners[*l as usize].server_group;
                write!(
                    s,
                    "listener {}: no healthy server in {}",
                    listener(*lb, *l),
                    cfg.server_groups[sg].id
                )
            }
            Reason::Malformed(e) => write!(s, "malformed: {}", e.as_str()),
            Reason::SpoofedSource { port } => match cfg.ports.get(*port as usize) {
                Some(p) => write!(
                    s,
                    "spoofed_source on port {} (source_check {})",
                    p.name,
                    p.source_check.as_str()
                ),
                None => write!(s, "spoofed_source"),
            },
            Reason::VlanMismatch { port } => match cfg.ports.get(*port as usize) {
                Some(p) => match p.vlan {
                    Some(v) => write!(s, "vlan_mismatch on port {} (vlan {v})", p.name),
                    None => write!(s, "vlan_mismatch on port {} (untagged)", p.name),
                },
                None => write!(s, "vlan_mismatch"),
            },
            Reason::TooBig { mtu, df: true } => {
                write!(s, "packet_too_big: over egress mtu {mtu}")
            }
            Reason::TooBig { mtu, df: false } => write!(
                s,
                "packet_too_big: over egress mtu {mtu}, DF clear (not fragmented)"
            ),
            Reason::SynCookie { lb, listener: l } => {
                write!(s, "syn cookie listener {}", listener(*lb, *l))
            }
            Reason::FragmentFollows { lb: Some((lb, l)) } => {
                write!(s, "fragment of session listener {}", listener(*lb, *l))
            }
            Reason::FragmentFollows { lb: None } => write!(s, "fragment of session"),
            Reason::FragmentHeld => write!(s, "fragment_held: waiting for its first fragment"),
            Reason::ListenerLimit {
                lb,
                listener: l,
                kind,
            } => {
                let lim = cfg.load_balancers[*lb as usize].listeners[*l as usize].limits;
                let n = match kind {
                    LimitKind::MaxConnections => lim.max_connections,
                    LimitKind::MaxNewConnectionsPerS => lim.max_new_connections_per_s,
                };
                write!(
                    s,
                    "listener_limit: {} {} {}",
                    listener(*lb, *l),
                    kind.as_str(),
                    n.unwrap_or(0)
                )
            }
            other => write!(s, "{}", other.kind().as_str()),
        };
    }

    fn write_decision(&self, s: &mut String, d: &Decision) {
        let cfg = &self.cfg;
        let action = d.action.as_str();
        let _ = match d.origin {
            Origin::SgRule { group, rule } => {
                write!(
                    s,
                    "sg {} rule {} ({})",
                    cfg.security_groups[group as usize].id,
                    rule + 1,
                    action
                )
            }
            Origin::NaclRule { acl, rule } => {
                write!(
                    s,
                    "nacl {} rule {} ({})",
                    cfg.network_acls[acl as usize].id,
                    rule + 1,
                    action
                )
            }
            Origin::InternalAccess { group } => write!(
                s,
                "sg {} default: internal access between members (allow)",
                cfg.security_groups[group as usize].id
            ),
            Origin::BasicIngressDefault => write!(s, "sg default: basic group ingress (deny)"),
            Origin::BasicEgressDefault => write!(s, "sg default: basic group egress (allow)"),
            Origin::EnterpriseDefault => write!(s, "sg default: enterprise group ({action})"),
            Origin::LoadBalancerDefault => write!(s, "sg default: load balancer unmatched (allow)"),
            Origin::NaclDefault { acl } => {
                write!(
                    s,
                    "nacl {} default: no rule matched (deny)",
                    cfg.network_acls[acl as usize].id
                )
            }
        };
    }
}

/// Why a packet was forwarded or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// New listener session.
    Listener {
        lb: u32,
        listener: u32,
    },
    /// A packet of an established session (`lb` for listener sessions).
    Session {
        lb: Option<(u32, u32)>,
    },
    /// An ICMP error about a packet of a session.
    Related,
    /// A security-group or network-ACL decision.
    Policy(Decision),
    ListenerAcl {
        lb: u32,
        listener: u32,
        mode: AclMode,
    },
    PathMtu,
    Metadata,
    RestrictSmtp,
    NoHealthyServer {
        lb: u32,
        listener: u32,
    },
    Malformed(ParseError),
    Fragment,
    NotForUs,
    NoListener,
    NoSession,
    NatPortsExhausted,
    SessionTableFull,
    NoRoute,
    TtlExceeded,
    UnsupportedEthertype,
    Rewrite,
    OwnSource,
    /// The source fails the `source_check` of the port it arrived on.
    SpoofedSource {
        port: u32,
    },
    /// A tagged frame on a port without that VLAN, or an untagged one on
    /// a VLAN port.
    VlanMismatch {
        port: u32,
    },
    /// An ICMP error quoting a packet of a session, whose outer addresses
    /// do not fit that packet's path (see `Worker::related_error`).
    IcmpErrorMismatch,
    /// Larger than the egress port's MTU (`mtu`). With DF set (or IPv6)
    /// the sender is told to send less; IPv4 without DF is not fragmented.
    TooBig {
        mtu: u16,
        df: bool,
    },
    /// An IPv4 loose or strict source route option, or an IPv6 routing
    /// header of type 0.
    SourceRoute,
    /// A TCP segment outside the session's sequence window (a blind RST).
    TcpOutOfWindow,
    /// A TCP flag combination no TCP sends (SYN+FIN, no flags, ...).
    TcpInvalidFlags,
    /// A TCP segment to a listener without a session, answered with a RST.
    NoSessionReset,
    /// The SYN proxy answered a SYN with a cookie.
    SynCookie {
        lb: u32,
        listener: u32,
    },
    /// A packet of a proxied session before the backend answered the
    /// proxy's SYN (the client sends it again).
    SynProxyPending,
    /// A non-first IP fragment that follows its forwarded first fragment
    /// (`lb`: the listener of its session).
    FragmentFollows {
        lb: Option<(u32, u32)>,
    },
    /// A non-first IP fragment held until its first fragment comes (not a
    /// drop yet: it goes, or is dropped as `fragment_timeout`, later).
    FragmentHeld,
    /// A non-first IP fragment whose offset overlaps the L4 header its
    /// first fragment was judged by (RFC 1858).
    FragmentOverlap,
    /// A new session refused: the listener is at one of its limits.
    ListenerLimit {
        lb: u32,
        listener: u32,
        kind: LimitKind,
    },
}

impl Reason {
    /// The counter a drop with this reason increments.
    pub fn kind(&self) -> DropKind {
        match self {
            Reason::Listener { .. }
            | Reason::Session { .. }
            | Reason::Related
            | Reason::PathMtu
            | Reason::Metadata => DropKind::None,
            Reason::Policy(d) => match d.origin {
                Origin::NaclRule { .. } | Origin::NaclDefault { .. } => DropKind::NetworkAcl,
                _ => DropKind::SecurityGroup,
            },
            Reason::ListenerAcl { .. } => DropKind::ListenerAcl,
            Reason::RestrictSmtp => DropKind::RestrictSmtp,
            Reason::NoHealthyServer { .. } => DropKind::NoHealthyServer,
            Reason::Malformed(_) => DropKind::Malformed,
            Reason::Fragment => DropKind::Fragment,
            Reason::NotForUs => DropKind::NotForUs,
            Reason::NoListener => DropKind::NoListener,
            Reason::NoSession => DropKind::NoSession,
            Reason::NatPortsExhausted => DropKind::NatPortsExhausted,
            Reason::SessionTableFull => DropKind::SessionTableFull,
            Reason::NoRoute => DropKind::NoRoute,
            Reason::TtlExceeded => DropKind::TtlExceeded,
            Reason::UnsupportedEthertype => DropKind::UnsupportedEthertype,
            Reason::Rewrite => DropKind::Rewrite,
            Reason::OwnSource => DropKind::OwnSource,
            Reason::SpoofedSource { .. } => DropKind::SpoofedSource,
            Reason::VlanMismatch { .. } => DropKind::VlanMismatch,
            Reason::IcmpErrorMismatch => DropKind::IcmpErrorMismatch,
            Reason::TooBig { .. } => DropKind::PacketTooBig,
            Reason::SourceRoute => DropKind::SourceRoute,
            Reason::TcpOutOfWindow => DropKind::TcpOutOfWindow,
            Reason::TcpInvalidFlags => DropKind::TcpInvalidFlags,
            Reason::NoSessionReset => DropKind::NoSessionReset,
            Reason::SynCookie { .. } => DropKind::None,
            Reason::SynProxyPending => DropKind::SynProxyPending,
            Reason::FragmentFollows { .. } | Reason::FragmentHeld => DropKind::None,
            Reason::FragmentOverlap => DropKind::FragmentOverlap,
            Reason::ListenerLimit { .. } => DropKind::ListenerLimit,
        }
    }
}

/// An ICMP or ICMPv6 error the data plane sends back for a dropped packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpAnswer {
    /// ICMPv6 (else ICMP).
    pub v6: bool,
    pub icmp_type: u8,
    pub code: u8,
    /// The rest of the ICMP header: the egress MTU of "fragmentation
    /// needed" and "packet too big", else 0.
    pub rest: u32,
}

impl std::fmt::Display for IcmpAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match (self.v6, self.icmp_type, self.code) {
            (false, 11, _) => "icmp time exceeded",
            (false, 3, 4) => "icmp fragmentation needed",
            (true, 3, _) => "icmpv6 time exceeded",
            (true, 2, _) => "icmpv6 packet too big",
            (false, ..) => "icmp error",
            (true, ..) => "icmpv6 error",
        };
        f.write_str(what)?;
        if self.rest != 0 {
            write!(f, ", mtu {}", self.rest)?;
        }
        Ok(())
    }
}

impl Reason {
    /// The error the sender of a packet dropped for this reason is sent
    /// (RFC 1812, RFC 4443): time exceeded in transit when its TTL or hop
    /// limit ran out here, "fragmentation needed" (IPv4 with DF) or
    /// "packet too big" (IPv6) with the egress MTU. `None` for every other
    /// reason, and never about an ICMP error, a non-first fragment, or a
    /// packet from or to an address that is not one host's.
    pub fn icmp_answer(&self, p: &Parsed) -> Option<IcmpAnswer> {
        let v6 = p.is_ipv6();
        let (icmp_type, code, rest) = match (self, v6) {
            (Reason::TtlExceeded, false) => (11, 0, 0),
            (Reason::TtlExceeded, true) => (3, 0, 0),
            (Reason::TooBig { mtu, df: true }, false) => (3, 4, u32::from(*mtu)),
            (Reason::TooBig { mtu, .. }, true) => (2, 0, u32::from(*mtu)),
            _ => return None,
        };
        let one_host = |a: IpAddr| match a {
            IpAddr::V4(a) => {
                !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
            }
            IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.is_loopback()),
        };
        let answerable = p.is_ip()
            && !p.is_icmp_error()
            && (!p.is_fragment || p.is_first_fragment)
            && one_host(p.src)
            && one_host(p.dst);
        answerable.then_some(IcmpAnswer {
            v6,
            icmp_type,
            code,
            rest,
        })
    }
}

/// Drop counters: one per kind of reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropKind {
    None,
    Malformed,
    Fragment,
    NotForUs,
    NoListener,
    ListenerAcl,
    SecurityGroup,
    NetworkAcl,
    RestrictSmtp,
    NoSession,
    NoHealthyServer,
    NatPortsExhausted,
    SessionTableFull,
    NoRoute,
    TtlExceeded,
    UnsupportedEthertype,
    Rewrite,
    OwnSource,
    SpoofedSource,
    VlanMismatch,
    IcmpErrorMismatch,
    PacketTooBig,
    SourceRoute,
    TcpOutOfWindow,
    TcpInvalidFlags,
    NoSessionReset,
    SynProxyPending,
    FragmentOverlap,
    FragmentTimeout,
    ListenerLimit,
}

impl DropKind {
    pub const COUNT: usize = DropKind::ListenerLimit as usize + 1;
    pub const ALL: [DropKind; DropKind::COUNT] = [
        DropKind::None,
        DropKind::Malformed,
        DropKind::Fragment,
        DropKind::NotForUs,
        DropKind::NoListener,
        DropKind::ListenerAcl,
        DropKind::SecurityGroup,
        DropKind::NetworkAcl,
        DropKind::RestrictSmtp,
        DropKind::NoSession,
        DropKind::NoHealthyServer,
        DropKind::NatPortsExhausted,
        DropKind::SessionTableFull,
        DropKind::NoRoute,
        DropKind::TtlExceeded,
        DropKind::UnsupportedEthertype,
        DropKind::Rewrite,
        DropKind::OwnSource,
        DropKind::SpoofedSource,
        DropKind::VlanMismatch,
        DropKind::IcmpErrorMismatch,
        DropKind::PacketTooBig,
        DropKind::SourceRoute,
        DropKind::TcpOutOfWindow,
        DropKind::TcpInvalidFlags,
        DropKind::NoSessionReset,
        DropKind::SynProxyPending,
        DropKind::FragmentOverlap,
        DropKind::FragmentTimeout,
        DropKind::ListenerLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropKind::None => "none",
            DropKind::Malformed => "malformed",
            DropKind::Fragment => "fragment",
            DropKind::NotForUs => "not_for_us",
            DropKind::NoListener => "no_listener",
            DropKind::ListenerAcl => "listener_acl",
            DropKind::SecurityGroup => "security_group",
            DropKind::NetworkAcl => "network_acl",
            DropKind::RestrictSmtp => "restrict_smtp",
            DropKind::NoSession => "no_session",
            DropKind::NoHealthyServer => "no_healthy_server",
            DropKind::NatPortsExhausted => "nat_ports_exhausted",
            DropKind::SessionTableFull => "session_table_full",
            DropKind::NoRoute => "no_route",
            DropKind::TtlExceeded => "ttl_exceeded",
            DropKind::UnsupportedEthertype => "unsupported_ethertype",
            DropKind::Rewrite => "rewrite_failed",
            DropKind::OwnSource => "source_is_ours",
            DropKind::SpoofedSource => "spoofed_source",
            DropKind::VlanMismatch => "vlan_mismatch",
            DropKind::IcmpErrorMismatch => "icmp_error_mismatch",
            DropKind::PacketTooBig => "packet_too_big",
            DropKind::SourceRoute => "ip_source_route",
            DropKind::TcpOutOfWindow => "tcp_out_of_window",
            DropKind::TcpInvalidFlags => "tcp_invalid_flags",
            DropKind::NoSessionReset => "no_session_reset",
            DropKind::SynProxyPending => "syn_proxy_pending",
            DropKind::FragmentOverlap => "fragment_overlap",
            DropKind::FragmentTimeout => "fragment_timeout",
            DropKind::ListenerLimit => "listener_limit",
        }
    }
}

/// Packets the data plane answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// ARP request or reply addressed to one of our addresses.
    Arp,
    /// IPv6 neighbour discovery (solicitation / advertisement).
    Neighbor,
    /// ICMP or ICMPv6 echo request to one of our addresses.
    EchoRequest,
    /// Any other packet to a port or local address without a session
    /// (health-check replies are matched by the health checker).
    ToSelf,
}

/// The outcome for one frame.
#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    /// The frame was rewritten in place; send it through `hop`.
    Forward(Forward),
    Drop(Reason),
    /// For the data plane itself (it parses the frame again: rare).
    Local(LocalKind),
    /// Send the frame the worker built in answer ([`Worker::built`], e.g.
    /// the SYN proxy's SYN-ACK) through `hop`, not the received one.
    Send(Forward),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub hop: Hop,
    pub reason: Reason,
    /// For listener traffic: (server group, server).
    pub backend: Option<(u32, u32)>,
    /// The packet's 5-tuple as it leaves.
    pub out: FlowKey,
}

impl Verdict {
    pub fn is_drop(&self) -> bool {
        matches!(self, Verdict::Drop(_))
    }
}
