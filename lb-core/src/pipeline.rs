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
use crate::conntrack::{Dir, SessionTable, Timeouts};
use crate::flow::FlowKey;
use crate::model::{proto, AclMode, BackendSgPolicy, Config, Direction};
use crate::nat::PortAllocator;
use crate::packet::{self, L4Csum, ParseError, Parsed};
use crate::sched::{self, Scheduler};
use crate::{Nanos, NANOS_PER_SEC};

/// The most frames [`Worker::process_burst`] handles in one call.
pub const BURST_MAX: usize = 64;

/// How many expired sessions one call of [`Worker::housekeep`] reaps at most.
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
        let timeouts = Timeouts::from_session_timeout(cfg.platform.session_timeout_s);
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
        }
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
}

impl DropKind {
    pub const COUNT: usize = DropKind::OwnSource as usize + 1;
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
}

/// `Flow::listener[0]` of a routed session.
const NO_LISTENER: u16 = u16::MAX;

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
        };
        flow.set_listener(at).then_some(flow)
    }

    fn routed(generation: u64) -> Flow {
        Flow {
            listener: [NO_LISTENER; 4],
            generation: generation as u32,
            local_port: false,
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
        }
    }

    /// The memory of a worker's session tables for `max_sessions` IPv4 and
    /// `max_sessions_v6` IPv6 sessions, in bytes: what a data plane commits
    /// per worker at start-up ([`Worker::prefault`]).
    pub const fn session_table_bytes(max_sessions: usize, max_sessions_v6: usize) -> u64 {
        let v4 = max_sessions as u64 * SessionTable::<Flow>::session_bytes(false) as u64;
        let v6 = max_sessions_v6 as u64 * SessionTable::<Flow>::session_bytes(true) as u64;
        v4.saturating_add(v6)
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

    /// [`Worker::process`] for a frame the caller has already parsed, so it
    /// is parsed once. (The data plane's workers run bursts through
    /// [`Worker::process_burst`].)
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
            Verdict::Forward(_) => self.stats.forwarded += 1,
            Verdict::Local(..) => self.stats.local += 1,
            Verdict::Drop(r) => {
                self.stats.drops[r.kind() as usize] += 1;
                if let Reason::Policy(d) = r {
                    let d = *d;
                    self.hit(d);
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
        if let Some(local) = local_kind(p, key, snap) {
            return Verdict::Local(local);
        }

        let csum = if rx.csum_partial {
            L4Csum::Partial
        } else {
            L4Csum::Full
        };
        let found = self.sessions.lookup_hashed(key, hash, now);
        if let Some((id, dir)) = found {
            return self.established(frame, p, csum, key, id, dir, now, snap);
        }
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
    ) -> Verdict {
        let Some(&flow) = self.sessions.payload(id) else {
            return Verdict::Drop(Reason::NoSession);
        };
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
        let tcp_flags = (key.proto == proto::TCP).then_some(p.tcp_flags);
        self.sessions
            .update(id, dir, tcp_flags, now, &snap.timeouts);
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
    /// sent it. `None` when it quotes no session of ours.
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
        if crate::nat::icmp::translate_error(frame, p, src, dst, &inner).is_err() {
            return Some(Verdict::Drop(Reason::Rewrite));
        }
        let Some(hop) = snap.route(dst) else {
            return Some(Verdict::Drop(Reason::NoRoute));
        };
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
        if out != key && packet::rewrite(frame, p, out, csum).is_err() {
            return Verdict::Drop(Reason::Rewrite);
        }
        if csum == L4Csum::Partial {
            // The kernel deferred the checksum to a device that will never
            // see this frame: finish it here.
            packet::complete_l4_checksum(frame, p, out.src, out.dst);
        }
        if backend.is_none() && !packet::decrement_ttl(frame, p) {
            return Verdict::Drop(Reason::TtlExceeded);
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
        // A TCP session starts with a SYN; anything else without a session
        // (a stray ACK after a restart) is dropped so the client resets.
        if key.proto == proto::TCP && p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
            return Verdict::Drop(Reason::NoSession);
        }
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
            return Verdict::Drop(Reason::NoHealthyServer {
                lb: idx32(lbi),
                listener: idx32(li),
            });
        };
        let server = &group.servers[si];
        let Some(flow) = Flow::listener_session(
            (idx32(lbi), idx32(li), idx32(gi), idx32(si)),
            snap.generation,
            !listener.transfer_client_ip,
        ) else {
            // Beyond the 16-bit indices a session holds (lb_config refuses
            // such a configuration): no session can be made for it.
            return Verdict::Drop(Reason::NoListener);
        };
        let backend_addr = server
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv6() == family_v6)
            .expect("eligible servers have an address of the flow's family");

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
                return Verdict::Drop(Reason::NatPortsExhausted);
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
            let Some(lport) = lport else {
                return Verdict::Drop(Reason::NatPortsExhausted);
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
            self.sessions
                .insert_missed(key, key_hash, reply, flow, now, &snap.timeouts, own_port)
                .map_err(|_| Reason::SessionTableFull)
        });
        let id = match inserted {
            Ok(id) => id,
            Err(r) => {
                release_port(&mut self.ports, &flow, &reply);
                return Verdict::Drop(r);
            }
        };
        let tcp_flags = (key.proto == proto::TCP).then_some(p.tcp_flags);
        self.sessions
            .update(id, Dir::Orig, tcp_flags, now, &snap.timeouts);
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
        // ICMP errors are not sessions of their own.
        let is_icmp_error = matches!(reason, Reason::PathMtu);
        let id = if is_icmp_error {
            None
        } else {
            let flow = Flow::routed(snap.generation);
            match self.sessions.insert_missed(
                key,
                key_hash,
                key.reversed(),
                flow,
                now,
                &snap.timeouts,
                false,
            ) {
                Ok(id) => {
                    let tcp_flags = (key.proto == proto::TCP).then_some(p.tcp_flags);
                    self.sessions
                        .update(id, Dir::Orig, tcp_flags, now, &snap.timeouts);
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

    fn addr(s: &str) -> IpAddr {
        s.parse().expect("address")
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
        let want = (1u64 << 16) * w.sessions.bytes_per_session(false) as u64
            + (1u64 << 14) * w.sessions.bytes_per_session(true) as u64;
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
        let v = w.process(&mut frame, RxInfo { csum_partial: true }, 0, &snap, &AllUp);
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
}
