//! The per-packet decision, shared by the data-plane workers and by
//! `lbctl eval`: one function from (frame, time, configuration snapshot,
//! worker state) to a verdict.
//!
//! ```
//! use lb_core::model::Config;
//! use lb_core::pipeline::{Snapshot, Worker, AllUp, RxInfo};
//! let snap = Snapshot::compile(Config::default(), 1);
//! let mut worker = Worker::new(0, 1, 1024, 1024);
//! let mut frame = vec![0u8; 10]; // too short for Ethernet
//! let v = worker.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp);
//! assert!(v.is_drop());
//! ```

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::acl::policy::{
    Decision, GroupMembers, InterfaceKind, NaclPolicy, Origin, RuleSet, SgPolicy,
};
use crate::conntrack::{tcp_valid_flags, Dir, SegmentCheck, SessionTable, TcpSegment, Timeouts};
use crate::flow::FlowKey;
use crate::model::{proto, AclMode, BackendSgPolicy, Config, Direction, SourceCheck};
use crate::nat::PortAllocator;
use crate::packet::{self, L4Csum, ParseError, Parsed};
use crate::sched::{self, Scheduler};
use crate::synproxy;

mod syn_proxy;
use crate::{Nanos, NANOS_PER_SEC};

/// The most frames [`Worker::process_burst`] handles in one call.
pub const BURST_MAX: usize = 64;

/// How many expired sessions one call of [`Worker::process`] reaps at most.
const REAP_BUDGET: usize = 8;

/// A compiled, immutable configuration: what the workers read.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub cfg: Config,
    pub members: GroupMembers,
    lb_policy: Vec<Option<SgPolicy>>,
    instance_policy: Vec<SgPolicy>,
    nacl_policy: Vec<NaclPolicy>,
    /// (VIP, IP protocol, port) → (load balancer, listener).
    listeners: HashMap<(IpAddr, u8, u16), (u32, u32)>,
    /// Local (FULLNAT source) address → load balancer.
    local_addrs: HashMap<IpAddr, u32>,
    /// Per load balancer, its local addresses of each family (`[IPv4, IPv6]`).
    locals_by_family: Vec<[Vec<IpAddr>; 2]>,
    /// Every address of the data plane's own (port, VIP, local), for the
    /// one lookup each packet without a session needs: whether it is a VIP
    /// (`true`) or another of ours (`false`).
    own: HashMap<IpAddr, bool>,
    instance_by_addr: HashMap<IpAddr, u32>,
    /// Instance and server addresses: the inside of the data plane.
    backend_addrs: HashSet<IpAddr>,
    /// Longest prefix first.
    routes: Vec<RouteEntry>,
    pub timeouts: Timeouts,
    /// Per port (index into `cfg.ports`), what it checks on arrival.
    ingress: Vec<Ingress>,
}

/// A port's checks on arriving frames, compact for the per-packet path.
#[derive(Debug, Clone, Copy)]
struct Ingress {
    vlan: Option<u16>,
    check: SourceCheck,
}

impl Ingress {
    /// Whether the frame's tagging fits the port: an untagged port takes
    /// untagged frames only; a port with `vlan = N`, frames with exactly
    /// one 802.1Q tag of VLAN N (any priority). An 802.1ad or a second tag
    /// shows as a tag's EtherType after the first.
    fn admits_tagging(&self, p: &Parsed) -> bool {
        p.vlan == self.vlan && !packet::is_vlan_tag(p.ethertype)
    }
}

#[derive(Debug, Clone, Copy)]
struct RouteEntry {
    /// The prefix as 128-bit value and mask (IPv4 mapped into IPv6).
    bits: u128,
    mask: u128,
    v6: bool,
    via: Option<IpAddr>,
    port: u32,
}

impl RouteEntry {
    fn new(net: IpNet, via: Option<IpAddr>, port: u32) -> RouteEntry {
        let len = match net {
            IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
            IpNet::V6(n) => u32::from(n.prefix_len()),
        };
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        RouteEntry {
            bits: crate::flow::addr_bits(net.network()) & mask,
            mask,
            v6: matches!(net, IpNet::V6(_)),
            via,
            port,
        }
    }
}

/// Where a forwarded packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Index into `cfg.ports`.
    pub port: u32,
    /// The neighbour to send to (the destination itself when on-link).
    pub next_hop: IpAddr,
}

impl Snapshot {
    /// Compiles a configuration that `lb-config` has validated (every index
    /// in range); `generation` tells sessions which rules admitted them.
    pub fn compile(cfg: Config, generation: u64) -> Snapshot {
        let members = GroupMembers::new(&cfg);
        let lb_policy = cfg
            .load_balancers
            .iter()
            .map(|lb| {
                (!lb.security_groups.is_empty()).then(|| {
                    SgPolicy::compile(
                        &cfg,
                        &members,
                        &lb.security_groups,
                        InterfaceKind::LoadBalancer,
                    )
                })
            })
            .collect();
        let instance_policy = cfg
            .instances
            .iter()
            .map(|i| SgPolicy::compile(&cfg, &members, &i.security_groups, InterfaceKind::Instance))
            .collect();
        let nacl_policy = (0..cfg.network_acls.len())
            .map(|a| NaclPolicy::compile(&cfg, &members, a))
            .collect();

        let mut listeners = HashMap::new();
        let mut vips = HashSet::new();
        let mut local_addrs = HashMap::new();
        for (li, lb) in cfg.load_balancers.iter().enumerate() {
            for &vip in &lb.vips {
                vips.insert(vip);
                for (ni, l) in lb.listeners.iter().enumerate() {
                    listeners.insert(
                        (vip, l.protocol.ip_protocol(), l.port),
                        (idx32(li), idx32(ni)),
                    );
                }
            }
            for &a in &lb.local_addresses {
                local_addrs.insert(a, idx32(li));
            }
        }
        let locals_by_family = cfg
            .load_balancers
            .iter()
            .map(|lb| {
                let of = |v6: bool| -> Vec<IpAddr> {
                    let all = lb.local_addresses.iter().copied();
                    all.filter(|a| a.is_ipv6() == v6).collect()
                };
                [of(false), of(true)]
            })
            .collect();
        let mut instance_by_addr = HashMap::new();
        for (ii, inst) in cfg.instances.iter().enumerate() {
            for &a in &inst.addresses {
                instance_by_addr.insert(a, idx32(ii));
            }
        }
        let mut backend_addrs: HashSet<IpAddr> = instance_by_addr.keys().copied().collect();
        for g in &cfg.server_groups {
            for s in &g.servers {
                backend_addrs.extend(s.addresses.iter().copied());
            }
        }
        let mut port_addrs = HashSet::new();
        let mut routes = Vec::new();
        for (pi, port) in cfg.ports.iter().enumerate() {
            for net in &port.addresses {
                port_addrs.insert(net.addr());
                routes.push(RouteEntry::new(net.trunc(), None, idx32(pi)));
            }
        }
        for r in &cfg.routes {
            routes.push(RouteEntry::new(r.destination, r.via, idx32(r.port)));
        }
        // Longest prefix first; on-link entries before configured ones of the same length.
        routes.sort_by_key(|r| std::cmp::Reverse(r.mask.count_ones()));
        let timeouts = Timeouts::from_session_timeout(cfg.platform.session_timeout_s)
            .with_unreplied(cfg.platform.unreplied_timeout_s);
        let ingress = cfg
            .ports
            .iter()
            .map(|p| Ingress {
                vlan: p.vlan,
                check: p.source_check,
            })
            .collect();
        let own = port_addrs
            .iter()
            .chain(local_addrs.keys())
            .map(|&a| (a, false))
            .chain(vips.iter().map(|&a| (a, true)))
            .collect();
        Snapshot {
            generation,
            cfg,
            members,
            lb_policy,
            instance_policy,
            nacl_policy,
            listeners,
            local_addrs,
            locals_by_family,
            own,
            instance_by_addr,
            backend_addrs,
            routes,
            timeouts,
            ingress,
        }
    }

    /// Every compiled rule set: the load balancers' and instances' security
    /// groups and the network ACLs, each direction.
    pub fn rule_sets(&self) -> impl Iterator<Item = &RuleSet> {
        fn sg(p: &SgPolicy) -> [&RuleSet; 2] {
            [&p.ingress, &p.egress]
        }
        fn nacl(p: &NaclPolicy) -> [&RuleSet; 2] {
            [&p.ingress, &p.egress]
        }
        self.lb_policy
            .iter()
            .flatten()
            .chain(&self.instance_policy)
            .flat_map(sg)
            .chain(self.nacl_policy.iter().flat_map(nacl))
    }

    /// Completes the rule sets' staged classifiers (see
    /// [`Classifier::build_staged`](crate::acl::Classifier::build_staged)):
    /// a compiled snapshot classifies at once, with the tables built in well
    /// under a millisecond per 1000 rules; this then searches for their
    /// final tables, which can take 100 ms or more on large sets, and the
    /// workers take them as they come. Answers never change, only their
    /// speed. Returns how many rule sets it refined.
    pub fn refine(&self) -> usize {
        self.rule_sets().filter(|r| r.refine()).count()
    }

    /// The route toward `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<Hop> {
        let bits = crate::flow::addr_bits(dst);
        self.routes
            .iter()
            .find(|r| bits & r.mask == r.bits && r.v6 == dst.is_ipv6())
            .map(|r| Hop {
                port: r.port,
                next_hop: r.via.unwrap_or(dst),
            })
    }

    /// The checks of the port a frame arrived on (`None`: not known).
    #[inline]
    fn ingress_of(&self, port: Option<u32>) -> Option<(u32, Ingress)> {
        let port = port?;
        Some((port, *self.ingress.get(port as usize)?))
    }

    /// Whether `addr` is one of the data plane's own: a port address, a VIP
    /// or a local address.
    pub fn is_own_address(&self, addr: IpAddr) -> bool {
        self.own.contains_key(&addr)
    }

    /// Whether `addr` is a load balancer's VIP.
    pub fn is_vip(&self, addr: IpAddr) -> bool {
        self.own.get(&addr) == Some(&true)
    }

    /// All addresses the data plane answers ARP / neighbour solicitations for.
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.own.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn instance_at(&self, addr: IpAddr) -> Option<usize> {
        self.instance_by_addr.get(&addr).map(|&i| i as usize)
    }

    pub fn listener_at(&self, vip: IpAddr, ip_proto: u8, port: u16) -> Option<(usize, usize)> {
        self.listeners
            .get(&(vip, ip_proto, port))
            .map(|&(l, n)| (l as usize, n as usize))
    }

    pub fn instance_policy(&self, instance: usize) -> &SgPolicy {
        &self.instance_policy[instance]
    }

    pub fn lb_policy(&self, lb: usize) -> Option<&SgPolicy> {
        self.lb_policy[lb].as_ref()
    }

    /// The network ACL of the subnet of `instance`, if it has one.
    fn nacl_of(&self, instance: usize) -> Option<(usize, &NaclPolicy)> {
        let subnet = &self.cfg.subnets[self.cfg.instances[instance].subnet];
        subnet.network_acl.map(|a| (a, &self.nacl_policy[a]))
    }

    fn in_subnet_of(&self, instance: usize, addr: IpAddr) -> bool {
        let subnet = &self.cfg.subnets[self.cfg.instances[instance].subnet];
        subnet.cidrs.iter().any(|c| c.contains(&addr))
    }

    /// Checks whether the security groups and network ACL of the backend
    /// `instance` admit `key` (a packet the load balancer forwards to it)
    /// under `backend_sg_policy`. `transfer_client_ip` listeners are never
    /// checked (the documents: "not limited by network ACL and security
    /// group rules"); network ACLs are skipped when the load balancer's
    /// source address lies in the backend's subnet.
    pub fn backend_admits(
        &self,
        instance: usize,
        key: &FlowKey,
        transfer_client_ip: bool,
    ) -> Result<(), Reason> {
        if self.cfg.platform.backend_sg_policy == BackendSgPolicy::Bypass || transfer_client_ip {
            return Ok(());
        }
        if !self.in_subnet_of(instance, key.src) {
            if let Some((_, nacl)) = self.nacl_of(instance) {
                let d = nacl.evaluate(Direction::Ingress, key);
                if !d.allowed() {
                    return Err(Reason::Policy(d));
                }
            }
        }
        let d = self.instance_policy[instance].evaluate(Direction::Ingress, key);
        if d.allowed() {
            Ok(())
        } else {
            Err(Reason::Policy(d))
        }
    }

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
}

impl DropKind {
    pub const COUNT: usize = DropKind::SynProxyPending as usize + 1;
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

/// A received frame and what the port knows about it, for
/// [`Worker::process_burst`].
#[derive(Debug)]
pub struct Frame<'a> {
    pub data: &'a mut [u8],
    pub rx: RxInfo,
}

/// Facts about a received frame that only the port knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxInfo {
    /// The L4 checksum is partial (the kernel deferred it, as veth does).
    pub csum_partial: bool,
    /// The port (index into `cfg.ports`) the frame arrived on; `None`
    /// when not known, which skips the port's VLAN and source checks.
    pub port: Option<u32>,
}

/// Which servers are up: health checks in `lbd`, `@health` lines in
/// `lbctl eval`.
pub trait Health {
    fn is_up(&self, group: usize, server: usize) -> bool;
}

/// Every server is up.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllUp;

impl Health for AllUp {
    fn is_up(&self, _group: usize, _server: usize) -> bool {
        true
    }
}

/// What a session remembers, in 16 bytes (an IPv4 session with its keys
/// fills one cache line).
///
/// What the packets leave as follows from the session's two keys: an
/// original-direction packet leaves as the reply key reversed, a reply as
/// the original key reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// For listener sessions: load balancer, listener, server group and
    /// server indices (a configuration has at most
    /// `lb_config::MAX_PER_KIND` of each); `NO_LISTENER` in the first for
    /// routed sessions, `u16::MAX` in the last for a server gone.
    listener: [u16; 4],
    /// The low 32 bits of the configuration generation whose rules
    /// admitted the session.
    generation: u32,
    /// The session holds a local port (FULLNAT): its reply key's
    /// destination address and port, given back when the session ends.
    pub local_port: bool,
    /// Per direction, a nibble each (the original direction's low), the
    /// port its packets last arrived on and passed that port's source
    /// check ([`UNPINNED`]: none yet). Packets arriving there skip the
    /// check; elsewhere they take it.
    ingress: u8,
    /// Where a session the SYN proxy opened is (see `syn_proxy.rs`).
    proxy: ProxyPhase,
    /// The window shifts of a proxied session ([`synproxy::Translation`]),
    /// a nibble each: the backend's (signed) low, the client's high (see
    /// [`Flow::shifts`]). Before the backend answered, the client's holds
    /// the client's window scale plus one (0: none).
    shifts: u8,
}

/// The SYN proxy's part in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyPhase {
    /// Not proxied.
    None,
    /// The client completed its handshake with the proxy; the proxy's SYN
    /// to the backend waits for its SYN-ACK.
    AwaitBackend,
    /// Both handshakes are done: packets are translated.
    Translated,
}

/// `Flow::listener[0]` of a routed session.
const NO_LISTENER: u16 = u16::MAX;

/// `Flow::ingress` of a direction not seen yet (or of a port whose index
/// does not fit in a nibble, from the 16th port on: such packets take the
/// full check each time).
const UNPINNED: u8 = 0xf;

/// Both directions unpinned.
const UNPINNED_BOTH: u8 = UNPINNED << 4 | UNPINNED;

/// A port index as `Flow::ingress` holds it.
fn pin(port: Option<u32>) -> u8 {
    port.and_then(|p| u8::try_from(p).ok())
        .filter(|&p| p < UNPINNED)
        .unwrap_or(UNPINNED)
}

impl Flow {
    /// A listener session's flow: (load balancer, listener, server group,
    /// server), the server [`GONE`] if it left its group. `None` when an
    /// index does not fit in 16 bits (a configuration `lb_config` refuses).
    fn listener_session(
        at: (u32, u32, u32, u32),
        generation: u64,
        local_port: bool,
    ) -> Option<Flow> {
        let mut flow = Flow {
            listener: [NO_LISTENER; 4],
            generation: generation as u32,
            local_port,
            ingress: UNPINNED_BOTH,
            proxy: ProxyPhase::None,
            shifts: 0,
        };
        flow.set_listener(at).then_some(flow)
    }

