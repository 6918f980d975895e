//! Semantic validation and compilation of a [`FileConfig`] into
//! [`lb_core::model::Config`]. Every problem is reported; compilation goes
//! on with placeholder values after an error so that later checks still run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use lb_core::model::{
    proto, AclMode, Action, BackendSgPolicy, Config, Dataplane, Direction, Fragments, GroupKind,
    HealthCheck, HealthProtocol, IdlePolicy, Instance, IoBackend, Listener, ListenerAcl,
    ListenerProtocol, LoadBalancer, NetworkAcl, Peer, Platform, Port, PortList, PortRange,
    PrefixList, Route, Rule, SchedulerKind, SecurityGroup, Server, ServerGroup, SourceCheck,
    Subnet, SynProxyMode, DEFAULT_SYN_PROXY_THRESHOLD,
};

use crate::error::Sink;
use crate::parse::{self, PortSpec};
use crate::schema::*;

/// At most this many security groups per instance or load balancer.
pub const MAX_GROUPS_PER_INTERFACE: usize = 10;
/// At most this many rules across the groups of one instance or load
/// balancer (a rule using a prefix or port list counts its `max_entries`).
pub const MAX_RULES_PER_INTERFACE: u64 = 1000;
/// At most this many load balancers, listeners per load balancer, server
/// groups and servers per group (a session numbers them in 16 bits).
pub const MAX_PER_KIND: usize = 65535;
/// `platform.unreplied_timeout_s` upper bound (a day).
const MAX_UNREPLIED_TIMEOUT_S: i64 = 86_400;
/// `dataplane.reset_unknown_rate` upper bound (per worker and second).
const MAX_RESET_UNKNOWN_RATE: i64 = 1_000_000;
/// `dataplane.fragments.table` upper bound (entries per worker).
const MAX_FRAGMENT_TABLE: i64 = 1 << 20;
/// `dataplane.fragments.timeout_ms` upper bound (a minute).
const MAX_FRAGMENT_TIMEOUT_MS: i64 = 60_000;
/// `dataplane.fragments.hold` upper bound (fragments per worker).
const MAX_FRAGMENT_HOLD: i64 = 4096;
/// `dataplane.workers` upper bound.
pub const MAX_WORKERS: i64 = 64;
/// Health check interval and timeout upper bound, in seconds.
pub const MAX_HEALTH_CHECK_S: f64 = 300.0;
/// `platform.session_timeout_s` upper bound: 5 days, Linux conntrack's
/// timeout of an established TCP connection.
pub const MAX_SESSION_TIMEOUT_S: u32 = 432_000;

/// An id table of one kind: id → (index, span of its definition).
struct Ids<'a> {
    kind: &'static str,
    map: HashMap<&'a str, (usize, Range<usize>)>,
}

