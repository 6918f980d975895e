//! Semantic validation and compilation of a [`FileConfig`] into
//! [`lb_core::model::Config`]. Every problem is reported; compilation goes
//! on with placeholder values after an error so that later checks still run.
//!
//! Here: the id tables, the order of the whole compilation
//! ([`Compiler::compile`]), the platform and data plane sections. The
//! parts: `network.rs` (ports, routes, subnets, instances, address
//! claims), `rules.rs` (prefix and port lists, security groups, network
//! ACLs, rules), `balancers.rs` (server groups, health checks, load
//! balancers and listeners).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use lb_core::model::{
    proto, AccessLog, AccessLogFormat, AclMode, Action, BackendSgPolicy, Config, Dataplane,
    Direction, Fragments, GroupKind, HealthCheck, HealthProtocol, IdlePolicy, Instance, IoBackend,
    Listener, ListenerAcl, ListenerLimits, ListenerProtocol, LoadBalancer, NetworkAcl, Peer,
    Platform, Port, PortList, PortRange, PrefixList, Route, Rule, SchedulerKind, SecurityGroup,
    Server, ServerGroup, SourceCheck, Subnet, SynProxyMode, DEFAULT_SYN_PROXY_THRESHOLD,
};

use crate::error::Sink;
use crate::parse::{self, PortSpec};
use crate::schema::*;

mod balancers;
mod cluster;
mod network;
mod rules;

#[cfg(test)]
pub(crate) use network::CidrSet;
#[cfg(test)]
pub(crate) use rules::duplicate_rules;

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
/// A listener's `max_connections` upper bound.
const MAX_LISTENER_CONNECTIONS: i64 = 100_000_000;
/// A listener's `max_new_connections_per_s` upper bound.
const MAX_LISTENER_CPS: i64 = 10_000_000;
/// A listener's `access_log.path` upper bound, in bytes (Linux's
/// `PATH_MAX` less its NUL).
const MAX_ACCESS_LOG_PATH: usize = 4095;
/// `dataplane.fragments.table` upper bound (entries per worker).
const MAX_FRAGMENT_TABLE: i64 = 1 << 20;
/// `dataplane.fragments.timeout_ms` upper bound (a minute).
const MAX_FRAGMENT_TIMEOUT_MS: i64 = 60_000;
/// `dataplane.fragments.hold` upper bound (fragments per worker).
const MAX_FRAGMENT_HOLD: i64 = 4096;
/// `dataplane.exception_queue` upper bound (frames per direction and port).
const MAX_EXCEPTION_QUEUE: i64 = 65536;
/// `dataplane.workers` upper bound.
pub const MAX_WORKERS: i64 = 64;
/// Health check interval and timeout upper bound, in seconds.
pub const MAX_HEALTH_CHECK_S: f64 = 300.0;

/// The longest `slow_start_s` of a server group.
pub const MAX_SLOW_START_S: f64 = 3600.0;

/// The longest `drain_timeout_s` of a server group (a day).
pub const MAX_DRAIN_TIMEOUT_S: f64 = 86_400.0;

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
        let cluster = f
            .cluster
            .as_ref()
            .and_then(|c| self.cluster(c, &port_ids, &ports, &dataplane, &owners));

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
            cluster,
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
        if let Some(q) = &d.exception_queue {
            out.exception_queue = self.int(q, "exception_queue", 16, MAX_EXCEPTION_QUEUE);
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

/// Where a server group is used, for the health check checks.
struct ListenerUse {
    lb: String,
    protocol: ListenerProtocolConfig,
    port: u16,
    span: Range<usize>,
}