    fn routed(generation: u64) -> Flow {
        Flow {
            listener: [NO_LISTENER; 4],
            generation: generation as u32,
            local_port: false,
            ingress: UNPINNED_BOTH,
            proxy: ProxyPhase::None,
            shifts: 0,
        }
    }

    /// For listener sessions: (load balancer, listener, server group,
    /// server), the server `u32::MAX` if it left its group in a reload.
    pub fn listener(&self) -> Option<(u32, u32, u32, u32)> {
        let [lb, l, g, s] = self.listener;
        if lb == NO_LISTENER {
            return None;
        }
        let server = if s == u16::MAX { GONE } else { u32::from(s) };
        Some((lb.into(), l.into(), g.into(), server))
    }

    /// Sets the listener session's indices; false (and nothing changes)
    /// when one does not fit in 16 bits.
    #[must_use]
    fn set_listener(&mut self, (lb, l, g, s): (u32, u32, u32, u32)) -> bool {
        let idx = |i: u32| u16::try_from(i).ok().filter(|&i| i != u16::MAX);
        let server = if s == GONE { Some(u16::MAX) } else { idx(s) };
        match (idx(lb), idx(l), idx(g), server) {
            (Some(lb), Some(l), Some(g), Some(s)) => {
                self.listener = [lb, l, g, s];
                true
            }
            _ => false,
        }
    }

    /// Whether direction `dir` last passed its source check on `port`, under
    /// the configuration `generation`.
    #[inline]
    fn pinned_to(&self, dir: Dir, port: u32, generation: u64) -> bool {
        let p = self.ingress >> (4 * dir.index()) & 0xf;
        p != UNPINNED && u32::from(p) == port && self.admitted_in(generation)
    }

    /// Pins direction `dir` to port `pin` (see [`pin`]).
    fn set_pin(&mut self, dir: Dir, pin: u8) {
        let at = 4 * dir.index();
        self.ingress = self.ingress & !(0xf << at) | (pin & 0xf) << at;
    }

    /// The flow with its original direction pinned to port `pin`.
    fn arrived_on(mut self, pin: u8) -> Flow {
        self.set_pin(Dir::Orig, pin);
        self
    }

    /// The window shifts of a proxied session: (backend's, client's).
    fn shifts(&self) -> (i8, i8) {
        // The low nibble sign-extended.
        let backend = ((self.shifts << 4) as i8) >> 4;
        (backend, (self.shifts >> 4) as i8)
    }

    /// Sets the window shifts (backend's -8..=7, client's 0..=15; window
    /// scales are at most 14, so these hold every pair the proxy makes).
    fn set_shifts(&mut self, backend: i8, client: i8) {
        let b = backend.clamp(-8, 7) as u8 & 0xf;
        let c = client.clamp(0, 15) as u8;
        self.shifts = c << 4 | b;
    }

    /// Whether the rules of configuration `generation` admitted the session
    /// (compared on the low 32 bits: a session would have to outlive 2^32
    /// reloads to be mistaken).
    pub fn admitted_in(&self, generation: u64) -> bool {
        self.generation == generation as u32
    }
}

/// Open and total sessions of a listener or a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCount {
    pub active: u64,
    pub total: u64,
}

/// Session counts by a pair of configuration indices ((load balancer,
/// listener) or (server group, server)): a dense table, so that counting a
/// new session is two index computations, not two hash-map entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounts {
    rows: Vec<Vec<SessionCount>>,
    /// Where an index beyond a session's 16 bits would count (none does):
    /// such a pair never makes the table grow.
    spill: SessionCount,
}

impl SessionCounts {
    /// The count of `(a, b)`, created (zero) if new.
    #[inline]
    pub fn at_mut(&mut self, (a, b): (u32, u32)) -> &mut SessionCount {
        let (a, b) = (a as usize, b as usize);
        if a > usize::from(u16::MAX) || b > usize::from(u16::MAX) {
            return &mut self.spill;
        }
        if a >= self.rows.len() {
            self.rows.resize_with(a + 1, Vec::new);
        }
        let row = &mut self.rows[a];
        if b >= row.len() {
            row.resize(b + 1, SessionCount::default());
        }
        &mut row[b]
    }

    /// The count of `(a, b)`, if it was ever counted.
    #[inline]
    pub fn get_mut(&mut self, (a, b): (u32, u32)) -> Option<&mut SessionCount> {
        self.rows.get_mut(a as usize)?.get_mut(b as usize)
    }

    /// Every pair with a session open or counted, and its count.
    pub fn iter(&self) -> impl Iterator<Item = ((u32, u32), &SessionCount)> + '_ {
        self.rows.iter().enumerate().flat_map(|(a, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, c)| c.active > 0 || c.total > 0)
                .map(move |(b, c)| ((a as u32, b as u32), c))
        })
    }

    /// Forgets every count (keeps the memory).
    pub fn clear(&mut self) {
        for row in &mut self.rows {
            row.fill(SessionCount::default());
        }
    }
}

/// Per-worker counters. The maps are keyed by configuration indices and
/// refer to the generation the worker last adopted (`generation`).
#[derive(Debug, Clone)]
pub struct Stats {
    pub rx: u64,
    pub forwarded: u64,
    pub local: u64,
    pub drops: [u64; DropKind::COUNT],
    pub sessions_created: u64,
    pub generation: u64,
    /// Packets decided by each rule (or default) since the last reload.
    pub rule_hits: HashMap<Origin, u64>,
    /// Per (load balancer, listener).
    pub listener_sessions: SessionCounts,
    /// Per (server group, server).
    pub server_sessions: SessionCounts,
    /// Half-open sessions dropped to make room for a new session (a full
    /// session table, or no local port left).
    pub early_drops: u64,
    /// SYN-ACKs with a cookie the SYN proxy sent.
    pub syn_cookies_sent: u64,
    /// ACKs with a valid cookie (sessions the SYN proxy opened).
    pub syn_cookies_valid: u64,
    /// ACKs without a session to a listener with a SYN proxy whose cookie
    /// was wrong or too old.
    pub syn_cookies_invalid: u64,
    /// Per port (index into `cfg.ports`): drops of the port's own checks.
    pub port_drops: Vec<PortDrops>,
}

/// Drops counted per ingress port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortDrops {
    pub spoofed_source: u64,
    pub vlan_mismatch: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            rx: 0,
            forwarded: 0,
            local: 0,
            drops: [0; DropKind::COUNT],
            sessions_created: 0,
            generation: 0,
            rule_hits: HashMap::new(),
            listener_sessions: SessionCounts::default(),
            server_sessions: SessionCounts::default(),
            port_drops: Vec::new(),
            early_drops: 0,
            syn_cookies_sent: 0,
            syn_cookies_valid: 0,
            syn_cookies_invalid: 0,
        }
    }
}

/// Marks a session whose server left its group in a reload: it keeps
/// flowing (draining) but counts toward no server.
const GONE: u32 = u32::MAX;

/// The mutable state of one worker: its sessions, scheduler state and
/// local ports. Nothing in it is shared with another worker.
#[derive(Debug)]
pub struct Worker {
    pub id: u16,
    pub workers: u16,
    pub sessions: SessionTable<Flow>,
    /// The generation `scheds` were built for.
    generation: u64,
    scheds: Vec<Box<dyn Scheduler>>,
    ports: PortAllocator,
    /// Scratch "eligible" flags for scheduling, reused across packets.
    eligible: Vec<bool>,
    /// The parsed frames of a burst and their keys, reused across bursts.
    parsed: Vec<(Parsed, Result<(), ParseError>)>,
    keys: Vec<Option<FlowKey>>,
    pub stats: Stats,
    /// The ingress port of the frame being decided, as a new session's
    /// `Flow::ingress` records it.
    ingress_pin: u8,
    /// The MTU of each egress port (`cfg.ports` order; 0 or missing:
    /// unknown, not checked), as the data plane last read it.
    port_mtu: Vec<u32>,
    /// The smallest known MTU: a packet no longer passes every port
    /// without a look at its own.
    min_mtu: u32,
    /// RSTs for segments without a session.
    resets: RateLimit,
    /// The SYN proxy's state (see `syn_proxy.rs`).
    proxy: syn_proxy::ProxyState,
}

/// A token bucket holding one second's worth of tokens, refilled by the
/// time that passes (`now` is a parameter: no clock here).
#[derive(Debug, Clone, Copy, Default)]
struct RateLimit {
    /// Credit in nanoseconds, at most one second.
    credit: Nanos,
    last: Nanos,
}

impl RateLimit {
    /// Takes a token at `now` for a rate of `per_sec` (at least 1).
    fn take(&mut self, now: Nanos, per_sec: u32) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.credit = self.credit.saturating_add(elapsed).min(NANOS_PER_SEC);
        let cost = NANOS_PER_SEC / Nanos::from(per_sec.max(1));
        if self.credit >= cost {
            self.credit -= cost;
            true
        } else {
            false
        }
    }
}

impl Worker {
    /// A worker of `workers` with room for `max_sessions` IPv4 and
    /// `max_sessions_v6` IPv6 sessions.
    pub fn new(id: u16, workers: u16, max_sessions: usize, max_sessions_v6: usize) -> Worker {
        Worker {
            id,
            workers,
            sessions: SessionTable::with_capacities(max_sessions, max_sessions_v6),
            generation: u64::MAX,
            scheds: Vec::new(),
            ports: PortAllocator::new(id, workers),
            eligible: Vec::new(),
            parsed: Vec::with_capacity(BURST_MAX),
            keys: Vec::with_capacity(BURST_MAX),
            stats: Stats::default(),
            ingress_pin: UNPINNED,
            port_mtu: Vec::new(),
            min_mtu: u32::MAX,
            resets: RateLimit::default(),
            proxy: syn_proxy::ProxyState::new(max_sessions, max_sessions_v6),
        }
    }

    /// The memory of a worker's session tables for `max_sessions` IPv4 and
    /// `max_sessions_v6` IPv6 sessions, in bytes: what a data plane commits
    /// per worker at start-up ([`Worker::prefault`]).
    pub const fn session_table_bytes(max_sessions: usize, max_sessions_v6: usize) -> u64 {
        // Each session also has its SYN proxy sequence offset.
        let proxy = syn_proxy::SEQ_BYTES_PER_SESSION as u64;
        let v4 = max_sessions as u64 * (SessionTable::<Flow>::session_bytes(false) as u64 + proxy);
        let v6 =
            max_sessions_v6 as u64 * (SessionTable::<Flow>::session_bytes(true) as u64 + proxy);
        v4.saturating_add(v6)
    }

    /// Sets the MTU (largest IP packet) of egress port `port` (index into
    /// `cfg.ports`); 0 means unknown. Packets larger than their egress
    /// port's MTU are dropped (`Reason::TooBig`). The data plane calls it
    /// when a link's MTU changes, between bursts.
    pub fn set_port_mtu(&mut self, port: usize, mtu: u32) {
        if self.port_mtu.get(port) == Some(&mtu) {
            return;
        }
        if port >= self.port_mtu.len() {
            self.port_mtu.resize(port + 1, 0);
        }
        self.port_mtu[port] = mtu;
        self.min_mtu = self
            .port_mtu
            .iter()
            .copied()
            .filter(|&m| m != 0)
            .min()
            .unwrap_or(u32::MAX);
    }

    /// Whether a packet may leave through a port: its TTL / hop limit
    /// does not run out here, and it fits the MTU of the port `port`
    /// names. `port` is called only for a packet larger than the smallest
    /// known MTU, so the route lookup it may make stays off the common
    /// path.
    fn egress_check(
        &self,
        frame: &[u8],
        p: &Parsed,
        port: impl FnOnce() -> Option<u32>,
    ) -> Result<(), Reason> {
        if p.ttl <= 1 {
            return Err(Reason::TtlExceeded);
        }
        let len = u32::try_from(p.l3_len).unwrap_or(u32::MAX);
        if len <= self.min_mtu {
            return Ok(());
        }
        let Some(mtu) = port().and_then(|pi| self.port_mtu.get(pi as usize).copied()) else {
            return Ok(());
        };
        if mtu == 0 || len <= mtu {
            return Ok(());
        }
        let df = p.is_ipv6() || frame.get(p.l3_offset + 6).is_some_and(|b| b & 0x40 != 0);
        Err(Reason::TooBig {
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            df,
        })
    }

    /// Maps the session table's memory now (see
    /// [`SessionTable::prefault`]): a data plane's start-up.
    pub fn prefault(&mut self) {
        self.sessions.prefault();
    }

    /// Brings the schedulers and the sessions' configuration indices up to
    /// `snap` (between bursts, after a reload).
    fn adopt(&mut self, snap: &Snapshot) {
        if self.generation == snap.generation {
            return;
        }
        self.scheds = snap
            .cfg
            .server_groups
            .iter()
            .map(|g| {
                let weights: Vec<u8> = g.servers.iter().map(|s| s.weight).collect();
                let names: Vec<&str> = g.servers.iter().map(|s| s.name.as_str()).collect();
                sched::build(g.scheduler, &weights, &names)
            })
            .collect();
        // Every local address's port counts, before its first session.
        for locals in snap.locals_by_family.iter().flatten().flatten() {
            self.ports.prepare(*locals);
        }
        // Listener sessions name their listener and server by index: find
        // them again in the new configuration. A session whose listener is
        // gone ends; one whose server left the group drains.
        self.sessions.retain(|_, s| {
            if s.payload.listener().is_none() {
                return true;
            }
            let orig = *s.orig();
            let Some((lbi, li)) = snap.listener_at(orig.dst, orig.proto, orig.dport) else {
                return false;
            };
            let gi = snap.cfg.load_balancers[lbi].listeners[li].server_group;
            let out = s.reply().reversed();
            let si = snap.cfg.server_groups[gi]
                .servers
                .iter()
                .position(|srv| srv.port == out.dport && srv.addresses.contains(&out.dst))
                .map_or(GONE, idx32);
            s.payload
                .set_listener((idx32(lbi), idx32(li), idx32(gi), si))
        });
        // Their counters belonged to the old configuration; their ports
        // are free again.
        for s in self.sessions.drain_reaped() {
            release_port(&mut self.ports, &s.payload, s.reply());
        }
        self.proxy.engaged.clear();
        self.stats.rule_hits.clear();
        self.stats.listener_sessions.clear();
        self.stats.server_sessions.clear();
        for (_, s) in self.sessions.iter() {
            if let Some((lb, l, g, srv)) = s.payload.listener() {
                self.stats.listener_sessions.at_mut((lb, l)).active += 1;
                if srv != GONE {
                    self.stats.server_sessions.at_mut((g, srv)).active += 1;
                    if let Some(sch) = self.scheds.get_mut(g as usize) {
                        sch.connected(srv as usize);
                    }
                }
            }
        }
        // A reload keeps the ports (lbd refuses to change them without a
        // restart), so their counts carry over.
        self.stats
            .port_drops
            .resize(snap.cfg.ports.len(), PortDrops::default());
        self.generation = snap.generation;
        self.stats.generation = snap.generation;
    }

    /// Reaps a few expired sessions (a bounded amount of work). Call it once
    /// per burst; lookups already ignore expired sessions, this frees them.
    pub fn housekeep(&mut self, now: Nanos, snap: &Snapshot) {
        self.adopt(snap);
        self.reap(now);
    }

    fn reap(&mut self, now: Nanos) {
        self.sessions.expire(now, REAP_BUDGET);
        let (scheds, stats, ports) = (&mut self.scheds, &mut self.stats, &mut self.ports);
        for s in self.sessions.drain_reaped() {
            release_port(ports, &s.payload, s.reply());
            release(scheds, stats, &s.payload);
        }
    }

    fn remove(&mut self, id: crate::conntrack::SessionId) {
        let Some(reply) = self.sessions.key(id, Dir::Reply) else {
            return;
        };
        if let Some(f) = self.sessions.remove(id) {
            release_port(&mut self.ports, &f, &reply);
            release(&mut self.scheds, &mut self.stats, &f);
        }
    }