impl Ids<'_> {
    fn get(&self, id: &str) -> Option<usize> {
        self.map.get(id).map(|(i, _)| *i)
    }
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn protocol_name(p: Option<u8>) -> String {
    match p {
        None => "all".to_string(),
        Some(proto::TCP) => "tcp".to_string(),
        Some(proto::UDP) => "udp".to_string(),
        Some(proto::ICMP) => "icmp".to_string(),
        Some(proto::ICMPV6) => "icmpv6".to_string(),
        Some(proto::GRE) => "gre".to_string(),
        Some(n) => n.to_string(),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What an address is used for, to explain conflicts.
#[derive(Debug, Clone)]
struct Owner {
    what: String,
    line: usize,
    /// A data-plane port's own address: it may double as a VIP or local
    /// address (the data plane answers for it either way), not as an
    /// instance's.
    port: bool,
}

/// Where a server group is used, for the health check checks.
struct ListenerUse {
    lb: String,
    protocol: ListenerProtocolConfig,
    port: u16,
    span: Range<usize>,
}

/// Per security group facts needed when it is attached.
struct GroupFacts {
    kind: GroupTypeConfig,
    /// Rule quota this group consumes.
    cost: u64,
}

pub(crate) struct Compiler<'a, 's> {
    sink: &'s mut Sink<'a>,
    /// Subnets with an invalid CIDR: their members' addresses are not
    /// checked against them (that would only repeat the error).
    broken_subnets: Vec<usize>,
}

impl<'a, 's> Compiler<'a, 's> {
    pub(crate) fn new(sink: &'s mut Sink<'a>) -> Self {
        Compiler {
            sink,
            broken_subnets: Vec::new(),
        }
    }

    fn err(&mut self, span: &Range<usize>, msg: impl Into<String>) {
        self.sink.error(span, msg);
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.sink.line_of(span)
    }

    /// Checks an integer against an inclusive range and converts it.
    fn int<T: TryFrom<i64> + Default>(&mut self, v: &S<i64>, what: &str, lo: i64, hi: i64) -> T {
        let n = *v.get_ref();
        if n < lo || n > hi {
            self.err(&v.span(), format!("{what} must be {lo}..={hi}, got {n}"));
            return T::default();
        }
        T::try_from(n).unwrap_or_default()
    }

    /// A listener's SYN proxy mode and threshold (TCP listeners only).
    fn syn_proxy(
        &mut self,
        l: &ListenerConfig,
        proto: ListenerProtocolConfig,
    ) -> (SynProxyMode, u32) {
        let mode = match l.syn_proxy.as_ref() {
            Some(m) if proto.is_udp() => {
                self.err(
                    &m.span(),
                    format!("syn_proxy is for TCP listeners, not {}", proto.as_str()),
                );
                SynProxyMode::Off
            }
            Some(m) => match m.get_ref() {
                SynProxyConfig::Off => SynProxyMode::Off,
                SynProxyConfig::On => SynProxyMode::On,
                SynProxyConfig::Auto => SynProxyMode::Auto,
            },
            None if proto.is_udp() => SynProxyMode::Off,
            None => SynProxyMode::Auto,
        };
        let threshold = match l.syn_proxy_threshold.as_ref() {
            Some(t) if mode != SynProxyMode::Auto => {
                self.err(
                    &t.span(),
                    "syn_proxy_threshold applies only with syn_proxy = \"auto\"",
                );
                DEFAULT_SYN_PROXY_THRESHOLD
            }
            Some(t) => self.int(t, "syn_proxy_threshold", 1, i64::from(u32::MAX)),
            None => DEFAULT_SYN_PROXY_THRESHOLD,
        };
        (mode, threshold)
    }

    /// Reports the first item beyond [`MAX_PER_KIND`] of a list.
    fn at_most<T>(&mut self, what: &str, of: &str, items: &[S<T>]) {
        if let Some(extra) = items.get(MAX_PER_KIND) {
            self.err(&extra.span(), format!("at most {MAX_PER_KIND} {what}{of}"));
        }
    }

    /// Builds the id table of one kind, reporting bad and duplicate ids.
    fn ids<'c, T>(
        &mut self,
        kind: &'static str,
        items: &'c [S<T>],
        id: impl Fn(&'c T) -> &'c S<String>,
        prefix: Option<&str>,
    ) -> Ids<'c> {
        let mut map: HashMap<&'c str, (usize, Range<usize>)> = HashMap::new();
        // Ports have a name; everything else an id.
        let field = if kind == "port" { "name" } else { "id" };
        for (i, item) in items.iter().enumerate() {
            let id = id(item.get_ref());
            let s = id.get_ref().as_str();
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.err(
                    &id.span(),
                    format!("{kind} {field} {s:?} must be non-empty and contain no whitespace"),
                );
            } else if let Some(p) = prefix.filter(|p| !s.starts_with(p)) {
                self.err(
                    &id.span(),
                    format!("{kind} id {s} must start with {p:?} (rules tell {kind}s apart by that prefix)"),
                );
            }
            if let Some((_, first)) = map.get(s) {
                let line = self.line(first);
                self.err(
                    &id.span(),
                    format!("duplicate {kind} {field} {s} (first defined on line {line})"),
                );
            } else {
                map.insert(s, (i, id.span()));
            }
        }
        Ids { kind, map }
    }

    fn resolve(&mut self, ids: &Ids<'_>, r: &S<String>) -> usize {
        match ids.get(r.get_ref()) {
            Some(i) => i,
            None => {
                self.err(&r.span(), format!("unknown {} {}", ids.kind, r.get_ref()));
                0
            }
        }
    }

    pub(crate) fn compile(&mut self, f: &'a FileConfig) -> Config {
        let port_ids = self.ids("port", &f.ports, |p| &p.name, None);
        let pl_ids = self.ids("prefix list", &f.prefix_lists, |p| &p.id, Some("pl-"));
        let prl_ids = self.ids("port list", &f.port_lists, |p| &p.id, None);
        let sg_ids = self.ids("security group", &f.security_groups, |g| &g.id, Some("sg-"));
        let nacl_ids = self.ids("network ACL", &f.network_acls, |a| &a.id, None);
        let subnet_ids = self.ids("subnet", &f.subnets, |s| &s.id, None);
        let inst_ids = self.ids("instance", &f.instances, |i| &i.id, None);
        let sgp_ids = self.ids("server group", &f.server_groups, |g| &g.id, None);
        self.ids("load balancer", &f.load_balancers, |l| &l.id, None);
        self.at_most("server groups", "", &f.server_groups);
        self.at_most("load balancers", "", &f.load_balancers);

        let platform = self.platform(f.platform.as_ref());
        let dataplane = self.dataplane(f.dataplane.as_ref());
        let mut owners: HashMap<IpAddr, Owner> = HashMap::new();
        let ports = self.ports(&f.ports, dataplane.io);
        for p in &f.ports {
            let p = p.get_ref();
            for a in &p.addresses {
                if let Ok(net) = parse::interface_address(a.get_ref()) {
                    let line = self.line(&a.span());
                    let what = format!("port {}", p.name.get_ref());
                    owners.entry(net.addr()).or_insert(Owner {
                        what,
                        line,
                        port: true,
                    });
                }
            }
        }
        let routes = self.routes(&f.routes, &port_ids, &ports);
        let prefix_lists: Vec<PrefixList> =
            f.prefix_lists.iter().map(|p| self.prefix_list(p)).collect();
        let port_lists: Vec<PortList> = f.port_lists.iter().map(|p| self.port_list(p)).collect();

        let refs = RuleRefs {
            sgs: &sg_ids,
            pls: &pl_ids,
            prls: &prl_ids,
            prefix_lists: &prefix_lists,
            port_lists: &port_lists,
        };
        let mut facts = Vec::new();
        let mut security_groups = Vec::new();
        for g in &f.security_groups {
            let (group, fact) = self.security_group(g, &refs);
            security_groups.push(group);
            facts.push(fact);
        }
        let network_acls = f
            .network_acls
            .iter()
            .map(|a| self.network_acl(a, &refs))
            .collect();
        let subnets = self.subnets(&f.subnets, &nacl_ids);

        let instances = self.instances(
            &f.instances,
            &subnet_ids,
            &subnets,
            &sg_ids,
            &facts,
            &mut owners,
        );
        let mut server_groups: Vec<ServerGroup> = f
            .server_groups
            .iter()
            .map(|g| self.server_group(g, &inst_ids, &instances))
            .collect();
        let mut uses: Vec<Vec<ListenerUse>> = f.server_groups.iter().map(|_| Vec::new()).collect();
        let load_balancers = self.load_balancers(
            &f.load_balancers,
            &LbRefs {
                sgs: &sg_ids,
                facts: &facts,
                sgps: &sgp_ids,
                pls: &pl_ids,
                server_groups: &server_groups,
            },
            &mut owners,
            &mut uses,
        );
        self.health_checks(&f.server_groups, &mut server_groups, &uses);

        Config {
            platform,
            dataplane,
            ports,
            routes,
            prefix_lists,
            port_lists,
            security_groups,
            network_acls,
            subnets,
            instances,
            server_groups,
            load_balancers,
        }
    }

    fn platform(&mut self, p: Option<&S<PlatformConfig>>) -> Platform {
        let mut out = Platform::default();
        let Some(p) = p else { return out };
        let p = p.get_ref();
        if let Some(policy) = p.backend_sg_policy {
            out.backend_sg_policy = match policy {
                BackendSgPolicyConfig::Bypass => BackendSgPolicy::Bypass,
                BackendSgPolicyConfig::Enforce => BackendSgPolicy::Enforce,
            };
        }
        if let Some(t) = &p.session_timeout_s {
            out.session_timeout_s =
                self.int(t, "session_timeout_s", 1, i64::from(MAX_SESSION_TIMEOUT_S));
        }
        if let Some(r) = p.restrict_smtp {
            out.restrict_smtp = r;
        }
        if let Some(t) = &p.unreplied_timeout_s {
            out.unreplied_timeout_s =
                self.int(t, "unreplied_timeout_s", 1, MAX_UNREPLIED_TIMEOUT_S);
        }
        if let Some(a) = &p.metadata_address {
            match parse::address(a.get_ref()) {
                Ok(addr) => out.metadata_address = addr,
                Err(e) => self.err(&a.span(), e),
            }
        }
        out
    }

    fn dataplane(&mut self, d: Option<&S<DataplaneConfig>>) -> Dataplane {
        let mut out = Dataplane::default();
        let Some(d) = d else { return out };
        let d = d.get_ref();
        if let Some(io) = &d.io {
            out.io = match io.get_ref() {
                IoConfig::AfPacket => IoBackend::AfPacket,
                IoConfig::Dpdk => IoBackend::Dpdk,
            };
        }
        if let Some(w) = &d.workers {
            out.workers = self.int(w, "workers", 1, MAX_WORKERS);
        }
        if let Some(m) = &d.max_sessions {
            out.max_sessions = self.int(m, "max_sessions", 1024, 1 << 26);
        }
        out.max_sessions_v6 = match &d.max_sessions_v6 {
            Some(m) => self.int(m, "max_sessions_v6", 1024, 1 << 26),
            None => (out.max_sessions / 4).max(1024),
        };
        if let Some(cores) = &d.cores {
            let mut seen: HashSet<u16> = HashSet::new();
            for c in cores.get_ref() {
                let core: u16 = self.int(c, "a core number", 0, i64::from(u16::MAX));
                if !seen.insert(core) {
                    self.err(
                        &c.span(),
                        format!("core {core} is listed twice; pin each worker to its own core"),
                    );
                }
                out.cores.push(core);
            }
            let n = cores.get_ref().len();
            if n != 0 && n != usize::from(out.workers) && out.workers != 0 {
                self.err(
                    &cores.span(),
                    format!(
                        "cores lists {} but workers = {}; give one core per worker, or none",
                        plural(n, "core", "cores"),
                        out.workers
                    ),
                );
            }
        }
        if let Some(args) = &d.eal_args {
            if out.io != IoBackend::Dpdk && !args.get_ref().is_empty() {
                self.err(&args.span(), "eal_args apply to io = \"dpdk\" only");
            }
            out.eal_args.clone_from(args.get_ref());
        }
        if let Some(idle) = d.idle {
            out.idle = match idle {
                IdleConfig::Busy => IdlePolicy::Busy,
                IdleConfig::Adaptive => IdlePolicy::Adaptive,
            };
        }
        if let Some(r) = d.reset_unknown {
            out.reset_unknown = r;
        }
        if let Some(r) = &d.reset_unknown_rate {
            out.reset_unknown_rate = self.int(r, "reset_unknown_rate", 1, MAX_RESET_UNKNOWN_RATE);
        }
        if let Some(f) = &d.fragments {
            out.fragments = self.fragments(f.get_ref());
        }
        out
    }

    /// `[dataplane.fragments]`.
    fn fragments(&mut self, f: &FragmentsConfig) -> Fragments {
        let mut out = Fragments::default();
        if let Some(v) = f.forward {
            out.forward = v;
        }
        if let Some(v) = &f.table {
            out.table = self.int(v, "table", 8, MAX_FRAGMENT_TABLE);
        }
        if let Some(v) = &f.timeout_ms {
            out.timeout_ms = self.int(v, "timeout_ms", 10, MAX_FRAGMENT_TIMEOUT_MS);
        }
        if let Some(v) = &f.hold {
            out.hold = self.int(v, "hold", 0, MAX_FRAGMENT_HOLD);
        }
        if let Some(v) = &f.hold_ms {
            let most = i64::from(out.timeout_ms.max(1));
            out.hold_ms = self.int(v, "hold_ms (at most timeout_ms)", 1, most);
        } else {
            out.hold_ms = out.hold_ms.min(out.timeout_ms);
        }
        out
    }

    fn ports(&mut self, ports: &[S<PortConfig>], io: IoBackend) -> Vec<Port> {
        let mut out = Vec::new();
        let mut ifaces: HashMap<&str, usize> = HashMap::new();
        let mut dpdk: HashMap<u16, usize> = HashMap::new();
        let mut addrs: HashMap<IpAddr, String> = HashMap::new();
        for p in ports {
            let span = p.span();
            let p = p.get_ref();
            let name = p.name.get_ref();
            let mut port = Port {
                name: name.clone(),
                interface: None,
                dpdk_port: None,
                addresses: Vec::new(),
                source_check: match p.source_check {
                    None | Some(SourceCheckConfig::Strict) => SourceCheck::Strict,
                    Some(SourceCheckConfig::Loose) => SourceCheck::Loose,
                    Some(SourceCheckConfig::Off) => SourceCheck::Off,
                },
                vlan: None,
                max_neighbors: Port::DEFAULT_MAX_NEIGHBORS,
            };
            if let Some(m) = &p.max_neighbors {
                port.max_neighbors = self.int(m, "max_neighbors", 16, 65536);
            }
            match io {
                IoBackend::AfPacket => {
                    if p.interface.is_none() {
                        self.err(&span, format!("port {name} needs interface (the kernel interface io = \"af_packet\" uses)"));
                    }
                    if let Some(d) = &p.dpdk_port {
                        self.err(
                            &d.span(),
                            "dpdk_port applies to io = \"dpdk\" only; with af_packet use interface",
                        );
                    }
                }
                IoBackend::Dpdk => {
                    if p.dpdk_port.is_none() {
                        self.err(
                            &span,
                            format!(
                                "port {name} needs dpdk_port (the ethdev port io = \"dpdk\" uses)"
                            ),
                        );
                    }
                    if let Some(i) = &p.interface {
                        self.err(
                            &i.span(),
                            "interface applies to io = \"af_packet\" only; with dpdk use dpdk_port",
                        );
                    }
                }
            }
            if let Some(i) = &p.interface {
                if let Err(e) = parse::interface_name(i.get_ref()) {
                    self.err(&i.span(), e);
                } else if let Some(line) = ifaces.insert(i.get_ref(), self.line(&i.span())) {
                    self.err(
                        &i.span(),
                        format!(
                            "interface {} is already used by the port on line {line}",
                            i.get_ref()
                        ),
                    );
                }
                port.interface = Some(i.get_ref().clone());
            }
            if let Some(d) = &p.dpdk_port {
                let id: u16 = self.int(d, "dpdk_port", 0, i64::from(u16::MAX));
                if let Some(line) = dpdk.insert(id, self.line(&d.span())) {
                    self.err(
                        &d.span(),
                        format!("dpdk_port {id} is already used by the port on line {line}"),
                    );
                }
                port.dpdk_port = Some(id);
            }
            if let Some(v) = &p.vlan {
                // 0 is a priority tag and 4095 reserved (802.1Q).
                port.vlan = Some(self.int(v, "vlan", 1, 4094));
            }
            for a in &p.addresses {
                match parse::interface_address(a.get_ref()) {
                    Ok(net) => {
                        if let Some(other) = addrs.get(&net.addr()) {
                            self.err(
                                &a.span(),
                                format!("address {} is already on port {other}", net.addr()),
                            );
                        } else {
                            addrs.insert(net.addr(), name.clone());
                        }
                        port.addresses.push(net);
                    }
                    Err(e) => self.err(&a.span(), e),
                }
            }
            out.push(port);
        }
        out
    }

    fn routes(
        &mut self,
        routes: &[S<RouteConfig>],
        port_ids: &Ids<'_>,
        ports: &[Port],
    ) -> Vec<Route> {
        let mut out = Vec::new();
        let mut seen: HashMap<IpNet, usize> = HashMap::new();
        for r in routes {
            let r = r.get_ref();
            let destination = match parse::cidr(r.destination.get_ref()) {
                Ok(net) => {
                    if let Some(line) = seen.insert(net, self.line(&r.destination.span())) {
                        self.err(
                            &r.destination.span(),
                            format!("a route to {net} is already defined on line {line}"),
                        );
                    }
                    Some(net)
                }
                Err(e) => {
                    self.err(&r.destination.span(), e);
                    None
                }
            };
            let port = port_ids.get(r.port.get_ref());
            if port.is_none() {
                self.err(&r.port.span(), format!("unknown port {}", r.port.get_ref()));
            }
            let mut via = None;
            if let Some(v) = &r.via {
                match parse::address(v.get_ref()) {
                    Ok(addr) => {
                        via = Some(addr);
                        if let Some(dst) =
                            destination.filter(|d| d.addr().is_ipv4() != addr.is_ipv4())
                        {
                            self.err(
                                &v.span(),
                                format!(
                                    "next hop {addr} is {} but destination {dst} is {}",
                                    family(&addr),
                                    family(&dst.addr())
                                ),
                            );
                        } else if let Some(p) = port.and_then(|i| ports.get(i)) {
                            if !p.addresses.iter().any(|n| n.contains(&addr)) {
                                let nets: Vec<String> = p
                                    .addresses
                                    .iter()
                                    .filter(|n| n.addr().is_ipv4() == addr.is_ipv4())
                                    .map(|n| n.trunc().to_string())
                                    .collect();
                                let where_ = if nets.is_empty() {
                                    format!("port {} has no {} address", p.name, family(&addr))
                                } else {
                                    format!("port {} is on {}", p.name, nets.join(", "))
                                };
                                self.err(
                                    &v.span(),
                                    format!(
                                        "next hop {addr} is not on a link of its port: {where_}"
                                    ),
                                );
                            }
                        }
                    }
                    Err(e) => self.err(&v.span(), e),
                }
            }
            out.push(Route {
                destination: destination.unwrap_or_default(),
                via,
                port: port.unwrap_or(0),
            });
        }
        out
    }

    fn max_entries(&mut self, m: &S<i64>) -> u32 {
        self.int(m, "max_entries", 1, i64::from(u32::MAX))
    }

    fn check_count(&mut self, kind: &str, id: &str, max: u32, entries: &[S<String>]) {
        if let Some(extra) = entries.get(usize::try_from(max).unwrap_or(usize::MAX)) {
            self.err(
                &extra.span(),
                format!(
                    "{kind} {id} has {} entries but max_entries = {max}",
                    entries.len()
                ),
            );
        }
    }

    fn prefix_list(&mut self, p: &S<PrefixListConfig>) -> PrefixList {
        let p = p.get_ref();
        let max_entries = self.max_entries(&p.max_entries);
        self.check_count("prefix list", p.id.get_ref(), max_entries, &p.entries);
        let mut entries = Vec::new();
        let mut seen: HashMap<IpNet, usize> = HashMap::new();
        for e in &p.entries {
            match parse::cidr(e.get_ref()) {
                Ok(net) => {
                    if let Some(line) = seen.insert(net, self.line(&e.span())) {
                        self.err(&e.span(), format!("{net} is already listed on line {line}"));
                    }
                    entries.push(net);
                }
                Err(msg) => self.err(&e.span(), msg),
            }
        }
        PrefixList {
            id: p.id.get_ref().clone(),
            max_entries,
            entries,
        }
    }

    fn port_list(&mut self, p: &S<PortListConfig>) -> PortList {
        let p = p.get_ref();
        let max_entries = self.max_entries(&p.max_entries);
        self.check_count("port list", p.id.get_ref(), max_entries, &p.entries);
        let mut entries = Vec::new();
        let mut seen: HashSet<PortRange> = HashSet::new();
        for e in &p.entries {
            match parse::port_range(e.get_ref()) {
                Ok(PortSpec::Range(r)) => {
                    if !seen.insert(r) {
                        self.err(&e.span(), format!("{} is listed twice", e.get_ref()));
                    }
                    entries.push(r);
                }
                Ok(PortSpec::Any) => self.err(
                    &e.span(),
                    "a port list entry needs real ports; -1/-1 is not allowed here",
                ),
                Err(msg) => self.err(&e.span(), msg),
            }
        }
        PortList {
            id: p.id.get_ref().clone(),
            max_entries,
            entries,
        }
    }

    fn security_group(
        &mut self,
        g: &S<SecurityGroupConfig>,
        refs: &RuleRefs<'_, '_>,
    ) -> (SecurityGroup, GroupFacts) {
        let g = g.get_ref();
        let kind_cfg = g
            .kind
            .as_ref()
            .map_or(GroupTypeConfig::Basic, |k| *k.get_ref());
        let kind = match kind_cfg {
            GroupTypeConfig::Basic => GroupKind::Basic {
                internal_access: !matches!(
                    g.internal_access.as_ref().map(|a| *a.get_ref()),
                    Some(InternalAccessConfig::Drop)
                ),
            },
            GroupTypeConfig::Enterprise => {
                if let Some(a) = &g.internal_access {
                    self.err(
                        &a.span(),
                        "internal_access applies to basic security groups only (an enterprise group always isolates its members)",
                    );
                }
                GroupKind::Enterprise
            }
        };
        let mut cost = 0u64;
        let mut rules = Vec::new();
        for r in &g.rules {
            let (rule, c) = self.rule(r, refs, true);
            cost = cost.saturating_add(c);
            rules.push(rule);
        }
        self.duplicate_rules(&g.rules, &rules);
        (
            SecurityGroup {
                id: g.id.get_ref().clone(),
                kind,
                rules,
            },
            GroupFacts {
                kind: kind_cfg,
                cost,
            },
        )
    }

    fn network_acl(&mut self, a: &S<NetworkAclConfig>, refs: &RuleRefs<'_, '_>) -> NetworkAcl {
        let a = a.get_ref();
        let rules: Vec<Rule> = a
            .rules
            .iter()
            .map(|r| self.rule(r, refs, false).0)
            .collect();
        self.duplicate_rules(&a.rules, &rules);
        NetworkAcl {
            id: a.id.get_ref().clone(),
            rules,
        }
    }

    /// A cloud refuses a rule identical to an existing one; so do we.
    fn duplicate_rules(&mut self, cfg: &[S<RuleConfig>], rules: &[Rule]) {
        for (i, first_line) in duplicate_rules(rules) {
            if let Some(c) = cfg.get(i) {
                self.err(
                    &c.span(),
                    format!("this rule duplicates the rule on line {first_line}"),
                );
            }
        }
    }

    /// Compiles one rule; returns it and the rule quota it consumes.
    fn rule(&mut self, r: &S<RuleConfig>, refs: &RuleRefs<'_, '_>, in_group: bool) -> (Rule, u64) {
        let line = u32::try_from(self.line(&r.span())).unwrap_or(u32::MAX);
        let r = r.get_ref();
        let direction = match r.direction.get_ref() {
            DirectionConfig::Ingress => Direction::Ingress,
            DirectionConfig::Egress => Direction::Egress,
        };
        let action = match r.action.get_ref() {
            ActionConfig::Allow => Action::Allow,
            ActionConfig::Deny => Action::Deny,
        };
        let priority = r
            .priority
            .as_ref()
            .map_or(1, |p| self.int(p, "priority", 1, 100));
        let protocol = match r.protocol.get_ref().resolve() {
            Ok(p) => p.0,
            Err(message) => {
                self.err(&r.protocol.span(), message);
                // Check the rest of the rule as the protocol its ports
                // suggest, so no error merely echoes this one.
                let portless = match (&r.port_range, &r.port_list) {
                    (None, None) => true,
                    (Some(pr), _) => pr.get_ref().trim() == "-1/-1",
                    (None, Some(_)) => false,
                };
                (!portless).then_some(proto::TCP)
            }
        };
        let pname = protocol_name(protocol);
        let has_ports = matches!(protocol, Some(proto::TCP | proto::UDP));
        let mut cost = 1u64;

        let mut ports = vec![PortRange::ANY];
        let mut port_list = None;
        match (&r.port_range, &r.port_list) {
            (Some(_), Some(l)) => self.err(&l.span(), "a rule takes port_range or port_list, not both"),
            (None, Some(l)) => {
                if !has_ports {
                    self.err(&l.span(), format!("port_list needs protocol tcp or udp, not {pname}"));
                }
                if let Some(i) = refs.prls.get(l.get_ref()) {
                    port_list = Some(i);
                    if let Some(pl) = refs.port_lists.get(i) {
                        ports.clone_from(&pl.entries);
                        cost = u64::from(pl.max_entries.max(1));
                    }
                } else {
                    self.err(&l.span(), format!("unknown port list {}", l.get_ref()));
                }
            }
            (Some(pr), None) => match parse::port_range(pr.get_ref()) {
                Ok(PortSpec::Any) if has_ports => self.err(
                    &pr.span(),
                    format!("port range -1/-1 is for protocols without ports; for all {pname} ports write \"1/65535\""),
                ),
                Ok(PortSpec::Any) => {}
                Ok(PortSpec::Range(range)) if has_ports => ports = vec![range],
                Ok(PortSpec::Range(_)) => self.err(
                    &pr.span(),
                    format!("protocol {pname} has no ports; its port_range must be \"-1/-1\""),
                ),
                Err(e) => self.err(&pr.span(), e),
            },
            (None, None) => {
                if has_ports {
                    self.err(&r.protocol.span(), format!("a {pname} rule needs port_range (e.g. \"80/80\") or port_list"));
                }
            }
        }

        let (peer_field, local_field, peer_name, local_name) = match direction {
            Direction::Ingress => (&r.source, &r.destination, "source", "destination"),
            Direction::Egress => (&r.destination, &r.source, "destination", "source"),
        };
        let dir_name = match direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        let mut peer = Peer::Cidr(IpNet::default());
        // The peer when it is a valid address or CIDR.
        let mut peer_cidr = None;
        match peer_field {
            None => self.err(
                &r.direction.span(),
                format!("an {dir_name} rule needs {peer_name} (its authorization object: an address, CIDR, sg-… or pl-…)"),
            ),
            Some(p) => {
                let s = p.get_ref().as_str();
                if s.starts_with("sg-") {
                    if in_group {
                        if let Some(i) = refs.sgs.get(s) {
                            peer = Peer::Group(i);
                        } else {
                            self.err(&p.span(), format!("unknown security group {s}"));
                        }
                    } else {
                        self.err(&p.span(), format!("a network ACL rule cannot name a security group ({s}); use addresses, CIDRs or a prefix list"));
                    }
                } else if s.starts_with("pl-") {
                    if let Some(i) = refs.pls.get(s) {
                        peer = Peer::PrefixList(i);
                        if let Some(pl) = refs.prefix_lists.get(i) {
                            cost = cost.saturating_mul(u64::from(pl.max_entries.max(1)));
                        }
                    } else {
                        self.err(&p.span(), format!("unknown prefix list {s}"));
                    }
                } else {
                    match parse::cidr(s) {
                        Ok(net) => {
                            peer = Peer::Cidr(net);
                            peer_cidr = Some(net);
                        }
                        Err(e) => self.err(&p.span(), e),
                    }
                }
            }
        }
        let mut local = None;
        if let Some(l) = local_field {
            let s = l.get_ref().as_str();
            if s.starts_with("sg-") || s.starts_with("pl-") {
                self.err(
                    &l.span(),
                    format!("the {local_name} of an {dir_name} rule (a quintuple rule) must be an address or CIDR, not {s}"),
                );
            } else {
                match parse::cidr(s) {
                    Ok(net) => {
                        if let Some(p) = peer_cidr {
                            if p.addr().is_ipv4() != net.addr().is_ipv4() {
                                self.err(
                                    &l.span(),
                                    format!(
                                        "{local_name} {net} is {} but {peer_name} {p} is {}; the rule could never match",
                                        family(&net.addr()),
                                        family(&p.addr())
                                    ),
                                );
                            }
                        }
                        local = Some(net);
                    }
                    Err(e) => self.err(&l.span(), e),
                }
            }
        }
        // ICMP is IPv4 only and ICMPv6 IPv6 only: a rule mixing them never matches.
        let want_v4 = match protocol {
            Some(proto::ICMP) => Some(true),
            Some(proto::ICMPV6) => Some(false),
            _ => None,
        };
        if let Some(v4) = want_v4 {
            let checks = [
                (peer_field, peer_name, peer_cidr),
                (local_field, local_name, local),
            ];
            for (field, name, net) in checks {
                if let (Some(field), Some(net)) = (field, net) {
                    if net.addr().is_ipv4() != v4 {
                        let fix = if v4 { "icmpv6" } else { "icmp" };
                        self.err(
                            &field.span(),
                            format!(
                                "protocol {pname} is {} only but {name} {net} is {}; use {fix}",
                                if v4 { "IPv4" } else { "IPv6" },
                                family(&net.addr())
                            ),
                        );
                    }
                }
            }
        }
        let mut source_ports = PortRange::ANY;
        if let Some(sp) = &r.source_port_range {
            match parse::port_range(sp.get_ref()) {
                Ok(spec) if !has_ports => {
                    if spec != PortSpec::Any {
                        self.err(
                            &sp.span(),
                            format!("source_port_range needs protocol tcp or udp, not {pname}"),
                        );
                    }
                }
                Ok(PortSpec::Any) => {}
                Ok(PortSpec::Range(range)) => source_ports = range,
                Err(e) => self.err(&sp.span(), e),
            }
        }
        let rule = Rule {
            direction,
            action,
            priority,
            protocol,
            ports,
            port_list,
            peer,
            local,
            source_ports,
            description: r.description.clone(),
            line,
        };
        (rule, cost)
    }

    fn subnets(&mut self, subnets: &[S<SubnetConfig>], nacl_ids: &Ids<'_>) -> Vec<Subnet> {
        let mut out: Vec<Subnet> = Vec::new();
        // Every CIDR seen so far, for the overlap check.
        let mut nets = CidrSet::default();
        for (index, s) in subnets.iter().enumerate() {
            let s = s.get_ref();
            let id = s.id.get_ref();
            let mut cidrs = Vec::new();
            let errors_before = self.sink.len();
            let fields = [
                (Some(&s.cidr), true, "cidr"),
                (s.ipv6_cidr.as_ref(), false, "ipv6_cidr"),
            ];
            for (field, v4, name) in fields {
                let Some(field) = field else { continue };
                match parse::cidr(field.get_ref()) {
                    Ok(net) if net.addr().is_ipv4() != v4 => {
                        let want = if v4 { "an IPv4" } else { "an IPv6" };
                        self.err(
                            &field.span(),
                            format!("{name} must be {want} CIDR, got {net}"),
                        );
                    }
                    Ok(net) => {
                        if let Some((other, oid)) = nets.overlapping(&net) {
                            self.err(
                                &field.span(),
                                format!("{net} overlaps {other} of subnet {oid}"),
                            );
                        }
                        nets.insert(net, id);
                        cidrs.push(net);
                    }
                    Err(e) => self.err(&field.span(), e),
                }
            }
            if self.sink.len() != errors_before {
                self.broken_subnets.push(index);
            }
            let network_acl = s.network_acl.as_ref().map(|a| self.resolve(nacl_ids, a));
            out.push(Subnet {
                id: id.clone(),
                cidrs,
                network_acl,
            });
        }
        out
    }

    /// Checks an interface's list of security groups: count, duplicates,
    /// one type, rule quota. `what` names the interface ("instance ecs01").
    fn attach_groups(
        &mut self,
        what: &str,
        list: &S<Vec<S<String>>>,
        sg_ids: &Ids<'_>,
        facts: &[GroupFacts],
        min: usize,
    ) -> Vec<usize> {
        let n = list.get_ref().len();
        if n < min {
            self.err(
                &list.span(),
                format!("{what} needs at least one security group"),
            );
        }
        if n > MAX_GROUPS_PER_INTERFACE {
            self.err(&list.span(), format!("{what} has {n} security groups; at most {MAX_GROUPS_PER_INTERFACE} are allowed"));
        }
        let mut out: Vec<usize> = Vec::new();
        let mut first_kind: Option<(GroupTypeConfig, &str)> = None;
        let mut cost = 0u64;
        for g in list.get_ref() {
            let Some(i) = sg_ids.get(g.get_ref()) else {
                self.err(&g.span(), format!("unknown security group {}", g.get_ref()));
                continue;
            };
            if out.contains(&i) {
                self.err(
                    &g.span(),
                    format!("security group {} is listed twice", g.get_ref()),
                );
                continue;
            }
            out.push(i);
            if let Some(f) = facts.get(i) {
                cost = cost.saturating_add(f.cost);
                match first_kind {
                    None => first_kind = Some((f.kind, g.get_ref())),
                    Some((k, first)) if k != f.kind => self.err(
                        &g.span(),
                        format!(
                            "{} is an {} security group but {first} is {}; the groups of one interface must all be basic or all enterprise",
                            g.get_ref(),
                            f.kind.as_str(),
                            k.as_str()
                        )
                        .replace("an basic", "a basic"),
                    ),
                    Some(_) => {}
                }
            }
        }
        if cost > MAX_RULES_PER_INTERFACE {
            self.err(
                &list.span(),
                format!(
                    "the security groups of {what} hold {cost} rules (a rule using a prefix or port list counts its max_entries); at most {MAX_RULES_PER_INTERFACE} are allowed"
                ),
            );
        }
        out
    }

    fn claim(
        &mut self,
        owners: &mut HashMap<IpAddr, Owner>,
        addr: IpAddr,
        span: &Range<usize>,
        what: String,
        lb: bool,
    ) {
        if let Some(o) = owners.get(&addr).filter(|o| !(o.port && lb)) {
            let msg = format!(
                "address {addr} is already used by {} (line {})",
                o.what, o.line
            );
            self.err(span, msg);
        } else {
            let line = self.line(span);
            owners.insert(
                addr,
                Owner {
                    what,
                    line,
                    port: false,
                },
            );
        }
    }

    fn instances(
        &mut self,
        instances: &[S<InstanceConfig>],
        subnet_ids: &Ids<'_>,
        subnets: &[Subnet],
        sg_ids: &Ids<'_>,
        facts: &[GroupFacts],
        owners: &mut HashMap<IpAddr, Owner>,
    ) -> Vec<Instance> {
        let mut out = Vec::new();
        for i in instances {
            let i = i.get_ref();
            let id = i.id.get_ref();
            let subnet = self.resolve(subnet_ids, &i.subnet);
            let subnet_ok = subnet_ids
                .get(i.subnet.get_ref())
                .filter(|s| !self.broken_subnets.contains(s))
                .and_then(|s| subnets.get(s));
            if i.addresses.get_ref().is_empty() {
                self.err(
                    &i.addresses.span(),
                    format!("instance {id} needs at least one address"),
                );
            }
            let mut addresses = Vec::new();
            for a in i.addresses.get_ref() {
                let addr = match parse::address(a.get_ref()) {
                    Ok(addr) => addr,
                    Err(e) => {
                        self.err(&a.span(), e);
                        continue;
                    }
                };
                if let Some(s) = subnet_ok {
                    let same_family: Vec<&IpNet> = s
                        .cidrs
                        .iter()
                        .filter(|n| n.addr().is_ipv4() == addr.is_ipv4())
                        .collect();
                    if same_family.is_empty() {
                        self.err(
                            &a.span(),
                            format!("{addr} is IPv6 but subnet {} has no ipv6_cidr", s.id),
                        );
                    } else if let Some(net) = same_family.iter().find(|n| n.contains(&addr)) {
                        if parse::is_v4_network_or_broadcast(net, addr) {
                            self.err(&a.span(), format!("{addr} is the network or broadcast address of subnet {} ({net})", s.id));
                        }
                    } else {
                        let nets: Vec<String> = same_family.iter().map(|n| n.to_string()).collect();
                        self.err(
                            &a.span(),
                            format!("{addr} is outside subnet {} ({})", s.id, nets.join(", ")),
                        );
                    }
                }
                self.claim(owners, addr, &a.span(), format!("instance {id}"), false);
                addresses.push(addr);
            }
            let security_groups = self.attach_groups(
                &format!("instance {id}"),
                &i.security_groups,
                sg_ids,
                facts,
                1,
            );
            out.push(Instance {
                id: id.clone(),
                subnet,
                addresses,
                security_groups,
            });
        }
        out
    }

    fn health_check(&mut self, h: Option<&S<HealthCheckConfig>>) -> HealthCheck {
        let mut out = HealthCheck::default();
        let Some(h) = h else { return out };
        let h = h.get_ref();
        if let Some(e) = h.enabled {
            out.enabled = e;
        }
        if let Some(p) = &h.protocol {
            out.protocol = match p.get_ref() {
                HealthProtocolConfig::Tcp => HealthProtocol::Tcp,
                HealthProtocolConfig::Http => HealthProtocol::Http,
                HealthProtocolConfig::Udp => HealthProtocol::Udp,
            };
        }
        let is_http = out.protocol == HealthProtocol::Http;
        let pname = h.protocol.as_ref().map_or("tcp", |p| p.get_ref().as_str());
        if let Some(p) = &h.port {
            out.port = Some(self.int(p, "health check port", 1, 65535));
        }
        if let Some(p) = &h.path {
            let s = p.get_ref();
            if !is_http {
                self.err(
                    &p.span(),
                    format!("path applies to http health checks only, not {pname}"),
                );
            } else if !s.starts_with('/') {
                self.err(
                    &p.span(),
                    format!("health check path {s:?} must start with '/'"),
                );
            } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.err(
                    &p.span(),
                    format!(
                        "health check path {s:?} must not contain spaces or control characters"
                    ),
                );
            }
            out.path.clone_from(s);
        }
        if let Some(codes) = &h.expected_codes {
            if !is_http {
                self.err(
                    &codes.span(),
                    format!("expected_codes applies to http health checks only, not {pname}"),
                );
            } else if codes.get_ref().is_empty() {
                self.err(
                    &codes.span(),
                    "expected_codes must list at least one status code",
                );
            }
            out.expected_codes.clear();
            for c in codes.get_ref() {
                match parse::status_codes(c.get_ref()) {
                    Ok(r) => out.expected_codes.push(r),
                    Err(e) => self.err(&c.span(), e),
                }
            }
        }
        if let Some(i) = &h.interval_s {
            out.interval_ms = self.seconds(i, "interval_s");
        }
        if let Some(t) = &h.timeout_s {
            out.timeout_ms = self.seconds(t, "timeout_s");
        }
        if let Some(t) = &h.healthy_threshold {
            out.healthy_threshold = self.int(t, "healthy_threshold", 1, 10);
        }
        if let Some(t) = &h.unhealthy_threshold {
            out.unhealthy_threshold = self.int(t, "unhealthy_threshold", 1, 10);
        }
        out
    }

    fn seconds(&mut self, s: &S<Seconds>, what: &str) -> u32 {
        let v = s.get_ref().0;
        if !(v > 0.0 && v <= MAX_HEALTH_CHECK_S) {
            self.err(&s.span(), format!("{what} must be greater than 0 and at most {MAX_HEALTH_CHECK_S} seconds, got {v}"));
            return 1;
        }
        let ms = (v * 1000.0).round();
        if ms < 1.0 {
            self.err(
                &s.span(),
                format!("{what} must be at least 0.001 seconds, got {v}"),
            );
            return 1;
        }
        // In 1..=300_000 by the checks above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = ms as u32;
        ms
    }

    fn server_group(
        &mut self,
        g: &S<ServerGroupConfig>,
        inst_ids: &Ids<'_>,
        instances: &[Instance],
    ) -> ServerGroup {
        let g = g.get_ref();
        let id = g.id.get_ref();
        let scheduler = match g.scheduler.unwrap_or(SchedulerConfig::Wrr) {
            SchedulerConfig::Wrr => SchedulerKind::Wrr,
            SchedulerConfig::Wlc => SchedulerKind::Wlc,
            SchedulerConfig::Maglev => SchedulerKind::Maglev,
        };
        let health_check = self.health_check(g.health_check.as_ref());
        let mut servers: Vec<Server> = Vec::new();
        let mut seen: HashMap<(String, u16), usize> = HashMap::new();
        self.at_most("servers", &format!(" in server group {id}"), &g.servers);
        for s in &g.servers {
            let span = s.span();
            let s = s.get_ref();
            let port: u16 = self.int(&s.port, "port", 1, 65535);
            let weight: u8 = s
                .weight
                .as_ref()
                .map_or(100, |w| self.int(w, "weight", 0, 100));
            let (name, instance, addresses, key_span) = match (&s.instance, &s.address) {
                (Some(_), Some(a)) => {
                    self.err(&a.span(), "a server takes instance or address, not both");
                    continue;
                }
                (None, None) => {
                    self.err(&span, "a server needs instance = \"…\" or address = \"…\"");
                    continue;
                }
                (Some(i), None) => {
                    let idx = self.resolve(inst_ids, i);
                    let addrs = inst_ids
                        .get(i.get_ref())
                        .and_then(|x| instances.get(x))
                        .map(|x| x.addresses.clone())
                        .unwrap_or_default();
                    (i.get_ref().clone(), Some(idx), addrs, i.span())
                }
                (None, Some(a)) => match parse::address(a.get_ref()) {
                    Ok(addr) => {
                        let name = match addr {
                            IpAddr::V4(v4) => format!("{v4}:{port}"),
                            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                        };
                        (name, None, vec![addr], a.span())
                    }
                    Err(e) => {
                        self.err(&a.span(), e);
                        continue;
                    }
                },
            };
            let key = (
                instance.map_or_else(
                    || {
                        addresses
                            .first()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    },
                    |_| name.clone(),
                ),
                port,
            );
            if let Some(line) = seen.insert(key, self.line(&key_span)) {
                self.err(
                    &key_span,
                    format!(
                        "server {} is already in server group {id} (line {line})",
                        if instance.is_some() {
                            format!("{name} port {port}")
                        } else {
                            name.clone()
                        }
                    ),
                );
            }
            servers.push(Server {
                name,
                instance,
                addresses,
                port,
                weight,
            });
        }
        ServerGroup {
            id: id.clone(),
            scheduler,
            health_check,
            servers,
        }
    }

    fn load_balancers(
        &mut self,
        lbs: &[S<LoadBalancerConfig>],
        refs: &LbRefs<'_, '_>,
        owners: &mut HashMap<IpAddr, Owner>,
        uses: &mut [Vec<ListenerUse>],
    ) -> Vec<LoadBalancer> {
        let mut out = Vec::new();
        for lb in lbs {
            let lb = lb.get_ref();
            let id = lb.id.get_ref();
            if lb.vips.get_ref().is_empty() {
                self.err(
                    &lb.vips.span(),
                    format!("load balancer {id} needs at least one VIP"),
                );
            }
            let mut vips = Vec::new();
            for v in lb.vips.get_ref() {
                match parse::address(v.get_ref()) {
                    Ok(addr) => {
                        self.claim(
                            owners,
                            addr,
                            &v.span(),
                            format!("the vips of load balancer {id}"),
                            true,
                        );
                        vips.push(addr);
                    }
                    Err(e) => self.err(&v.span(), e),
                }
            }
            let security_groups = match &lb.security_groups {
                Some(list) => self.attach_groups(
                    &format!("load balancer {id}"),
                    list,
                    refs.sgs,
                    refs.facts,
                    0,
                ),
                None => Vec::new(),
            };
            let mut local_addresses = Vec::new();
            if let Some(list) = &lb.local_addresses {
                for a in list.get_ref() {
                    match parse::address(a.get_ref()) {
                        Ok(addr) => {
                            self.claim(
                                owners,
                                addr,
                                &a.span(),
                                format!("the local_addresses of load balancer {id}"),
                                true,
                            );
                            local_addresses.push(addr);
                        }
                        Err(e) => self.err(&a.span(), e),
                    }
                }
            }
            let mut listeners = Vec::new();
            let mut seen: HashMap<(bool, u16), (ListenerProtocolConfig, usize)> = HashMap::new();
            self.at_most(
                "listeners",
                &format!(" in load balancer {id}"),
                &lb.listeners,
            );
            for l in &lb.listeners {
                let l = l.get_ref();
                let proto_cfg = *l.protocol.get_ref();
                let port: u16 = self.int(&l.port, "listener port", 1, 65535);
                if port != 0 {
                    let key = (proto_cfg.is_udp(), port);
                    if let Some((other, line)) = seen.get(&key) {
                        let transport = if proto_cfg.is_udp() { "UDP" } else { "TCP" };
                        self.err(
                            &l.port.span(),
                            format!(
                                "{} listener on port {port} conflicts with the {} listener on line {line} (both use {transport} port {port})",
                                proto_cfg.as_str(),
                                other.as_str()
                            ),
                        );
                    } else {
                        seen.insert(key, (proto_cfg, self.line(&l.port.span())));
                    }
                }
                let server_group = self.resolve(refs.sgps, &l.server_group);
                if let Some(u) = refs
                    .sgps
                    .get(l.server_group.get_ref())
                    .and_then(|i| uses.get_mut(i))
                {
                    u.push(ListenerUse {
                        lb: id.clone(),
                        protocol: proto_cfg,
                        port,
                        span: l.server_group.span(),
                    });
                }
                let acl = l.acl.as_ref().map(|a| {
                    let a = a.get_ref();
                    ListenerAcl {
                        mode: match a.mode {
                            AclModeConfig::Whitelist => AclMode::Whitelist,
                            AclModeConfig::Blacklist => AclMode::Blacklist,
                        },
                        prefix_list: self.resolve(refs.pls, &a.prefix_list),
                    }
                });
                let protocol = match proto_cfg {
                    ListenerProtocolConfig::Tcp => ListenerProtocol::Tcp,
                    ListenerProtocolConfig::Udp => ListenerProtocol::Udp,
                    ListenerProtocolConfig::Http => ListenerProtocol::Http,
                    ListenerProtocolConfig::Https => ListenerProtocol::Https,
                    ListenerProtocolConfig::Quic => ListenerProtocol::Quic,
                };
                let transfer_client_ip = l.transfer_client_ip.unwrap_or(false);
                // Can the listener reach each of its servers?
                if let Some(group) = refs
                    .sgps
                    .get(l.server_group.get_ref())
                    .and_then(|i| refs.server_groups.get(i))
                {
                    let usable: &[IpAddr] = if transfer_client_ip {
                        &vips
                    } else {
                        &local_addresses
                    };
                    if !usable.is_empty() {
                        for s in &group.servers {
                            let Some(first) = s.addresses.first() else {
                                continue;
                            };
                            if !s
                                .addresses
                                .iter()
                                .any(|a| usable.iter().any(|u| u.is_ipv4() == a.is_ipv4()))
                            {
                                let fam = family(first);
                                let via = if transfer_client_ip {
                                    "VIP"
                                } else {
                                    "local address"
                                };
                                self.err(
                                    &l.server_group.span(),
                                    format!(
                                        "server {} of server group {} has only {fam} addresses, but load balancer {id} has no {fam} {via} to reach it",
                                        s.name, group.id,
                                    ),
                                );
                            }
                        }
                    }
                }
                let (syn_proxy, syn_proxy_threshold) = self.syn_proxy(l, proto_cfg);
                listeners.push(Listener {
                    protocol,
                    port,
                    server_group,
                    transfer_client_ip,
                    acl,
                    syn_proxy,
                    syn_proxy_threshold,
                });
            }
            // FULLNAT needs a local address of each VIP family in use.
            if !listeners.is_empty() && !listeners.iter().all(|l| l.transfer_client_ip) {
                for fam_v4 in [true, false] {
                    if vips.iter().any(|v| v.is_ipv4() == fam_v4)
                        && !local_addresses.iter().any(|a| a.is_ipv4() == fam_v4)
                    {
                        let fam = if fam_v4 { "IPv4" } else { "IPv6" };
                        let span = lb
                            .local_addresses
                            .as_ref()
                            .map_or_else(|| lb.vips.span(), S::span);
                        self.err(
                            &span,
                            format!(
                                "load balancer {id} has an {fam} VIP but no {fam} local_addresses entry (the source address toward the backends; not needed only when every listener has transfer_client_ip = true)"
                            ),
                        );
                    }
                }
            }
            out.push(LoadBalancer {
                id: id.clone(),
                vips,
                security_groups,
                local_addresses,
                listeners,
            });
        }
        out
    }

    /// Health checks must speak the transport of the listeners they guard.
    /// Without an explicit protocol, a group serving only UDP listeners gets
    /// a UDP check.
    fn health_checks(
        &mut self,
        cfg: &[S<ServerGroupConfig>],
        groups: &mut [ServerGroup],
        uses: &[Vec<ListenerUse>],
    ) {
        for ((c, g), uses) in cfg.iter().zip(groups.iter_mut()).zip(uses) {
            let c = c.get_ref();
            let explicit = c
                .health_check
                .as_ref()
                .and_then(|h| h.get_ref().protocol.as_ref());
            if explicit.is_none() && !uses.is_empty() && uses.iter().all(|u| u.protocol.is_udp()) {
                g.health_check.protocol = HealthProtocol::Udp;
            }
            if !g.health_check.enabled {
                continue;
            }
            let check_udp = g.health_check.protocol == HealthProtocol::Udp;
            let hname = match g.health_check.protocol {
                HealthProtocol::Tcp => "tcp",
                HealthProtocol::Http => "http",
                HealthProtocol::Udp => "udp",
            };
            for u in uses {
                if u.protocol.is_udp() != check_udp {
                    let msg = format!(
                        "server group {} serves {} listener {}:{} but its health check is {hname}; a {} listener needs a {} check{}",
                        g.id,
                        u.protocol.as_str(),
                        u.lb,
                        u.port,
                        if u.protocol.is_udp() { "UDP" } else { "TCP" },
                        if u.protocol.is_udp() { "udp" } else { "tcp or http" },
                        if explicit.is_none() { " (set health_check.protocol, or use separate server groups for TCP and UDP)" } else { "" },
                    );
                    let span = explicit.map_or_else(|| u.span.clone(), S::span);
                    self.err(&span, msg);
                }
            }
        }
    }
}

/// The rules identical to an earlier one (all but description and line),
/// as (index, line of the first such rule), in order. One hash lookup per
/// rule: a group of 200 k rules is checked in milliseconds.
pub(crate) fn duplicate_rules(rules: &[Rule]) -> Vec<(usize, u32)> {
    let mut first: HashMap<RuleIdentity<'_>, u32> = HashMap::with_capacity(rules.len());
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        match first.entry(RuleIdentity::of(r)) {
            std::collections::hash_map::Entry::Occupied(e) => out.push((i, *e.get())),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(r.line);
            }
        }
    }
    out
}

/// What makes two rules the same rule.
#[derive(PartialEq, Eq, Hash)]
struct RuleIdentity<'r> {
    direction: Direction,
    action: Action,
    priority: u8,
    protocol: Option<u8>,
    ports: &'r [PortRange],
    port_list: Option<usize>,
    /// The peer: 0 CIDR, 1 group, 2 prefix list, with its CIDR or index.
    peer: (u8, Option<IpNet>, usize),
    local: Option<IpNet>,
    source_ports: PortRange,
}

impl<'r> RuleIdentity<'r> {
    fn of(r: &'r Rule) -> Self {
        RuleIdentity {
            direction: r.direction,
            action: r.action,
            priority: r.priority,
            protocol: r.protocol,
            ports: &r.ports,
            port_list: r.port_list,
            peer: match r.peer {
                Peer::Cidr(n) => (0, Some(n), 0),
                Peer::Group(i) => (1, None, i),
                Peer::PrefixList(i) => (2, None, i),
            },
            local: r.local,
            source_ports: r.source_ports,
        }
    }
}