    /// [`SessionTable::insert_missed`]; when the family's table is full,
    /// the oldest half-open session makes room (early drop) and the insert
    /// is tried once more.
    #[allow(clippy::too_many_arguments)]
    fn insert_or_early_drop(
        &mut self,
        key: FlowKey,
        key_hash: u64,
        reply: FlowKey,
        flow: Flow,
        now: Nanos,
        snap: &Snapshot,
        own_port: bool,
    ) -> Result<crate::conntrack::SessionId, crate::conntrack::InsertError> {
        let timeouts = &snap.timeouts;
        match self
            .sessions
            .insert_missed(key, key_hash, reply, flow, now, timeouts, own_port)
        {
            Err(crate::conntrack::InsertError::Full { .. }) => {
                let old = self
                    .sessions
                    .early_drop(key.is_ipv6(), |_| true)
                    .ok_or(crate::conntrack::InsertError::Full { capacity: 0 })?;
                self.stats.early_drops += 1;
                release_port(&mut self.ports, &old.payload, old.reply());
                release(&mut self.scheds, &mut self.stats, &old.payload);
                self.sessions
                    .insert_missed(key, key_hash, reply, flow, now, timeouts, own_port)
            }
            r => r,
        }
    }

    /// No local port of this worker's share on `local` is free: the oldest
    /// half-open session holding one gives it up (early drop), for a new
    /// session toward `backend`:`backend_port`.
    fn port_by_early_drop(
        &mut self,
        local: IpAddr,
        backend: IpAddr,
        backend_port: u16,
        ip_proto: u8,
    ) -> Option<crate::nat::LocalPort> {
        // A session whose port can pass to the new one: it has the port to
        // itself, or goes to the same server (its reply tuple is the one
        // the new session needs).
        let ports = &self.ports;
        let old = self.sessions.early_drop(local.is_ipv6(), |s| {
            let r = s.reply();
            s.payload.local_port
                && r.dst == local
                && ((r.src == backend && r.sport == backend_port)
                    || ports.users(local, r.dport) == 1)
        })?;
        self.stats.early_drops += 1;
        release(&mut self.scheds, &mut self.stats, &old.payload);
        // The port passes from the old session to the new one.
        let port = old.reply().dport;
        if self.ports.users(local, port) == 1 {
            return Some(crate::nat::LocalPort {
                port,
                shared: false,
            });
        }
        let reply = FlowKey {
            src: backend,
            dst: local,
            proto: ip_proto,
            sport: backend_port,
            dport: port,
        };
        if self.sessions.contains_key(&reply) {
            self.ports.release(local, port);
            return None;
        }
        Some(crate::nat::LocalPort { port, shared: true })
    }

    fn count_new(&mut self, flow: &Flow) {
        self.stats.sessions_created += 1;
        if let Some((lb, l, g, srv)) = flow.listener() {
            let c = self.stats.listener_sessions.at_mut((lb, l));
            c.active += 1;
            c.total += 1;
            let c = self.stats.server_sessions.at_mut((g, srv));
            c.active += 1;
            c.total += 1;
            if let Some(s) = self.scheds.get_mut(g as usize) {
                s.connected(srv as usize);
            }
        }
    }

    #[cold]
    fn count_port_drop(&mut self, port: u32, kind: DropKind) {
        if let Some(c) = self.stats.port_drops.get_mut(port as usize) {
            match kind {
                DropKind::SpoofedSource => c.spoofed_source += 1,
                _ => c.vlan_mismatch += 1,
            }
        }
    }

    /// The source check of a session's packet that does not arrive on the
    /// port its direction last passed the check on (under the current
    /// configuration; that case costs one comparison in `decide`): the
    /// port's full check, which then pins the direction to this port. A
    /// packet injected with a session's 5-tuple from another link thus
    /// meets that link's check.
    #[cold]
    #[inline(never)]
    fn session_source(
        &mut self,
        id: crate::conntrack::SessionId,
        dir: Dir,
        key: &FlowKey,
        port: u32,
        snap: &Snapshot,
    ) -> Result<(), Reason> {
        let Some((_, ingress)) = snap.ingress_of(Some(port)) else {
            return Ok(());
        };
        let Some(flow) = self.sessions.payload_mut(id) else {
            return Ok(());
        };
        let fresh = flow.admitted_in(snap.generation);
        source_admits(snap, port, ingress.check, key)?;
        if !fresh {
            // Routes may have changed with the configuration.
            flow.ingress = UNPINNED_BOTH;
        }
        flow.set_pin(dir, pin(Some(port)));
        Ok(())
    }