/// CIDRs, to find one that overlaps a new CIDR (contains it or lies in it)
/// in logarithmic time rather than by a scan of all.
#[derive(Default)]
pub(crate) struct CidrSet<'a> {
    /// (IPv6, network address, prefix length) → the CIDR and its owner.
    nets: BTreeMap<(bool, u128, u8), (IpNet, &'a str)>,
}

impl<'a> CidrSet<'a> {
    fn key(net: &IpNet) -> (bool, u128, u8) {
        match net {
            IpNet::V4(n) => (false, u128::from(u32::from(n.network())), n.prefix_len()),
            IpNet::V6(n) => (true, u128::from(n.network()), n.prefix_len()),
        }
    }

    pub(crate) fn insert(&mut self, net: IpNet, owner: &'a str) {
        self.nets.entry(Self::key(&net)).or_insert((net, owner));
    }

    /// A CIDR of the set that overlaps `net`: one containing it (a
    /// shorter or equal prefix of it), else one inside it.
    pub(crate) fn overlapping(&self, net: &IpNet) -> Option<(IpNet, &'a str)> {
        let containing = (0..=net.prefix_len()).find_map(|len| {
            let outer = IpNet::new(net.network(), len).ok()?.trunc();
            self.nets.get(&Self::key(&outer))
        });
        let (v6, lo, _) = Self::key(net);
        let hi = match net {
            IpNet::V4(n) => u128::from(u32::from(n.broadcast())),
            IpNet::V6(n) => u128::from(n.broadcast()),
        };
        containing
            .or_else(|| {
                self.nets
                    .range((v6, lo, 0)..=(v6, hi, u8::MAX))
                    .next()
                    .map(|(_, v)| v)
            })
            .copied()
    }
}

struct RuleRefs<'r, 'c> {
    sgs: &'r Ids<'c>,
    pls: &'r Ids<'c>,
    prls: &'r Ids<'c>,
    prefix_lists: &'r [PrefixList],
    port_lists: &'r [PortList],
}

struct LbRefs<'r, 'c> {
    sgs: &'r Ids<'c>,
    facts: &'r [GroupFacts],
    sgps: &'r Ids<'c>,
    pls: &'r Ids<'c>,
    server_groups: &'r [ServerGroup],
}