    /// Accounts a packet of session `id` in direction `dir`; TCP segments
    /// go through sequence tracking. `Err` for a RST outside the window:
    /// to drop, the session unchanged.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn account(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        proto: u8,
        id: crate::conntrack::SessionId,
        dir: Dir,
        now: Nanos,
        snap: &Snapshot,
    ) -> Result<(), Reason> {
        let seg = (proto == proto::TCP)
            .then(|| packet::parse::l4_bytes(frame, p).and_then(TcpSegment::read))
            .flatten();
        let Some(seg) = seg else {
            let tcp_flags = (proto == proto::TCP).then_some(p.tcp_flags);
            self.sessions
                .update(id, dir, tcp_flags, now, &snap.timeouts);
            return Ok(());
        };
        match self.sessions.update_tcp(id, dir, &seg, now, &snap.timeouts) {
            Some(SegmentCheck::OutOfWindow) if seg.flags & TCP_RST != 0 => {
                Err(Reason::TcpOutOfWindow)
            }
            _ => Ok(()),
        }
    }

    /// Why a TCP segment to a listener without a session is dropped:
    /// [`Reason::NoSessionReset`] (the data plane answers it with a RST)
    /// while `reset_unknown` is on and the rate allows, never for a RST.
    fn no_session(&mut self, p: &Parsed, now: Nanos, snap: &Snapshot) -> Reason {
        let dp = &snap.cfg.dataplane;
        let answer = dp.reset_unknown
            && p.tcp_flags & TCP_RST == 0
            && !p.is_fragment
            && self.resets.take(now, dp.reset_unknown_rate);
        if answer {
            Reason::NoSessionReset
        } else {
            Reason::NoSession
        }
    }

    fn hit(&mut self, d: Decision) {
        *self.stats.rule_hits.entry(d.origin).or_default() += 1;
    }

    /// Runs one frame through the pipeline, rewriting it in place when it is
    /// forwarded.
    pub fn process(
        &mut self,
        frame: &mut [u8],
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        let parsed = packet::parse(frame);
        self.process_parsed(frame, parsed, rx, now, snap, health)
    }

    /// [`Worker::process`] for a frame the caller has already parsed (as
    /// the data plane does to find the frame's worker), so it is parsed once.
    pub fn process_parsed(
        &mut self,
        frame: &mut [u8],
        parsed: Result<Parsed, ParseError>,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        self.adopt(snap);
        let key = parsed.as_ref().ok().and_then(Parsed::flow_key);
        let looked = key.as_ref().map(|k| (k, self.sessions.hash_key(k)));
        let p = parsed.as_ref().map_err(|e| *e);
        self.proxy.at = 0;
        let v = self.finish(frame, p, looked, rx, now, snap, health);
        self.sessions.flush();
        v
    }

    /// Runs a burst of frames through the pipeline: the same verdicts as
    /// [`Worker::process`] frame by frame, faster on big session tables
    /// because the session lookups of the whole burst touch memory first,
    /// so their cache misses overlap. `verdicts[i]` is the verdict of
    /// `frames[i]`; at most `min(frames.len(), verdicts.len(), 64)` frames
    /// are handled, and that count returned.
    pub fn process_burst(
        &mut self,
        frames: &mut [Frame<'_>],
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
        verdicts: &mut [Verdict],
    ) -> usize {
        self.adopt(snap);
        let n = frames.len().min(verdicts.len()).min(BURST_MAX);
        // Each frame is parsed once. The session lookups of the whole burst
        // go in stages (every index bucket, then every session those
        // buckets point to) so that their cache misses are in flight
        // together rather than paid one packet at a time.
        let mut parsed = std::mem::take(&mut self.parsed);
        parsed.clear();
        parsed.resize(n, (Parsed::EMPTY, Ok(())));
        for ((p, r), f) in parsed.iter_mut().zip(frames.iter()) {
            *r = packet::parse_into(f.data, p);
        }
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(parsed.iter().map(|(p, r)| match r {
            Ok(()) => p.flow_key(),
            Err(_) => None,
        }));
        let mut hashes = [0u64; BURST_MAX];
        for (h, key) in hashes.iter_mut().zip(&keys) {
            if let Some(k) = key {
                *h = self.sessions.hash_key(k);
            }
        }
        let mut buckets = [0u64; BURST_MAX];
        for (b, &h) in buckets.iter_mut().zip(&hashes).take(n) {
            *b = self.sessions.warm_bucket(h);
        }
        let mut warm = 0u64;
        for (&b, &h) in buckets[..n].iter().zip(&hashes) {
            warm ^= self.sessions.warm_session(h, b);
        }
        std::hint::black_box(warm);
        for (i, (f, (p, r))) in frames.iter_mut().zip(&parsed).enumerate() {
            let looked = keys[i].as_ref().map(|k| (k, hashes[i]));
            let p = r.map(|()| p);
            self.proxy.at = i;
            verdicts[i] = self.finish(f.data, p, looked, f.rx, now, snap, health);
        }
        self.sessions.flush();
        self.parsed = parsed;
        self.keys = keys;
        n
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        frame: &mut [u8],
        parsed: Result<&Parsed, ParseError>,
        key: Option<(&FlowKey, u64)>,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        self.stats.rx += 1;
        let v = self.decide(frame, parsed, key, rx, now, snap, health);
        match &v {
            Verdict::Forward(_) | Verdict::Send(_) => self.stats.forwarded += 1,
            Verdict::Local(..) => self.stats.local += 1,
            Verdict::Drop(r) => {
                self.stats.drops[r.kind() as usize] += 1;
                match *r {
                    Reason::Policy(d) => self.hit(d),
                    Reason::SpoofedSource { port } | Reason::VlanMismatch { port } => {
                        self.count_port_drop(port, r.kind());
                    }
                    _ => {}
                }
            }
        }
        v
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        frame: &mut [u8],
        parsed: Result<&Parsed, ParseError>,
        key: Option<(&FlowKey, u64)>,
        rx: RxInfo,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        let p = match parsed {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(Reason::Malformed(e)),
        };
        if let Some((port, i)) = snap.ingress_of(rx.port) {
            if !i.admits_tagging(p) {
                return Verdict::Drop(Reason::VlanMismatch { port });
            }
        }
        let (key, hash) = match key {
            Some((k, h)) => (k, h),
            None => {
                return match p.kind {
                    packet::Kind::Arp => Verdict::Local(LocalKind::Arp),
                    _ => Verdict::Drop(Reason::UnsupportedEthertype),
                }
            }
        };
        if p.is_fragment && !p.is_first_fragment {
            // No ports to match: a load balancer without reassembly cannot
            // place it.
            return Verdict::Drop(Reason::Fragment);
        }
        if packet::is_source_routed(frame, p) {
            // Nobody on the client link chooses the path past us.
            return Verdict::Drop(Reason::SourceRoute);
        }
        if let Some(local) = local_kind(p, key, snap) {
            // Neighbour discovery comes from link-local and unspecified
            // sources that route nowhere: the link is its scope.
            let ingress = snap.ingress_of(rx.port);
            if let Some((port, i)) = ingress.filter(|_| local != LocalKind::Neighbor) {
                if let Err(r) = source_admits(snap, port, i.check, key) {
                    return Verdict::Drop(r);
                }
            }
            return Verdict::Local(local);
        }

        let csum = if rx.csum_partial {
            L4Csum::Partial
        } else {
            L4Csum::Full
        };
        if key.proto == proto::TCP && !tcp_valid_flags(p.tcp_flags) {
            return Verdict::Drop(Reason::TcpInvalidFlags);
        }
        let found = self.sessions.lookup_hashed(key, hash, now);
        if let Some((id, dir)) = found {
            return self.established(frame, p, csum, key, id, dir, now, snap, rx.port);
        }
        if let Some((port, i)) = snap.ingress_of(rx.port) {
            if let Err(r) = source_admits(snap, port, i.check, key) {
                return Verdict::Drop(r);
            }
        }
        self.ingress_pin = pin(rx.port);
        if p.is_icmp_error() {
            if let Some(v) = self.related_error(frame, p, *key, now, snap) {
                return v;
            }
        }
        if snap.is_own_address(key.src) {
            // Only we send from our addresses: this is a spoof, or our own
            // frame looped back. (No session ever has such a source.)
            return Verdict::Drop(Reason::OwnSource);
        }

        if snap.is_vip(key.dst) {
            return self.new_listener_session(frame, p, csum, *key, hash, now, snap, health);
        }
        if snap.is_own_address(key.dst) {
            // A reply to a local address without a session, or traffic to a
            // port address: for the data plane itself (health checks).
            return Verdict::Local(LocalKind::ToSelf);
        }
        self.new_routed_session(frame, p, csum, *key, hash, now, snap)
    }

    #[allow(clippy::too_many_arguments)]
    fn established(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: &FlowKey,
        id: crate::conntrack::SessionId,
        dir: Dir,
        now: Nanos,
        snap: &Snapshot,
        rx_port: Option<u32>,
    ) -> Verdict {
        let Some(&flow) = self.sessions.payload(id) else {
            return Verdict::Drop(Reason::NoSession);
        };
        if let Some(port) = rx_port.filter(|&p| !flow.pinned_to(dir, p, snap.generation)) {
            if let Err(r) = self.session_source(id, dir, key, port, snap) {
                return Verdict::Drop(r);
            }
        }
        if !flow.admitted_in(snap.generation) {
            // The rules changed since the session was admitted: its next
            // packet is checked against the new ones.
            let Some(s) = self.sessions.get(id) else {
                return Verdict::Drop(Reason::NoSession);
            };
            let (orig, reply) = (*s.orig(), *s.reply());
            match recheck(snap, &orig, &reply.reversed(), &flow) {
                Ok(()) => {
                    if let Some(f) = self.sessions.payload_mut(id) {
                        f.generation = snap.generation as u32;
                    }
                }
                Err(r) => {
                    self.remove(id);
                    return Verdict::Drop(r);
                }
            }
        }
        let Some(out) = self.sessions.key(id, dir.opposite()).map(|k| k.reversed()) else {
            return Verdict::Drop(Reason::NoSession);
        };
        // Network ACLs are stateless: every packet, both directions.
        if let Err(r) = nacl_check(snap, &flow, key, &out, dir) {
            return Verdict::Drop(r);
        }
        if flow.proxy != ProxyPhase::None {
            // Sequence tracking happens in there, on the backend's side of
            // the translation.
            if let Some(v) = self.proxied_packet(frame, p, csum, id, dir, &flow, now, snap) {
                return v;
            }
        } else if let Err(r) = self.account(frame, p, key.proto, id, dir, now, snap) {
            return Verdict::Drop(r);
        }
        let listener = flow.listener().map(|(lb, l, _, _)| (lb, l));
        let backend = flow
            .listener()
            .and_then(|(_, _, g, s)| (s != GONE).then_some((g, s)));
        self.emit(
            frame,
            p,
            csum,
            key,
            &out,
            Reason::Session { lb: listener },
            backend,
            snap,
        )
    }

    /// An ICMP error about a packet of a session (path-MTU, unreachable,
    /// time exceeded): it belongs to the session, whatever the rules say,
    /// and goes to the session's other end about the packet as that end
    /// sent it. `None` when it quotes no session of ours. An error whose
    /// outer addresses do not fit the quoted packet's path (see
    /// [`error_fits_path`]) is dropped: nobody may speak for a session it
    /// is not on the path of.
    fn related_error(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        key: FlowKey,
        now: Nanos,
        snap: &Snapshot,
    ) -> Option<Verdict> {
        let quoted = packet::parse_icmp_inner(frame, p).ok()?;
        // The quoted packet is one we sent: the reverse of a session key.
        let (id, dir) = self.sessions.lookup(&quoted.reversed(), now)?;
        let s = self.sessions.get(id)?;
        let (orig, reply, listener) = (*s.orig(), *s.reply(), s.payload.listener());
        if !error_fits_path(snap, &key, &quoted) {
            return Some(Verdict::Drop(Reason::IcmpErrorMismatch));
        }
        if listener.is_none() {
            // Routed sessions are not translated: forward it as it is.
            return Some(self.emit(
                frame,
                p,
                L4Csum::Full,
                &key,
                &key,
                Reason::Related,
                None,
                snap,
            ));
        }
        // From the client side (about a reply we sent): to the backend,
        // quoting the reply as the backend sent it. From the backend side:
        // to the client, quoting the client's own packet.
        let inner = match dir {
            Dir::Orig => reply,
            Dir::Reply => orig,
        };
        let (src, dst) = (inner.dst, inner.src);
        let Some(hop) = snap.route(dst) else {
            return Some(Verdict::Drop(Reason::NoRoute));
        };
        if let Err(r) = self.egress_check(frame, p, || Some(hop.port)) {
            return Some(Verdict::Drop(r));
        }
        if !packet::decrement_ttl(frame, p) {
            return Some(Verdict::Drop(Reason::TtlExceeded));
        }
        if crate::nat::icmp::translate_error(frame, p, src, dst, &inner).is_err() {
            return Some(Verdict::Drop(Reason::Rewrite));
        }
        Some(Verdict::Forward(Forward {
            hop,
            reason: Reason::Related,
            backend: None,
            out: FlowKey { src, dst, ..key },
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: &FlowKey,
        out: &FlowKey,
        reason: Reason,
        backend: Option<(u32, u32)>,
        snap: &Snapshot,
    ) -> Verdict {
        let hop = match snap.route(out.dst) {
            Some(h) => h,
            None => return Verdict::Drop(Reason::NoRoute),
        };
        // Before any change, so that a drop leaves the frame as it came
        // (the data plane quotes it in its ICMP error).
        if let Err(r) = self.egress_check(frame, p, || Some(hop.port)) {
            return Verdict::Drop(r);
        }
        if !packet::decrement_ttl(frame, p) {
            return Verdict::Drop(Reason::TtlExceeded);
        }
        if out != key && packet::rewrite(frame, p, out, csum).is_err() {
            return Verdict::Drop(Reason::Rewrite);
        }
        if csum == L4Csum::Partial {
            // The kernel deferred the checksum to a device that will never
            // see this frame: finish it here.
            packet::complete_l4_checksum(frame, p, out.src, out.dst);
        }
        Verdict::Forward(Forward {
            hop,
            reason,
            backend,
            out: *out,
        })
    }

    #[allow(clippy::too_many_arguments)]
    /// A new session to a listener: `key` (filed under `key_hash`) was
    /// just looked up and no session holds it.
    fn new_listener_session(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: FlowKey,
        key_hash: u64,
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Verdict {
        let Some((lbi, li)) = snap.listener_at(key.dst, key.proto, key.dport) else {
            return Verdict::Drop(Reason::NoListener);
        };
        match listener_admits(snap, lbi, li, &key) {
            Ok(Some(d)) => self.hit(d),
            Ok(None) => {}
            Err(r) => return Verdict::Drop(r),
        }
        if key.proto == proto::TCP {
            if let Some(v) =
                self.syn_proxy_first(frame, p, csum, &key, key_hash, (lbi, li), now, snap, health)
            {
                return v;
            }
        }
        // A TCP session starts with a SYN; anything else without a session
        // (a segment of a connection from before a restart) is dropped, and
        // answered with a RST so the client learns the connection is gone.
        if key.proto == proto::TCP && p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
            return Verdict::Drop(self.no_session(p, now, snap));
        }
        // Before a server is picked: a packet that dies here takes no turn.
        if p.ttl <= 1 {
            return Verdict::Drop(Reason::TtlExceeded);
        }
        let (id, flow, orig_out, (gi, si)) = match self.open_listener_session(
            frame,
            p,
            &key,
            key_hash,
            (lbi, li),
            now,
            snap,
            health,
        ) {
            Ok(opened) => opened,
            Err(r) => return Verdict::Drop(r),
        };
        // A new session's first segment fits any window.
        let _ = self.account(frame, p, key.proto, id, Dir::Orig, now, snap);
        self.count_new(&flow);
        let reason = Reason::Listener {
            lb: idx32(lbi),
            listener: idx32(li),
        };
        let v = self.emit(
            frame,
            p,
            csum,
            &key,
            &orig_out,
            reason,
            Some((idx32(gi), idx32(si))),
            snap,
        );
        if v.is_drop() {
            self.remove(id);
        }
        v
    }

    /// A new listener session for `key` (filed under `key_hash`, which no
    /// session holds): picks the server and the local port, checks the
    /// backend's rules and inserts the session (no packet accounted yet).
    /// Returns the session, its flow, the key its packets leave with
    /// toward the server, and the server (group, index).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn open_listener_session(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        key: &FlowKey,
        key_hash: u64,
        (lbi, li): (usize, usize),
        now: Nanos,
        snap: &Snapshot,
        health: &dyn Health,
    ) -> Result<(crate::conntrack::SessionId, Flow, FlowKey, (usize, usize)), Reason> {
        let key = *key;
        let lb = &snap.cfg.load_balancers[lbi];
        let listener = &lb.listeners[li];
        let gi = listener.server_group;
        let group = &snap.cfg.server_groups[gi];
        let family_v6 = key.is_ipv6();
        self.eligible.clear();
        self.eligible
            .extend(group.servers.iter().enumerate().map(|(si, s)| {
                health.is_up(gi, si) && s.addresses.iter().any(|a| a.is_ipv6() == family_v6)
            }));
        let Some(si) = self.scheds.get_mut(gi).and_then(|s| {
            let hash = if s.uses_hash() { flow_hash(&key) } else { 0 };
            s.pick(&self.eligible, hash)
        }) else {
            return Err(Reason::NoHealthyServer {
                lb: idx32(lbi),
                listener: idx32(li),
            });
        };
        let server = &group.servers[si];
        let Some(flow) = Flow::listener_session(
            (idx32(lbi), idx32(li), idx32(gi), idx32(si)),
            snap.generation,
            !listener.transfer_client_ip,
        )
        .map(|f| f.arrived_on(self.ingress_pin)) else {
            // Beyond the 16-bit indices a session holds (lb_config refuses
            // such a configuration): no session can be made for it.
            return Err(Reason::NoListener);
        };
        let backend_addr = server
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv6() == family_v6)
            .expect("eligible servers have an address of the flow's family");
        // What could not leave makes no session.
        self.egress_check(frame, p, || snap.route(backend_addr).map(|h| h.port))?;

        // `own_port`: the session has its local port to itself, which makes
        // its reply key unique, so the key's index entry can wait for the
        // end of the burst.
        let (orig_out, reply, own_port) = if listener.transfer_client_ip {
            let out = FlowKey {
                dst: backend_addr,
                dport: server.port,
                ..key
            };
            (out, out.reversed(), false)
        } else {
            let locals = &snap.locals_by_family[lbi][usize::from(family_v6)];
            if locals.is_empty() {
                return Err(Reason::NatPortsExhausted);
            }
            // Spread over the local addresses by the key's own hash (the
            // session table's, already at hand).
            let local = locals[(key_hash as usize) % locals.len()];
            let sessions = &self.sessions;
            let lport = self.ports.allocate(local, |port| {
                !sessions.contains_key(&FlowKey {
                    src: backend_addr,
                    dst: local,
                    proto: key.proto,
                    sport: server.port,
                    dport: port,
                })
            });
            let lport = match lport {
                Some(p) => Some(p),
                None => self.port_by_early_drop(local, backend_addr, server.port, key.proto),
            };
            let Some(lport) = lport else {
                return Err(Reason::NatPortsExhausted);
            };
            let out = FlowKey {
                src: local,
                dst: backend_addr,
                proto: key.proto,
                sport: lport.port,
                dport: server.port,
            };
            (out, out.reversed(), !lport.shared)
        };
        let admitted = match server.instance {
            Some(inst) => snap.backend_admits(inst, &orig_out, listener.transfer_client_ip),
            None => Ok(()),
        };
        let inserted = admitted.and_then(|()| {
            self.insert_or_early_drop(key, key_hash, reply, flow, now, snap, own_port)
                .map_err(|_| Reason::SessionTableFull)
        });
        let id = match inserted {
            Ok(id) => id,
            Err(r) => {
                release_port(&mut self.ports, &flow, &reply);
                return Err(r);
            }
        };
        Ok((id, flow, orig_out, (gi, si)))
    }

    #[allow(clippy::too_many_arguments)]
    /// A new routed session: `key` (filed under `key_hash`) was just looked
    /// up and no session holds it.
    fn new_routed_session(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        csum: L4Csum,
        key: FlowKey,
        key_hash: u64,
        now: Nanos,
        snap: &Snapshot,
    ) -> Verdict {
        let reason = match routed_admits(snap, p.icmp, &key) {
            Ok(r) => r,
            Err(r) => return Verdict::Drop(r),
        };
        if let Reason::Policy(d) = reason {
            self.hit(d);
        }
        // What could not leave makes no session.
        if let Err(r) = self.egress_check(frame, p, || snap.route(key.dst).map(|h| h.port)) {
            return Verdict::Drop(r);
        }
        // ICMP errors are not sessions of their own.
        let is_icmp_error = matches!(reason, Reason::PathMtu);
        let id = if is_icmp_error {
            None
        } else {
            let flow = Flow::routed(snap.generation).arrived_on(self.ingress_pin);
            match self.insert_or_early_drop(key, key_hash, key.reversed(), flow, now, snap, false) {
                Ok(id) => {
                    // A new session's first segment fits any window.
                    let _ = self.account(frame, p, key.proto, id, Dir::Orig, now, snap);
                    self.count_new(&flow);
                    Some(id)
                }
                Err(_) => return Verdict::Drop(Reason::SessionTableFull),
            }
        };
        let v = self.emit(frame, p, csum, &key, &key, reason, None, snap);
        if v.is_drop() {
            if let Some(id) = id {
                self.remove(id);
            }
        }
        v
    }
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A session went away: its local port is free again.
fn release_port(ports: &mut PortAllocator, flow: &Flow, reply: &FlowKey) {
    if flow.local_port {
        ports.release(reply.dst, reply.dport);
    }
}

/// A session went away: its server and listener count one less.
fn release(scheds: &mut [Box<dyn Scheduler>], stats: &mut Stats, flow: &Flow) {
    if let Some((lb, l, g, srv)) = flow.listener() {
        if let Some(c) = stats.listener_sessions.get_mut((lb, l)) {
            c.active = c.active.saturating_sub(1);
        }
        if srv != GONE {
            if let Some(c) = stats.server_sessions.get_mut((g, srv)) {
                c.active = c.active.saturating_sub(1);
            }
            if let Some(s) = scheds.get_mut(g as usize) {
                s.disconnected(srv as usize);
            }
        }
    }
}

/// Packets for the data plane itself that no session or listener claims.
fn local_kind(p: &Parsed, key: &FlowKey, snap: &Snapshot) -> Option<LocalKind> {
    let (t, _) = p.icmp?;
    match key.proto {
        proto::ICMP if t == 8 && snap.is_own_address(key.dst) => Some(LocalKind::EchoRequest),
        proto::ICMPV6 if t == 128 && snap.is_own_address(key.dst) => Some(LocalKind::EchoRequest),
        // Router/neighbour solicitations and advertisements.
        proto::ICMPV6 if (133..=137).contains(&t) => Some(LocalKind::Neighbor),
        _ => None,
    }
}

/// Whether `key` is link-scoped IPv6 traffic: from a link-local or the
/// unspecified address (multicast listener reports, duplicate address
/// detection) to a link-local or link-scope multicast address. It routes
/// nowhere and is never forwarded, so the link it arrived on is its route.
fn link_scoped(key: &FlowKey) -> bool {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (key.src, key.dst) else {
        return false;
    };
    let (s, d) = (src.segments()[0], dst.segments()[0]);
    let link_local = |first: u16| first & 0xffc0 == 0xfe80;
    let src_ok = link_local(s) || src.is_unspecified();
    let dst_ok = link_local(d) || (d & 0xff00 == 0xff00 && d & 0x000f <= 2);
    src_ok && dst_ok
}

/// Reverse-path validation of `key`'s source arriving on `port`, whose
/// `source_check` is `check`.
fn source_admits(
    snap: &Snapshot,
    port: u32,
    check: SourceCheck,
    key: &FlowKey,
) -> Result<(), Reason> {
    let src = key.src;
    let ok = match check {
        SourceCheck::Off => true,
        SourceCheck::Loose => snap.route(src).is_some(),
        SourceCheck::Strict => snap.route(src).is_some_and(|h| h.port == port),
    } || link_scoped(key);
    if ok {
        Ok(())
    } else {
        Err(Reason::SpoofedSource { port })
    }
}

/// A listener's access-control list, then the load balancer's groups.
/// Returns the groups' decision, if the load balancer has groups.
fn listener_admits(
    snap: &Snapshot,
    lbi: usize,
    li: usize,
    key: &FlowKey,
) -> Result<Option<Decision>, Reason> {
    let lb = &snap.cfg.load_balancers[lbi];
    if let Some(acl) = lb.listeners[li].acl {
        let listed = snap.cfg.prefix_lists[acl.prefix_list]
            .entries
            .iter()
            .any(|n| n.contains(&key.src));
        let pass = match acl.mode {
            AclMode::Whitelist => listed,
            AclMode::Blacklist => !listed,
        };
        if !pass {
            return Err(Reason::ListenerAcl {
                lb: idx32(lbi),
                listener: idx32(li),
                mode: acl.mode,
            });
        }
    }
    match snap.lb_policy(lbi) {
        Some(policy) => {
            let d = policy.evaluate(Direction::Ingress, key);
            if d.allowed() {
                Ok(Some(d))
            } else {
                Err(Reason::Policy(d))
            }
        }
        None => Ok(None),
    }
}

/// Whether an ICMP error from `outer.src` to `outer.dst` may speak about
/// `quoted`, a packet of a session as it left the data plane (its source
/// is the sender, as the session translated it). The error must go to
/// that sender, and come from the quoted destination itself, from the
/// next hop toward it, or from a router on its side: an address that is
/// none of ours, no instance's or server's (those are endpoints, on no
/// one else's path), and routed through the same port as the quoted
/// destination. So a backend cannot speak for another backend's session,
/// nor have an error relayed to a host outside it.
fn error_fits_path(snap: &Snapshot, outer: &FlowKey, quoted: &FlowKey) -> bool {
    if outer.dst != quoted.src {
        return false;
    }
    if outer.src == quoted.dst {
        return true;
    }
    let Some(toward) = snap.route(quoted.dst) else {
        return false;
    };
    if outer.src == toward.next_hop {
        return true;
    }
    if snap.is_own_address(outer.src) || snap.backend_addrs.contains(&outer.src) {
        return false;
    }
    snap.route(outer.src).is_some_and(|h| h.port == toward.port)
}

/// Whether `p` is an ICMP "fragmentation needed" or ICMPv6 "packet too big".
fn is_path_mtu(icmp: Option<(u8, u8)>, key: &FlowKey) -> bool {
    matches!(
        (key.proto, icmp),
        (proto::ICMP, Some((3, 4))) | (proto::ICMPV6, Some((2, _)))
    )
}

/// The checks of a new routed flow: the source instance's egress (special
/// rules, security groups, network ACL), then the destination instance's
/// ingress. Returns the reason to report on success.
fn routed_admits(snap: &Snapshot, icmp: Option<(u8, u8)>, key: &FlowKey) -> Result<Reason, Reason> {
    let src_inst = snap.instance_at(key.src);
    let dst_inst = snap.instance_at(key.dst);
    if src_inst.is_none() && dst_inst.is_none() {
        return Err(Reason::NotForUs);
    }
    let pmtu = is_path_mtu(icmp, key);
    let mut reason = Reason::Session { lb: None };
    if let Some(si) = src_inst {
        if let Some((_, nacl)) = snap.nacl_of(si).filter(|_| !snap.in_subnet_of(si, key.dst)) {
            let d = nacl.evaluate(Direction::Egress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
        }
        reason = if pmtu {
            Reason::PathMtu
        } else if key.dst == snap.cfg.platform.metadata_address {
            Reason::Metadata
        } else if snap.cfg.platform.restrict_smtp && key.proto == proto::TCP && key.dport == 25 {
            return Err(Reason::RestrictSmtp);
        } else {
            let d = snap.instance_policy(si).evaluate(Direction::Egress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
            Reason::Policy(d)
        };
    }
    if let Some(di) = dst_inst {
        if let Some((_, nacl)) = snap.nacl_of(di).filter(|_| !snap.in_subnet_of(di, key.src)) {
            let d = nacl.evaluate(Direction::Ingress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
        }
        reason = if pmtu {
            Reason::PathMtu
        } else {
            let d = snap.instance_policy(di).evaluate(Direction::Ingress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
            Reason::Policy(d)
        };
    }
    Ok(reason)
}

/// Re-admits a session under a new configuration.
fn recheck(snap: &Snapshot, orig: &FlowKey, orig_out: &FlowKey, flow: &Flow) -> Result<(), Reason> {
    match flow.listener() {
        Some(_) => {
            let Some((lbi, li)) = snap.listener_at(orig.dst, orig.proto, orig.dport) else {
                return Err(Reason::NoListener);
            };
            listener_admits(snap, lbi, li, orig)?;
            let listener = &snap.cfg.load_balancers[lbi].listeners[li];
            if let Some(inst) = snap.instance_at(orig_out.dst) {
                snap.backend_admits(inst, orig_out, listener.transfer_client_ip)?;
            }
            Ok(())
        }
        None => {
            // ICMP errors never make sessions, so no ICMP type is needed.
            routed_admits(snap, None, orig).map(|_| ())
        }
    }
}

/// Network ACLs on every packet of a session (they are stateless).
fn nacl_check(
    snap: &Snapshot,
    flow: &Flow,
    key: &FlowKey,
    out: &FlowKey,
    dir: Dir,
) -> Result<(), Reason> {
    let check = |inst: Option<usize>,
                 direction: Direction,
                 k: &FlowKey,
                 other: IpAddr|
     -> Result<(), Reason> {
        let Some(i) = inst else { return Ok(()) };
        if snap.in_subnet_of(i, other) {
            return Ok(());
        }
        if let Some((_, nacl)) = snap.nacl_of(i) {
            let d = nacl.evaluate(direction, k);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
        }
        Ok(())
    };
    match flow.listener() {
        Some((lbi, li, _, _)) => {
            let transfer = snap
                .cfg
                .load_balancers
                .get(lbi as usize)
                .and_then(|lb| lb.listeners.get(li as usize))
                .is_some_and(|l| l.transfer_client_ip);
            if snap.cfg.platform.backend_sg_policy == BackendSgPolicy::Bypass || transfer {
                return Ok(());
            }
            // Only the backend side of the session is inside a subnet of ours.
            match dir {
                Dir::Orig => check(snap.instance_at(out.dst), Direction::Ingress, out, out.src),
                Dir::Reply => check(snap.instance_at(key.src), Direction::Egress, key, key.dst),
            }
        }
        None => {
            check(snap.instance_at(key.src), Direction::Egress, key, key.dst)?;
            check(snap.instance_at(key.dst), Direction::Ingress, key, key.src)
        }
    }
}

/// The fixed-seed hasher of flow ownership: every worker must agree.
fn flow_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x6c62, 0x7370, 0x6f6c, 0x6e21)
}

/// A hash of the flow that is the same for both directions.
pub fn flow_hash(key: &FlowKey) -> u64 {
    let (a, b) = if (key.src, key.sport) <= (key.dst, key.dport) {
        ((key.src, key.sport), (key.dst, key.dport))
    } else {
        ((key.dst, key.dport), (key.src, key.sport))
    };
    flow_hasher().hash_one((a, b, key.proto))
}

/// The worker that owns the session of a packet. The local port names it
/// for FULLNAT replies. Otherwise the outside end of the flow does (the
/// client of a listener, the external peer of an instance), because it is
/// the one end a NAT-mode reply shares with its request; flows with both
/// ends inside or outside use a symmetric hash of both.
pub fn owner(snap: &Snapshot, key: &FlowKey, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    if snap.local_addrs.contains_key(&key.dst) && matches!(key.proto, proto::TCP | proto::UDP) {
        return crate::nat::port_owner(key.dport, workers);
    }
    let src_inside = snap.backend_addrs.contains(&key.src);
    let dst_inside = snap.is_vip(key.dst) || snap.backend_addrs.contains(&key.dst);
    let h = match (src_inside, dst_inside) {
        (false, true) => endpoint_hash(key.src, key.sport, key.proto),
        (true, false) => endpoint_hash(key.dst, key.dport, key.proto),
        _ => flow_hash(key),
    };
    u16::try_from(h % u64::from(workers)).expect("below workers")
}

/// The worker that owns the session a parsed frame belongs to: [`owner`]
/// of its 5-tuple, except for an ICMP error, which belongs with the
/// session of the packet it quotes (so that the worker holding that
/// session checks and translates it). `None` for a frame without a
/// 5-tuple.
pub fn frame_owner(snap: &Snapshot, frame: &[u8], p: &Parsed, workers: u16) -> Option<u16> {
    let key = p.flow_key()?;
    if p.is_icmp_error() {
        if let Ok(quoted) = packet::parse_icmp_inner(frame, p) {
            return Some(owner(snap, &quoted.reversed(), workers));
        }
    }
    Some(owner(snap, &key, workers))
}

fn endpoint_hash(addr: IpAddr, port: u16, proto: u8) -> u64 {
    flow_hasher().hash_one((addr, port, proto))
}

/// Seconds as [`Nanos`].
pub fn secs(s: f64) -> Nanos {
    // Truncation is the intent: traces give non-negative seconds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (s * NANOS_PER_SEC as f64).round() as u64;
    n
}

fn idx32(i: usize) -> u32 {
    u32::try_from(i).expect("configuration indices fit in u32")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::packet::{build_frame, FrameSpec, MacAddr};

    mod icmp_ttl_mtu;

    fn addr(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn flow_packs_ingress_pins_and_window_shifts_in_nibbles() {
        let mut f = Flow::routed(1);
        for port in 0..15u32 {
            let g = f.arrived_on(pin(Some(port)));
            assert!(g.pinned_to(Dir::Orig, port, 1), "{port}");
            assert!(!g.pinned_to(Dir::Reply, port, 1), "{port}");
            assert!(!g.pinned_to(Dir::Orig, port, 2), "another generation");
        }
        // From the 16th port on, never pinned: the full check every time.
        for port in [15u32, 16, 255, 1000] {
            let g = f.arrived_on(pin(Some(port)));
            assert!(!g.pinned_to(Dir::Orig, port, 1), "{port}");
            assert!(!g.pinned_to(Dir::Orig, 15, 1), "{port}");
        }
        f.set_pin(Dir::Reply, pin(Some(3)));
        f.set_pin(Dir::Orig, pin(Some(14)));
        assert!(f.pinned_to(Dir::Reply, 3, 1) && f.pinned_to(Dir::Orig, 14, 1));
        for backend in -8..=7i8 {
            for client in 0..=15i8 {
                f.set_shifts(backend, client);
                assert_eq!(f.shifts(), (backend, client));
            }
        }
        assert!(f.pinned_to(Dir::Reply, 3, 1), "shifts leave the pins alone");
    }

    #[test]
    fn flow_holds_16_bit_indices_in_16_bytes() {
        assert_eq!(std::mem::size_of::<Flow>(), 16);
        let gen = (7u64 << 32) | 9;
        let f = Flow::listener_session((1, 2, 3, 65534), gen, true).expect("fits");
        assert_eq!(f.listener(), Some((1, 2, 3, 65534)));
        assert!(f.local_port && f.admitted_in(gen) && !f.admitted_in(gen + 1));
        let gone = Flow::listener_session((0, 0, 0, GONE), gen, false).expect("fits");
        assert_eq!(gone.listener(), Some((0, 0, 0, GONE)));
        for too_big in [
            (65535, 0, 0, 0),
            (0, 65535, 0, 0),
            (0, 0, 1 << 16, 0),
            (0, 0, 0, 65535),
        ] {
            assert_eq!(
                Flow::listener_session(too_big, gen, true),
                None,
                "{too_big:?}"
            );
        }
        let mut f = f;
        assert!(!f.set_listener((0, 0, 0, 70000)));
        assert_eq!(f.listener(), Some((1, 2, 3, 65534)), "unchanged");
        assert_eq!(Flow::routed(gen).listener(), None);
    }

    /// One load balancer with a TCP listener in front of one instance.
    fn config() -> Config {
        let mut cfg = Config::default();
        cfg.ports.push(Port {
            name: "ext".into(),
            interface: Some("lb-ext".into()),
            dpdk_port: None,
            addresses: vec![
                "198.18.0.1/24".parse().expect("net"),
                "198.19.1.1/24".parse().expect("net"),
            ],
            source_check: SourceCheck::Strict,
            vlan: None,
            max_neighbors: Port::DEFAULT_MAX_NEIGHBORS,
        });
        cfg.security_groups.push(SecurityGroup {
            id: "sg-web".into(),
            kind: GroupKind::Basic {
                internal_access: true,
            },
            rules: vec![],
        });
        cfg.subnets.push(Subnet {
            id: "vsw".into(),
            cidrs: vec!["198.19.1.0/24".parse().expect("net")],
            network_acl: None,
        });
        cfg.instances.push(Instance {
            id: "ecs01".into(),
            subnet: 0,
            addresses: vec![addr("198.19.1.11")],
            security_groups: vec![0],
        });
        cfg.server_groups.push(ServerGroup {
            id: "sgp".into(),
            scheduler: SchedulerKind::Wrr,
            health_check: HealthCheck::default(),
            servers: vec![Server {
                name: "ecs01".into(),
                instance: Some(0),
                addresses: vec![addr("198.19.1.11")],
                port: 80,
                weight: 100,
            }],
        });
        cfg.load_balancers.push(LoadBalancer {
            id: "alb-1".into(),
            vips: vec![addr("198.18.0.10")],
            security_groups: vec![],
            local_addresses: vec![addr("198.19.1.250")],
            listeners: vec![Listener {
                protocol: ListenerProtocol::Tcp,
                port: 80,
                server_group: 0,
                transfer_client_ip: false,
                acl: None,
                syn_proxy: SynProxyMode::Auto,
                syn_proxy_threshold: DEFAULT_SYN_PROXY_THRESHOLD,
            }],
        });
        cfg
    }

    fn syn(payload: &[u8]) -> Vec<u8> {
        tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN, payload)
    }

    #[test]
    fn session_counts_by_index_pairs() {
        let mut c = SessionCounts::default();
        assert_eq!(c.iter().count(), 0);
        c.at_mut((2, 5)).total += 1;
        c.at_mut((2, 5)).active += 1;
        c.at_mut((0, 1)).total += 3;
        assert!(c.get_mut((7, 0)).is_none());
        assert!(c.get_mut((2, 9)).is_none());
        c.get_mut((2, 5)).expect("counted").active -= 1;
        let all: Vec<_> = c.iter().map(|(k, v)| (k, v.active, v.total)).collect();
        assert_eq!(all, [((0, 1), 0, 3), ((2, 5), 0, 1)]);
        // An index beyond 16 bits never grows the table.
        c.at_mut((GONE, 0)).total += 1;
        c.at_mut((0, GONE)).total += 1;
        assert_eq!(c.iter().count(), 2);
        c.clear();
        assert_eq!(c.iter().count(), 0);
    }

    #[test]
    fn staged_rule_sets_refine_with_the_same_verdicts() {
        use crate::model::{Direction, Peer, Rule};
        // 900 deny rules (each its /32 source and its port range), then the
        // seed's allow: the cross products leave a field out, so the
        // instance's ingress set starts staged.
        let mut cfg = config();
        for i in 0..900u16 {
            let src = std::net::Ipv4Addr::new(198, 18, 100 + (i / 250) as u8, (i % 250) as u8);
            cfg.security_groups[0].rules.push(Rule {
                direction: Direction::Ingress,
                action: Action::Deny,
                priority: 1,
                protocol: Some(6),
                ports: vec![PortRange {
                    lo: 1000 + i * 7,
                    hi: 1000 + i * 7 + i % 50,
                }],
                port_list: None,
                peer: Peer::Cidr(IpNet::from(IpAddr::V4(src))),
                local: None,
                source_ports: PortRange::ANY,
                description: String::new(),
                line: 0,
            });
        }
        let snap = Snapshot::compile(cfg, 1);
        let set = &snap.instance_policy(0).ingress;
        assert!(set.needs_refinement());
        let key = |i: u16, dport: u16| FlowKey {
            src: IpAddr::V4(std::net::Ipv4Addr::new(
                198,
                18,
                100 + (i / 250) as u8,
                (i % 250) as u8,
            )),
            dst: addr("198.19.1.11"),
            proto: 6,
            sport: 40000,
            dport,
        };
        let keys: Vec<FlowKey> = (0..900u16)
            .flat_map(|i| [key(i, 1000 + i * 7), key(i, 999 + i * 7), key(i, 80)])
            .collect();
        let before: Vec<_> = keys.iter().map(|k| set.evaluate(k)).collect();
        assert!(snap.refine() >= 1);
        assert!(snap.rule_sets().all(|r| !r.needs_refinement()));
        assert_eq!(snap.refine(), 0);
        let after: Vec<_> = keys.iter().map(|k| set.evaluate(k)).collect();
        assert_eq!(before, after);
        // Rule i matches its own source on its first port only; the rest
        // falls to the basic group's default.
        for (k, d) in keys.iter().zip(&after) {
            let d = d.expect("a decision");
            let first_port = k.dport >= 1000 && (k.dport - 1000) % 7 == 0;
            let by_rule = matches!(d.origin, Origin::SgRule { .. });
            assert_eq!(by_rule, first_port, "{k:?}: {d:?}");
        }
    }

    #[test]
    fn session_table_bytes_is_what_a_worker_commits() {
        let w = Worker::new(0, 1, 1 << 16, 1 << 14);
        let proxy = syn_proxy::SEQ_BYTES_PER_SESSION;
        let want = (1u64 << 16) * (w.sessions.bytes_per_session(false) + proxy) as u64
            + (1u64 << 14) * (w.sessions.bytes_per_session(true) + proxy) as u64;
        assert_eq!(Worker::session_table_bytes(1 << 16, 1 << 14), want);
    }

    #[test]
    fn fullnat_rewrite_keeps_checksums_valid() {
        let snap = Snapshot::compile(config(), 1);
        let mut w = Worker::new(0, 1, 16, 16);
        let mut frame = syn(b"hello");
        let v = w.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp);
        let Verdict::Forward(f) = v else {
            panic!("forwarded expected: {v:?}")
        };
        assert_eq!(f.out.to_string(), "tcp 198.19.1.250:1025 > 198.19.1.11:80");
        let p = packet::parse(&frame).expect("valid after rewrite");
        assert!(packet::verify_l4_checksum(&frame, &p));
        assert_eq!(p.flow_key(), Some(f.out));
    }

    #[test]
    fn local_ports_come_back_when_sessions_end() {
        let snap = Snapshot::compile(config(), 1);
        let local = addr("198.19.1.250");
        let mut w = Worker::new(0, 1, 16, 16);
        let mut frame = syn(b"");
        let v = w.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp);
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        assert_eq!(w.ports.users(local, 1025), 1);
        // Expired after the handshake timeout, reaped by housekeeping.
        for i in 0..4 {
            w.housekeep(secs(60.0) + i, &snap);
        }
        assert!(w.sessions.is_empty());
        assert_eq!(w.ports.users(local, 1025), 0);

        // A session ended by a reload that removes its listener.
        let mut frame = syn(b"");
        w.process(&mut frame, RxInfo::default(), secs(61.0), &snap, &AllUp);
        assert_eq!(w.ports.users(local, 1026), 1);
        let mut cfg = config();
        cfg.load_balancers[0].listeners[0].port = 8080;
        let next = Snapshot::compile(cfg, 2);
        w.housekeep(secs(62.0), &next);
        assert!(w.sessions.is_empty());
        assert_eq!(w.ports.users(local, 1026), 0);
    }

    /// A flood of handshakes that never complete: when the session table
    /// (or the worker's share of local ports) is full, the oldest
    /// half-open session makes room; established sessions stay.
    #[test]
    fn a_syn_flood_early_drops_half_open_sessions_not_established_ones() {
        let snap = Snapshot::compile(config(), 1);
        // 16 sessions; then 15 local ports (4000, 8000, ... 60000).
        for (workers, max_sessions, room) in [(1, 16, 15), (4000, 1024, 14)] {
            let mut w = Worker::new(0, workers, max_sessions, 16);
            let mut frame = syn(b"");
            let Verdict::Forward(f) = w.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp)
            else {
                panic!("first SYN forwarded")
            };
            let lport = f.out.sport;
            let mut syn_ack = tcp_frame_with(
                "198.19.1.11",
                "198.19.1.250",
                80,
                lport,
                TCP_SYN | TCP_ACK,
                b"",
            );
            let v = w.process(&mut syn_ack, RxInfo::default(), 1, &snap, &AllUp);
            assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
            let mut ack = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_ACK, b"");
            let v = w.process(&mut ack, RxInfo::default(), 2, &snap, &AllUp);
            assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
            assert_eq!(w.sessions.half_open(), 0);

            for i in 0..40u16 {
                let src = format!("198.18.7.{}", i + 1);
                let mut f = tcp_frame_with(&src, "198.18.0.10", 1000 + i, 80, TCP_SYN, b"");
                let v = w.process(&mut f, RxInfo::default(), 3 + u64::from(i), &snap, &AllUp);
                assert!(matches!(v, Verdict::Forward(_)), "SYN {i}: {v:?}");
            }
            assert_eq!(w.stats.early_drops, 40 - room, "{workers} workers");
            assert_eq!(w.sessions.half_open(), room as usize);
            // The established session still flows, both ways.
            let mut data = tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, TCP_ACK, b"x");
            let v = w.process(&mut data, RxInfo::default(), 50, &snap, &AllUp);
            assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
            let mut back = tcp_frame_with("198.19.1.11", "198.19.1.250", 80, lport, TCP_ACK, b"y");
            let v = w.process(&mut back, RxInfo::default(), 51, &snap, &AllUp);
            assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
            let active: u64 = w
                .stats
                .listener_sessions
                .iter()
                .map(|(_, c)| c.active)
                .sum();
            assert_eq!(active, 1 + room, "counts follow the dropped sessions");
        }
    }

    /// A TCP segment as a frame: `seg` and its payload, checksums valid.
    fn segment(seg: &synproxy::Segment, payload: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; synproxy::SEGMENT_MAX];
        let n = synproxy::build_segment(seg, &mut buf);
        let mut f = buf[..n].to_vec();
        f.extend_from_slice(payload);
        let p = packet::parse(&f).expect("valid");
        match p.kind {
            packet::Kind::Ipv4 => {
                let len = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&len.to_be_bytes());
                f[24..26].fill(0);
                let c = packet::checksum::checksum(&f[14..34]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
            }
            _ => {
                let len = (f.len() - 54) as u16;
                f[18..20].copy_from_slice(&len.to_be_bytes());
            }
        }
        fill_tcp_checksum(&mut f);
        f
    }

    /// Computes the TCP checksum of a frame from scratch.
    fn fill_tcp_checksum(f: &mut [u8]) {
        let p = packet::parse(f).expect("valid");
        let at = p.l4_offset;
        f[at + 16..at + 18].fill(0);
        let l4 = f.len() - at;
        let ph = match (p.src, p.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                packet::checksum::pseudo_header_v4(s, d, 6, l4 as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                packet::checksum::pseudo_header_v6(s, d, 6, l4 as u32)
            }
            _ => unreachable!("one family"),
        };
        let c = !packet::checksum::sum_with(ph, &f[at..]);
        f[at + 16..at + 18].copy_from_slice(&c.to_be_bytes());
    }

    fn seg(
        src: &str,
        dst: &str,
        ports: (u16, u16),
        seq: u32,
        ack: u32,
        flags: u8,
    ) -> synproxy::Segment {
        synproxy::Segment {
            src: addr(src),
            dst: addr(dst),
            sport: ports.0,
            dport: ports.1,
            seq,
            ack,
            flags,
            window: 1000,
            syn_options: None,
        }
    }

    /// The TCP header of a frame: (seq, ack, flags, window, options), and
    /// whether its checksum holds.
    fn tcp_of(frame: &[u8]) -> ((u32, u32, u8, u16, Vec<u8>), bool) {
        let p = packet::parse(frame).expect("valid");
        let t = packet::TcpPacket::new_checked(&frame[p.l4_offset..p.l3_end()]).expect("tcp");
        (
            (
                t.seq_number(),
                t.ack_number(),
                t.flags().0,
                t.window_len(),
                t.options().to_vec(),
            ),
            packet::verify_l4_checksum(frame, &p),
        )
    }

    fn proxy_config(mode: SynProxyMode, threshold: u32) -> Config {
        let mut cfg = config();
        cfg.load_balancers[0].vips.push(addr("2001:db8:18::10"));
        cfg.load_balancers[0]
            .local_addresses
            .push(addr("2001:db8:19:1::250"));
        cfg.ports[0]
            .addresses
            .push("2001:db8:18::1/64".parse().expect("net"));
        cfg.ports[0]
            .addresses
            .push("2001:db8:19:1::1/64".parse().expect("net"));
        cfg.subnets[0]
            .cidrs
            .push("2001:db8:19:1::/64".parse().expect("net"));
        cfg.instances[0].addresses.push(addr("2001:db8:19:1::11"));
        cfg.server_groups[0].servers[0]
            .addresses
            .push(addr("2001:db8:19:1::11"));
        let l = &mut cfg.load_balancers[0].listeners[0];
        l.syn_proxy = mode;
        l.syn_proxy_threshold = threshold;
        cfg
    }

    /// The whole life of a proxied connection, IPv4 and IPv6: the SYN is
    /// answered with a cookie and opens nothing; the ACK carrying the cookie
    /// opens the session with the proxy's SYN to the backend; the backend's
    /// SYN-ACK is answered with an ACK; then sequence numbers (and SACK
    /// blocks, and windows) are translated both ways with valid checksums.
    #[test]
    fn the_syn_proxy_answers_with_cookies_and_translates_sequence_numbers() {
        let snap = Snapshot::compile(proxy_config(SynProxyMode::On, 1), 1);
        for (client, vip, local, backend) in [
            ("198.18.0.2", "198.18.0.10", "198.19.1.250", "198.19.1.11"),
            (
                "2001:db8:18::2",
                "2001:db8:18::10",
                "2001:db8:19:1::250",
                "2001:db8:19:1::11",
            ),
        ] {
            let mut w = Worker::new(0, 1, 64, 64);
            w.set_cookie_secret(synproxy::CookieSecret::new([9; 16]));
            let now = secs(100.0);
            let isn = 0xffff_fff0u32; // wraps during the connection
            let mut s = seg(client, vip, (40000, 80), isn, 0, TCP_SYN);
            s.syn_options = Some((1460, Some(8), true));
            let mut syn = segment(&s, b"");
            let v = w.process(&mut syn, RxInfo::default(), now, &snap, &AllUp);
            let Verdict::Send(f) = v else {
                panic!("SYN-ACK expected: {v:?}")
            };
            assert_eq!(f.reason, Reason::SynCookie { lb: 0, listener: 0 });
            assert_eq!(
                f.out.to_string(),
                format!("tcp {} > {}", fmt_ep(vip, 80), fmt_ep(client, 40000))
            );
            assert!(w.sessions.is_empty(), "a SYN opens nothing");
            let ((cookie, ack, flags, _, opts), ok) = tcp_of(w.built(0));
            assert!(ok, "SYN-ACK checksum");
            assert_eq!((ack, flags), (isn.wrapping_add(1), TCP_SYN | TCP_ACK));
            let o = synproxy::parse_syn_options(&opts);
            assert_eq!((o.wscale, o.sack), (Some(synproxy::PROXY_WSCALE), true));

            // A wrong cookie opens nothing.
            let mut bad = segment(
                &seg(
                    client,
                    vip,
                    (40000, 80),
                    isn.wrapping_add(1),
                    cookie.wrapping_add(1 << 24),
                    TCP_ACK,
                ),
                b"",
            );
            let v = w.process(&mut bad, RxInfo::default(), now, &snap, &AllUp);
            // Answered with a RST, as a listener without the connection does.
            assert!(matches!(v, Verdict::Drop(Reason::NoSessionReset)), "{v:?}");
            assert_eq!(w.stats.syn_cookies_invalid, 1);

            // The right one, with data (dropped: the client sends it again).
            let c2b =
                |seq: u32, ack: u32, flags: u8| seg(client, vip, (40000, 80), seq, ack, flags);
            let mut ack3 = segment(
                &c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK),
                b"GET",
            );
            let v = w.process(&mut ack3, RxInfo::default(), now + 1, &snap, &AllUp);
            let Verdict::Send(f) = v else {
                panic!("SYN to the backend expected: {v:?}")
            };
            assert_eq!(f.out.dst, addr(backend));
            assert_eq!(f.out.src, addr(local));
            let lport = f.out.sport;
            let ((seq, _, flags, _, opts), ok) = tcp_of(w.built(0));
            assert!(ok);
            assert_eq!((seq, flags), (isn, TCP_SYN));
            let o = synproxy::parse_syn_options(&opts);
            let mss = if addr(client).is_ipv6() { 1440 } else { 1460 };
            assert_eq!((o.mss, o.wscale, o.sack), (mss, Some(8), true));
            assert_eq!(w.sessions.len(), 1);
            assert_eq!(w.stats.syn_cookies_valid, 1);

            // Before the backend answers, the client's packets wait.
            let mut early = segment(
                &c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK | 0x08),
                b"GET",
            );
            let v = w.process(&mut early, RxInfo::default(), now + 2, &snap, &AllUp);
            assert!(matches!(v, Verdict::Drop(Reason::SynProxyPending)), "{v:?}");

            // The backend's SYN-ACK (window scale 5) gets the ACK.
            let b_isn = 0x1234_5678u32;
            let b2l =
                |seq: u32, ack: u32, flags: u8| seg(backend, local, (80, lport), seq, ack, flags);
            let mut sa = b2l(b_isn, isn.wrapping_add(1), TCP_SYN | TCP_ACK);
            sa.syn_options = Some((1460, Some(5), true));
            let mut syn_ack = segment(&sa, b"");
            let v = w.process(&mut syn_ack, RxInfo::default(), now + 3, &snap, &AllUp);
            let Verdict::Send(f) = v else {
                panic!("ACK to the backend expected: {v:?}")
            };
            assert_eq!(
                (f.out.dst, f.out.dport, f.out.sport),
                (addr(backend), 80, lport)
            );
            let ((seq, ack, flags, _, _), ok) = tcp_of(w.built(0));
            assert!(ok);
            assert_eq!(
                (seq, ack, flags),
                (isn.wrapping_add(1), b_isn.wrapping_add(1), TCP_ACK | 0x08)
            );
            assert!(w.built(0).ends_with(b"GET"));
            assert_eq!(w.sessions.half_open(), 0, "established");
            // Without a held segment: a bare ACK.
            let mut w2 = Worker::new(0, 1, 64, 64);
            w2.set_cookie_secret(synproxy::CookieSecret::new([9; 16]));
            let mut ack3 = segment(
                &c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK),
                b"",
            );
            let v = w2.process(&mut ack3, RxInfo::default(), now + 1, &snap, &AllUp);
            assert!(matches!(v, Verdict::Send(_)), "{v:?}");
            let lport2 = packet::parse(w2.built(0)).expect("valid").sport;
            let mut sa2 = b2l(b_isn, isn.wrapping_add(1), TCP_SYN | TCP_ACK);
            sa2.dport = lport2;
            let mut syn_ack = segment(&sa2, b"");
            let v = w2.process(&mut syn_ack, RxInfo::default(), now + 3, &snap, &AllUp);
            assert!(matches!(v, Verdict::Send(_)), "{v:?}");
            let ((seq, ack, flags, _, _), ok) = tcp_of(w2.built(0));
            assert!(ok);
            assert_eq!(
                (seq, ack, flags),
                (isn.wrapping_add(1), b_isn.wrapping_add(1), TCP_ACK)
            );

            // Client → backend: the acknowledgment and SACK blocks move
            // into the backend's space; the window goes through (both
            // sides scale).
            let offset = b_isn.wrapping_sub(cookie);
            let mut d = c2b(isn.wrapping_add(1), cookie.wrapping_add(1), TCP_ACK);
            d.window = 300;
            let mut data = segment(&d, b"GET / HTTP/1.1\r\n\r\n");
            let p = packet::parse(&data).expect("valid");
            // Turn the payload's first 12 bytes into options: NOP, NOP,
            // SACK with one block (cookie+100 .. cookie+200).
            let at = p.l4_offset;
            let mut sack = vec![1u8, 1, 5, 10];
            sack.extend_from_slice(&cookie.wrapping_add(100).to_be_bytes());
            sack.extend_from_slice(&cookie.wrapping_add(200).to_be_bytes());
            data[at + 20..at + 32].copy_from_slice(&sack);
            data[at + 12] = (32 / 4) << 4;
            fill_tcp_checksum(&mut data);
            let v = w.process(&mut data, RxInfo::default(), now + 4, &snap, &AllUp);
            let Verdict::Forward(f) = v else {
                panic!("forward expected: {v:?}")
            };
            assert_eq!(f.out.dst, addr(backend));
            let ((seq, ack, _, win, opts), ok) = tcp_of(&data);
            assert!(ok, "checksum after translation");
            assert_eq!(
                (seq, ack, win),
                (isn.wrapping_add(1), b_isn.wrapping_add(1), 300)
            );
            let rd =
                |i: usize| u32::from_be_bytes([opts[i], opts[i + 1], opts[i + 2], opts[i + 3]]);
            assert_eq!(
                (rd(4), rd(8)),
                (b_isn.wrapping_add(100), b_isn.wrapping_add(200))
            );
            let _ = offset;

            // Backend → client: the sequence number moves into the
            // cookie's space, the window from scale 5 to the proxy's 7.
            // (The client's segment carried 6 bytes after its options.)
            let mut r = b2l(b_isn.wrapping_add(1), isn.wrapping_add(7), TCP_ACK);
            r.window = 4000;
            let mut reply = segment(&r, b"HTTP/1.1 200 OK\r\n\r\n");
            let v = w.process(&mut reply, RxInfo::default(), now + 5, &snap, &AllUp);
            let Verdict::Forward(f) = v else {
                panic!("forward expected: {v:?}")
            };
            assert_eq!((f.out.src, f.out.dst), (addr(vip), addr(client)));
            let ((seq, ack, _, win, _), ok) = tcp_of(&reply);
            assert!(ok, "checksum after translation");
            assert_eq!(
                (seq, ack, win),
                (cookie.wrapping_add(1), isn.wrapping_add(7), 1000)
            );

            // Sequence tracking follows the backend's side of the
            // translation: blind resets from either side are dropped, and
            // the session's own FINs close it.
            use crate::conntrack::TcpState;
            const TCP_FIN: u8 = 0x01;
            let state = |w: &Worker| w.sessions.iter().next().and_then(|(_, s)| s.tcp_state());
            let blind_c = c2b(isn.wrapping_add(0x4000_0000), 0, TCP_RST);
            let blind_b = b2l(b_isn.wrapping_add(0x4000_0000), 0, TCP_RST);
            for blind in [blind_c, blind_b] {
                let mut rst = segment(&blind, b"");
                let v = w.process(&mut rst, RxInfo::default(), now + 6, &snap, &AllUp);
                assert!(matches!(v, Verdict::Drop(Reason::TcpOutOfWindow)), "{v:?}");
            }
            assert_eq!(state(&w), Some(TcpState::Established));
            let mut fin = segment(
                &c2b(
                    isn.wrapping_add(7),
                    cookie.wrapping_add(20),
                    TCP_FIN | TCP_ACK,
                ),
                b"",
            );
            let v = w.process(&mut fin, RxInfo::default(), now + 7, &snap, &AllUp);
            assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
            assert_eq!(state(&w), Some(TcpState::FinWait));
            let mut fin = segment(
                &b2l(
                    b_isn.wrapping_add(20),
                    isn.wrapping_add(8),
                    TCP_FIN | TCP_ACK,
                ),
                b"",
            );
            let v = w.process(&mut fin, RxInfo::default(), now + 8, &snap, &AllUp);
            assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
            assert_eq!(state(&w), Some(TcpState::Closed));
        }
    }

    fn fmt_ep(a: &str, port: u16) -> String {
        match addr(a) {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        }
    }

    /// Under "auto" the proxy engages at the threshold of half-open
    /// sessions and disengages below half of it; "off" never answers
    /// with a cookie and takes no ACK for one.
    #[test]
    fn an_auto_syn_proxy_engages_above_its_threshold() {
        let snap = Snapshot::compile(proxy_config(SynProxyMode::Auto, 4), 1);
        let mut w = Worker::new(0, 1, 64, 64);
        let syn_from = |i: u16| {
            let src = format!("198.18.0.{}", i + 100);
            segment(
                &seg(&src, "198.18.0.10", (1000 + i, 80), 7, 0, TCP_SYN),
                b"",
            )
        };
        let mut kinds = Vec::new();
        for i in 0..6u16 {
            let v = w.process(
                &mut syn_from(i),
                RxInfo::default(),
                secs(1.0),
                &snap,
                &AllUp,
            );
            assert!(!v.is_drop(), "{v:?}");
            kinds.push(matches!(v, Verdict::Send(_)));
        }
        // Four sessions, then cookies.
        assert_eq!(kinds, [false, false, false, false, true, true]);
        assert_eq!(w.sessions.half_open(), 4);
        // The handshake timeout is 5 s: at 6.5 s all four are gone, the
        // proxy disengages and the next SYN opens a session again.
        w.housekeep(secs(6.5), &snap);
        let v = w.process(
            &mut syn_from(9),
            RxInfo::default(),
            secs(6.5),
            &snap,
            &AllUp,
        );
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");

        // Off: no cookie, and an ACK with one finds no session.
        let snap_off = Snapshot::compile(proxy_config(SynProxyMode::Off, 4), 2);
        let mut w = Worker::new(0, 1, 8, 8);
        for i in 0..8u16 {
            let v = w.process(
                &mut syn_from(i),
                RxInfo::default(),
                secs(1.0),
                &snap_off,
                &AllUp,
            );
            assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        }
        assert_eq!(w.stats.syn_cookies_sent, 0);
        let mut on = Worker::new(0, 1, 8, 8);
        let snap_on = Snapshot::compile(proxy_config(SynProxyMode::On, 4), 3);
        on.process(
            &mut syn_from(20),
            RxInfo::default(),
            secs(1.0),
            &snap_on,
            &AllUp,
        );
        let ((cookie, _, _, _, _), _) = tcp_of(on.built(0));
        let mut ack = segment(
            &seg(
                "198.18.0.120",
                "198.18.0.10",
                (1020, 80),
                8,
                cookie.wrapping_add(1),
                TCP_ACK,
            ),
            b"",
        );
        let mut ack2 = ack.clone();
        let v = w.process(&mut ack, RxInfo::default(), secs(1.0), &snap_off, &AllUp);
        assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
        let v = on.process(&mut ack2, RxInfo::default(), secs(1.0), &snap_on, &AllUp);
        assert!(matches!(v, Verdict::Send(_)), "{v:?}");
    }

    /// A burst gives the verdicts, the rewritten frames and the counters
    /// that the same frames give one by one: new connections, their later
    /// packets, replies from the backend, a port without listener,
    /// malformed frames, pings.
    #[test]
    fn a_burst_decides_as_frame_by_frame() {
        let snap = Snapshot::compile(config(), 1);
        let mut one = Worker::new(0, 1, 4096, 4096);
        let mut burst = Worker::new(0, 1, 4096, 4096);
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let mut now = secs(1.0);
        for _ in 0..150 {
            let n = 1 + next(64) as usize;
            let frames: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let sport = 1000 + next(300) as u16;
                    match next(8) {
                        0 | 1 => {
                            tcp_frame_with("198.18.0.2", "198.18.0.10", sport, 80, TCP_SYN, b"")
                        }
                        2 | 3 => {
                            tcp_frame_with("198.18.0.2", "198.18.0.10", sport, 80, TCP_ACK, b"x")
                        }
                        4 if !replies.is_empty() => {
                            replies[next(replies.len() as u64) as usize].clone()
                        }
                        5 => tcp_frame_with("198.18.0.2", "198.18.0.10", sport, 81, TCP_SYN, b""),
                        6 => syn(b"")[..20 + next(30) as usize].to_vec(),
                        _ => build_frame(&FrameSpec {
                            src: addr("198.18.0.2"),
                            dst: addr("198.18.0.10"),
                            proto: proto::ICMP,
                            sport,
                            ..FrameSpec::default()
                        }),
                    }
                })
                .collect();
            let mut a = frames.clone();
            let va: Vec<String> = a
                .iter_mut()
                .map(|f| {
                    format!(
                        "{:?}",
                        one.process(f, RxInfo::default(), now, &snap, &AllUp)
                    )
                })
                .collect();
            let mut b = frames.clone();
            let mut batch: Vec<Frame<'_>> = b
                .iter_mut()
                .map(|f| Frame {
                    data: &mut f[..],
                    rx: RxInfo::default(),
                })
                .collect();
            let mut verdicts = [Verdict::Drop(Reason::NoSession); BURST_MAX];
            let done = burst.process_burst(&mut batch, now, &snap, &AllUp, &mut verdicts);
            assert_eq!(done, n);
            for (i, v) in verdicts[..n].iter().enumerate() {
                if let Verdict::Forward(f) = v {
                    if f.backend.is_some() && frames[i][47] & TCP_SYN != 0 {
                        let o = f.out;
                        replies.push(tcp_frame_with(
                            &o.dst.to_string(),
                            &o.src.to_string(),
                            o.dport,
                            o.sport,
                            TCP_SYN | TCP_ACK,
                            b"",
                        ));
                    }
                }
            }
            let vb: Vec<String> = verdicts[..n].iter().map(|v| format!("{v:?}")).collect();
            assert_eq!(va, vb);
            assert_eq!(a, b);
            now += secs(0.5);
            one.housekeep(now, &snap);
            burst.housekeep(now, &snap);
        }
        assert!(one.stats.sessions_created > 100, "{:?}", one.stats);
        assert!(one.stats.drops.iter().sum::<u64>() > 100);
        assert!(replies.len() > 100);
        let counters = |w: &Worker| {
            let t = &w.stats;
            let mut l: Vec<_> = t
                .listener_sessions
                .iter()
                .map(|(k, v)| (k, v.active, v.total))
                .collect();
            let mut s: Vec<_> = t
                .server_sessions
                .iter()
                .map(|(k, v)| (k, v.active, v.total))
                .collect();
            l.sort_unstable();
            s.sort_unstable();
            let c = (t.rx, t.forwarded, t.local, t.drops, t.sessions_created);
            (c, l, s, w.sessions.len())
        };
        assert_eq!(counters(&one), counters(&burst));
    }

    #[test]
    fn partial_checksums_are_completed() {
        let snap = Snapshot::compile(config(), 1);
        let mut w = Worker::new(0, 1, 16, 16);
        let mut frame = syn(b"hello");
        // What veth hands over with tx offload on: the checksum field holds
        // only the folded pseudo-header sum.
        let p = packet::parse(&frame).expect("valid");
        let pseudo = crate::packet::checksum::pseudo_header_v4(
            "198.18.0.2".parse().expect("v4"),
            "198.18.0.10".parse().expect("v4"),
            proto::TCP,
            u16::try_from(p.l4_len).expect("small"),
        );
        let at = p.l4_offset + 16;
        frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        assert!(!packet::verify_l4_checksum(&frame, &p));
        let v = w.process(
            &mut frame,
            RxInfo {
                csum_partial: true,
                ..RxInfo::default()
            },
            0,
            &snap,
            &AllUp,
        );
        assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
        let p = packet::parse(&frame).expect("valid");
        assert!(packet::verify_l4_checksum(&frame, &p), "checksum completed");
    }

    #[test]
    fn malformed_frames_are_dropped_and_counted() {
        let snap = Snapshot::compile(config(), 1);
        let mut w = Worker::new(0, 1, 16, 16);
        let good = syn(b"");
        for cut in [0, 5, 13, 20, 33, 40] {
            let mut f = good[..cut].to_vec();
            let v = w.process(&mut f, RxInfo::default(), 0, &snap, &AllUp);
            assert!(
                matches!(v, Verdict::Drop(Reason::Malformed(_))),
                "cut at {cut}: {v:?}"
            );
        }
        assert_eq!(w.stats.drops[DropKind::Malformed as usize], 6);
        assert_eq!(w.stats.rx, 6);
    }

    #[test]
    fn owner_is_the_same_for_both_directions_of_a_nat_flow() {
        let mut cfg = config();
        cfg.load_balancers[0].listeners[0].transfer_client_ip = true;
        let snap = Snapshot::compile(cfg, 1);
        for sport in 1000..1200u16 {
            let req = FlowKey {
                src: addr("198.18.0.2"),
                dst: addr("198.18.0.10"),
                proto: proto::TCP,
                sport,
                dport: 80,
            };
            let reply = FlowKey {
                src: addr("198.19.1.11"),
                dst: addr("198.18.0.2"),
                proto: proto::TCP,
                sport: 80,
                dport: sport,
            };
            assert_eq!(owner(&snap, &req, 4), owner(&snap, &reply, 4));
            // A FULLNAT reply names its worker by port.
            let fullnat = FlowKey {
                src: addr("198.19.1.11"),
                dst: addr("198.19.1.250"),
                proto: proto::TCP,
                sport: 80,
                dport: sport,
            };
            assert_eq!(owner(&snap, &fullnat, 4), sport % 4);
        }
    }

    fn tcp_frame(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        tcp_frame_with(src, dst, sport, dport, flags, &[0x55; 1200])
    }

    fn tcp_frame_with(
        src: &str,
        dst: &str,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        build_frame(&FrameSpec {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src: addr(src),
            dst: addr(dst),
            proto: proto::TCP,
            sport,
            dport,
            tcp_flags: flags,
            ttl: 64,
            payload: payload.to_vec(),
            ..FrameSpec::default()
        })
    }

    /// An ICMP error from `router` about `original` (sent to its source).
    fn error_about(original: &[u8], router: &str, icmp: (u8, u8), mtu: u32) -> Vec<u8> {
        let p = packet::parse(original).expect("valid");
        packet::build_icmp_error(
            original,
            &p,
            addr(router),
            icmp.0,
            icmp.1,
            mtu,
            MacAddr([2, 0, 0, 0, 0, 9]),
            MacAddr([2, 0, 0, 0, 0, 2]),
        )
        .expect("error built")
    }

    fn ipv4_header_ok(frame: &[u8], at: usize) -> bool {
        let ihl = usize::from(frame[at] & 0x0f) * 4;
        crate::packet::checksum::sum(&frame[at..at + ihl]) == 0xffff
    }

    #[test]
    fn icmp_errors_about_a_fullnat_session_reach_the_other_end() {
        let mut cfg = config();
        cfg.ports[0]
            .addresses
            .push("2001:db8:18::1/64".parse().expect("net"));
        cfg.ports[0]
            .addresses
            .push("2001:db8:19:1::1/64".parse().expect("net"));
        let snap = Snapshot::compile(cfg, 1);
        let mut w = Worker::new(0, 1, 16, 16);
        let mut f = syn(b"");
        assert!(matches!(
            w.process(&mut f, RxInfo::default(), 0, &snap, &AllUp),
            Verdict::Forward(_)
        ));

        // A router near the client: "fragmentation needed" about the reply
        // the load balancer sent (VIP:80 > client:40000) goes to the backend
        // about the reply as the backend sent it.
        let reply_out = tcp_frame("198.18.0.10", "198.18.0.2", 80, 40000, 0x12);
        let mut err = error_about(&reply_out, "198.18.0.254", (3, 4), 1400);
        let v = w.process(&mut err, RxInfo::default(), 1, &snap, &AllUp);
        let Verdict::Forward(fw) = v else {
            panic!("forwarded expected: {v:?}")
        };
        assert_eq!(fw.reason, Reason::Related);
        assert_eq!(
            (fw.out.src, fw.out.dst),
            (addr("198.19.1.250"), addr("198.19.1.11"))
        );
        let p = packet::parse(&err).expect("valid");
        assert_eq!((p.src, p.dst), (addr("198.19.1.250"), addr("198.19.1.11")));
        assert!(packet::verify_l4_checksum(&err, &p), "ICMP checksum");
        assert!(ipv4_header_ok(&err, p.l3_offset), "outer header checksum");
        assert!(
            ipv4_header_ok(&err, p.l4_offset + 8),
            "quoted header checksum"
        );
        let q = packet::parse_icmp_inner(&err, &p).expect("quoted packet");
        assert_eq!(q.to_string(), "tcp 198.19.1.11:80 > 198.19.1.250:1025");

        // The backend's side: an error about what we sent it (local:1025 >
        // backend:80) goes to the client about the client's own packet.
        let to_backend = tcp_frame("198.19.1.250", "198.19.1.11", 1025, 80, 0x10);
        let mut err = error_about(&to_backend, "198.19.1.254", (3, 4), 1300);
        let v = w.process(&mut err, RxInfo::default(), 2, &snap, &AllUp);
        let Verdict::Forward(fw) = v else {
            panic!("forwarded expected: {v:?}")
        };
        assert_eq!(
            (fw.out.src, fw.out.dst),
            (addr("198.18.0.10"), addr("198.18.0.2"))
        );
        let p = packet::parse(&err).expect("valid");
        assert!(packet::verify_l4_checksum(&err, &p));
        let q = packet::parse_icmp_inner(&err, &p).expect("quoted packet");
        assert_eq!(q.to_string(), "tcp 198.18.0.2:40000 > 198.18.0.10:80");

        // An error quoting no session of ours is not forwarded.
        let stranger = tcp_frame("198.18.0.10", "198.18.0.7", 80, 41000, 0x12);
        let mut err = error_about(&stranger, "198.18.0.254", (3, 4), 1400);
        assert!(w
            .process(&mut err, RxInfo::default(), 3, &snap, &AllUp)
            .is_drop());

        // IPv6: "packet too big" from a router near an IPv6 client.
        let mut cfg6 = config();
        cfg6.ports[0].addresses = vec![
            "2001:db8:18::1/64".parse().expect("net"),
            "2001:db8:19:1::1/64".parse().expect("net"),
        ];
        cfg6.instances[0].addresses = vec![addr("2001:db8:19:1::11")];
        cfg6.server_groups[0].servers[0].addresses = vec![addr("2001:db8:19:1::11")];
        cfg6.load_balancers[0].vips = vec![addr("2001:db8:18::10")];
        cfg6.load_balancers[0].local_addresses = vec![addr("2001:db8:19:1::250")];
        cfg6.subnets[0].cidrs = vec!["2001:db8:19:1::/64".parse().expect("net")];
        let snap6 = Snapshot::compile(cfg6, 1);
        let mut w6 = Worker::new(0, 1, 16, 16);
        let mut s6 = tcp_frame("2001:db8:18::2", "2001:db8:18::10", 40000, 80, 0x02);
        assert!(matches!(
            w6.process(&mut s6, RxInfo::default(), 0, &snap6, &AllUp),
            Verdict::Forward(_)
        ));
        let reply6 = tcp_frame("2001:db8:18::10", "2001:db8:18::2", 80, 40000, 0x12);
        let mut err6 = error_about(&reply6, "2001:db8:18::fe", (2, 0), 1280);
        let v = w6.process(&mut err6, RxInfo::default(), 1, &snap6, &AllUp);
        let Verdict::Forward(fw) = v else {
            panic!("forwarded expected: {v:?}")
        };
        assert_eq!(fw.out.dst, addr("2001:db8:19:1::11"));
        let p = packet::parse(&err6).expect("valid");
        assert!(
            packet::verify_l4_checksum(&err6, &p),
            "ICMPv6 checksum with the new pseudo-header"
        );
        let q = packet::parse_icmp_inner(&err6, &p).expect("quoted packet");
        assert_eq!(
            q.to_string(),
            "tcp [2001:db8:19:1::11]:80 > [2001:db8:19:1::250]:1025"
        );
    }

    /// [`config`] with the backend subnet on a second port ("int") and
    /// both ports under `check`; port "ext" has VLAN `ext_vlan`.
    fn two_ports(check: SourceCheck, ext_vlan: Option<u16>) -> Snapshot {
        let mut cfg = config();
        let int = cfg.ports[0].addresses.pop().expect("the backend subnet");
        cfg.ports[0].source_check = check;
        cfg.ports[0].vlan = ext_vlan;
        cfg.ports.push(Port {
            name: "int".into(),
            interface: Some("lb-int".into()),
            dpdk_port: None,
            addresses: vec![int],
            source_check: check,
            vlan: None,
            max_neighbors: Port::DEFAULT_MAX_NEIGHBORS,
        });
        Snapshot::compile(cfg, 1)
    }

    fn on(port: u32) -> RxInfo {
        RxInfo {
            port: Some(port),
            ..RxInfo::default()
        }
    }

    /// `frame` with its outer EtherType replaced by a tag (TPID `tpid`,
    /// VLAN `vid`) in front of it.
    fn tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
        let mut f = frame[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&frame[12..]);
        f
    }

    #[test]
    fn sources_must_route_back_through_their_port() {
        // A backend-subnet source from the client link, the client from
        // the client link, and a source no route covers.
        let spoofed = || tcp_frame("198.19.1.12", "198.18.0.10", 40000, 80, TCP_SYN);
        let client = || tcp_frame("198.18.0.2", "198.18.0.10", 40001, 80, TCP_SYN);
        let unrouted = || tcp_frame("198.18.77.7", "198.18.0.10", 40002, 80, TCP_SYN);
        let verdict = |check, mut f: Vec<u8>, port| {
            let snap = two_ports(check, None);
            let mut w = Worker::new(0, 1, 1024, 1024);
            let v = w.process(&mut f, on(port), 0, &snap, &AllUp);
            (v, w.stats)
        };
        let (v, stats) = verdict(SourceCheck::Strict, spoofed(), 0);
        assert!(
            matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
            "{v:?}"
        );
        assert_eq!(stats.drops[DropKind::SpoofedSource as usize], 1);
        assert_eq!(stats.port_drops[0].spoofed_source, 1);
        assert_eq!(stats.port_drops[1], PortDrops::default());
        let snap = two_ports(SourceCheck::Strict, None);
        assert_eq!(
            snap.describe(&Reason::SpoofedSource { port: 0 }),
            "spoofed_source on port ext (source_check strict)"
        );
        // The same source from the port it routes through passes.
        assert!(!verdict(SourceCheck::Strict, spoofed(), 1).0.is_drop());
        assert!(!verdict(SourceCheck::Strict, client(), 0).0.is_drop());
        assert!(verdict(SourceCheck::Strict, client(), 1).0.is_drop());
        assert!(verdict(SourceCheck::Strict, unrouted(), 0).0.is_drop());
        // Loose: routable through some port.
        assert!(!verdict(SourceCheck::Loose, spoofed(), 0).0.is_drop());
        let (v, _) = verdict(SourceCheck::Loose, unrouted(), 0);
        assert!(
            matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
            "{v:?}"
        );
        // Off: anything.
        assert!(!verdict(SourceCheck::Off, unrouted(), 0).0.is_drop());
        // Unknown port (a caller without ports): no check.
        let snap = two_ports(SourceCheck::Strict, None);
        let mut w = Worker::new(0, 1, 1024, 1024);
        let v = w.process(&mut spoofed(), RxInfo::default(), 0, &snap, &AllUp);
        assert!(!v.is_drop(), "{v:?}");
    }

    #[test]
    fn session_packets_from_another_link_are_dropped() {
        let snap = two_ports(SourceCheck::Strict, None);
        let mut w = Worker::new(0, 1, 1024, 1024);
        let mut f = tcp_frame("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN);
        let Verdict::Forward(fwd) = w.process(&mut f, on(0), 0, &snap, &AllUp) else {
            panic!("the SYN is forwarded");
        };
        assert_eq!(fwd.hop.port, 1);
        let out = fwd.out;
        let reply = || {
            tcp_frame(
                "198.19.1.11",
                "198.19.1.250",
                out.dport,
                out.sport,
                TCP_SYN | TCP_ACK,
            )
        };
        let ack = || tcp_frame("198.18.0.2", "198.18.0.10", 40000, 80, TCP_ACK);
        // The reply from the backend link, then the client's ACK.
        assert!(!w.process(&mut reply(), on(1), 1, &snap, &AllUp).is_drop());
        assert!(!w.process(&mut ack(), on(0), 2, &snap, &AllUp).is_drop());
        // The client's 5-tuple injected from the backend link, the
        // backend's from the client link: both dropped, the session lives.
        let v = w.process(&mut ack(), on(1), 3, &snap, &AllUp);
        assert!(
            matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 1 })),
            "{v:?}"
        );
        let v = w.process(&mut reply(), on(0), 4, &snap, &AllUp);
        assert!(
            matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
            "{v:?}"
        );
        assert!(!w.process(&mut ack(), on(0), 5, &snap, &AllUp).is_drop());
        assert!(!w.process(&mut reply(), on(1), 6, &snap, &AllUp).is_drop());
        assert_eq!(w.stats.port_drops[0].spoofed_source, 1);
        assert_eq!(w.stats.port_drops[1].spoofed_source, 1);
        // Under a new configuration the check runs again (routes may have
        // moved): with both ports loose, either link is accepted.
        let loose = two_ports(SourceCheck::Loose, None);
        let loose = Snapshot::compile(loose.cfg.clone(), 2);
        w.housekeep(7, &loose);
        assert!(!w.process(&mut ack(), on(1), 7, &loose, &AllUp).is_drop());
    }

    #[test]
    fn tagged_frames_pass_only_on_their_vlan() {
        let syn = || tcp_frame("198.18.0.2", "198.18.0.10", 40000, 80, TCP_SYN);
        let run = |vlan: Option<u16>, mut f: Vec<u8>| {
            let snap = two_ports(SourceCheck::Strict, vlan);
            let mut w = Worker::new(0, 1, 1024, 1024);
            let v = w.process(&mut f, on(0), 0, &snap, &AllUp);
            (v, w.stats)
        };
        let mismatch = |v: Verdict| matches!(v, Verdict::Drop(Reason::VlanMismatch { port: 0 }));
        // An untagged port: no tag of any kind, QinQ included.
        let (v, stats) = run(None, tag(&syn(), 0x8100, 100));
        assert!(mismatch(v), "{v:?}");
        assert_eq!(stats.drops[DropKind::VlanMismatch as usize], 1);
        assert_eq!(stats.port_drops[0].vlan_mismatch, 1);
        assert!(mismatch(run(None, tag(&syn(), 0x88a8, 100)).0));
        assert!(mismatch(run(None, tag(&syn(), 0x8100, 0)).0));
        let qinq = tag(&tag(&syn(), 0x8100, 100), 0x88a8, 7);
        assert!(mismatch(run(None, qinq.clone()).0));
        assert!(!run(None, syn()).0.is_drop());
        // A port with vlan = 100: its tag only, once.
        assert!(!run(Some(100), tag(&syn(), 0x8100, 100)).0.is_drop());
        assert!(!run(Some(100), tag(&syn(), 0x8100, 0x6064)).0.is_drop());
        assert!(mismatch(run(Some(100), syn()).0));
        assert!(mismatch(run(Some(100), tag(&syn(), 0x8100, 200)).0));
        assert!(mismatch(run(Some(100), tag(&syn(), 0x88a8, 100)).0));
        assert!(mismatch(run(Some(100), qinq).0));
        let inner_q = tag(&tag(&syn(), 0x8100, 5), 0x8100, 100);
        assert!(mismatch(run(Some(100), inner_q).0));
        // ARP too.
        let arp = crate::packet::build_arp_request(
            MacAddr([2, 0, 0, 0, 0, 1]),
            "198.18.0.2".parse().expect("address"),
            "198.18.0.1".parse().expect("address"),
            None,
        );
        assert!(matches!(
            run(None, arp.clone()).0,
            Verdict::Local(LocalKind::Arp)
        ));
        assert!(mismatch(run(Some(100), arp.clone()).0));
        let tagged_arp = tag(&arp, 0x8100, 100);
        assert!(matches!(
            run(Some(100), tagged_arp).0,
            Verdict::Local(LocalKind::Arp)
        ));
        let snap = two_ports(SourceCheck::Strict, Some(100));
        assert_eq!(
            snap.describe(&Reason::VlanMismatch { port: 0 }),
            "vlan_mismatch on port ext (vlan 100)"
        );
        assert_eq!(
            snap.describe(&Reason::VlanMismatch { port: 1 }),
            "vlan_mismatch on port int (untagged)"
        );
    }

    #[test]
    fn neighbour_discovery_is_not_source_checked() {
        let snap = two_ports(SourceCheck::Strict, None);
        let mut w = Worker::new(0, 1, 1024, 1024);
        // A neighbour solicitation from a link-local address (no route).
        let mut ns = build_frame(&FrameSpec {
            src: addr("fe80::1"),
            dst: addr("ff02::1:ff00:1"),
            proto: proto::ICMPV6,
            icmp: Some((135, 0)),
            ttl: 255,
            payload: vec![0; 20],
            ..FrameSpec::default()
        });
        let v = w.process(&mut ns, on(0), 0, &snap, &AllUp);
        assert!(matches!(v, Verdict::Local(LocalKind::Neighbor)), "{v:?}");
        // Other link-scoped traffic (a multicast listener report) is not
        // a spoof; a link-local source toward a global address is.
        let udp = |src: &str, dst: &str| {
            build_frame(&FrameSpec {
                src: addr(src),
                dst: addr(dst),
                proto: proto::UDP,
                sport: 5353,
                dport: 5353,
                ttl: 1,
                ..FrameSpec::default()
            })
        };
        for (src, dst) in [
            ("fe80::1", "ff02::16"),
            ("::", "ff02::fb"),
            ("fe80::1", "fe80::2"),
        ] {
            let v = w.process(&mut udp(src, dst), on(0), 0, &snap, &AllUp);
            assert!(
                !matches!(v, Verdict::Drop(Reason::SpoofedSource { .. })),
                "{src} > {dst}: {v:?}"
            );
        }
        let v = w.process(
            &mut udp("fe80::1", "2001:db8:19:1::11"),
            on(0),
            0,
            &snap,
            &AllUp,
        );
        assert!(
            matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
            "{v:?}"
        );
        let v = w.process(&mut udp("fe80::1", "ff05::2"), on(0), 0, &snap, &AllUp);
        assert!(
            matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
            "{v:?}"
        );
        // An echo request to our address from a spoofed source is dropped.
        let mut ping = build_frame(&FrameSpec {
            src: addr("198.19.1.12"),
            dst: addr("198.18.0.1"),
            proto: proto::ICMP,
            icmp: Some((8, 0)),
            ttl: 64,
            ..FrameSpec::default()
        });
        let v = w.process(&mut ping, on(0), 0, &snap, &AllUp);
        assert!(
            matches!(v, Verdict::Drop(Reason::SpoofedSource { port: 0 })),
            "{v:?}"
        );
    }

    #[test]
    fn segments_without_a_session_are_answered_with_a_rate_limited_rst() {
        let mut cfg = config();
        cfg.dataplane.reset_unknown_rate = 10;
        let snap = Snapshot::compile(cfg.clone(), 1);
        let mut w = Worker::new(0, 1, 16, 16);
        let ack = |flags| tcp_frame_with("198.18.0.2", "198.18.0.10", 40000, 80, flags, b"data");
        let kind = |w: &mut Worker, flags, now| match w.process(
            &mut ack(flags),
            RxInfo::default(),
            now,
            &snap,
            &AllUp,
        ) {
            Verdict::Drop(r) => r,
            v => panic!("dropped expected: {v:?}"),
        };
        let t0 = 5 * NANOS_PER_SEC;
        // Ten a second: a burst of ten, then one per 100 ms.
        for _ in 0..10 {
            assert_eq!(kind(&mut w, TCP_ACK, t0), Reason::NoSessionReset);
        }
        assert_eq!(kind(&mut w, TCP_ACK, t0), Reason::NoSession);
        assert_eq!(
            kind(&mut w, TCP_ACK, t0 + NANOS_PER_SEC / 10),
            Reason::NoSessionReset
        );
        assert_eq!(
            kind(&mut w, TCP_ACK, t0 + NANOS_PER_SEC / 10),
            Reason::NoSession
        );
        // Never a RST for a RST.
        assert_eq!(
            kind(&mut w, TCP_RST, t0 + 9 * NANOS_PER_SEC),
            Reason::NoSession
        );
        assert_eq!(
            w.stats.drops[DropKind::NoSessionReset as usize],
            11,
            "counted"
        );
        // Off: only dropped.
        cfg.dataplane.reset_unknown = false;
        let off = Snapshot::compile(cfg, 2);
        let v = w.process(
            &mut ack(TCP_ACK),
            RxInfo::default(),
            20 * NANOS_PER_SEC,
            &off,
            &AllUp,
        );
        assert!(matches!(v, Verdict::Drop(Reason::NoSession)), "{v:?}");
    }

    #[test]
    fn the_rst_follows_rfc_9293() {
        let my_mac = MacAddr([2, 0, 0, 0, 0, 9]);
        // The answer to a segment: its flow, flags, seq and ack, and MACs.
        let answer = |spec: FrameSpec| {
            let f = build_frame(&FrameSpec {
                sport: 40000,
                dport: 80,
                payload: vec![1; 5],
                ..spec
            });
            let p = packet::parse(&f).expect("parse");
            let rst = packet::build_tcp_reset(&f, &p, my_mac).expect("a RST");
            let q = packet::parse(&rst).expect("parse");
            assert!(packet::verify_l4_checksum(&rst, &q));
            let seg = packet::TcpPacket::new_checked(&rst[q.l4_offset..]).expect("tcp");
            let fields = (seg.flags().0, seg.seq_number(), seg.ack_number());
            (packet::format_flow(&q), fields, rst[0..12].to_vec())
        };
        // With ACK set: <SEQ=SEG.ACK><CTL=RST>.
        let (flow, fields, macs) = answer(FrameSpec {
            src: addr("198.18.0.2"),
            dst: addr("198.18.0.10"),
            tcp_flags: TCP_ACK,
            tcp_seq: 111,
            tcp_ack: 222,
            ..FrameSpec::default()
        });
        assert_eq!(flow, "tcp 198.18.0.10:80 > 198.18.0.2:40000");
        assert_eq!(fields, (TCP_RST, 222, 0));
        assert_eq!(macs, [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 9]);
        // Without ACK (a FIN and 5 bytes): <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
        let (_, fields, _) = answer(FrameSpec {
            src: addr("2001:db8:18::2"),
            dst: addr("2001:db8:18::10"),
            tcp_flags: 0x01,
            tcp_seq: u32::MAX - 2,
            ..FrameSpec::default()
        });
        assert_eq!(fields, (TCP_RST | TCP_ACK, 0, 3));
        // A RST is never answered.
        let f = tcp_frame_with("198.18.0.2", "198.18.0.10", 1, 80, TCP_RST, b"");
        let p = packet::parse(&f).expect("parse");
        assert!(packet::build_tcp_reset(&f, &p, my_mac).is_none());
    }
}
