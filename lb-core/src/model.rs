//! The validated configuration as lb-core sees it: plain data with ids
//! resolved to indices. `lb-config` builds it from TOML (and has already
//! checked every limit); [`crate::pipeline::Snapshot::compile`] turns it into
//! the immutable runtime form the workers use.
//!
//! Indices (`usize` fields named after a kind) point into the matching `Vec`
//! of [`Config`].

use std::net::IpAddr;

use ipnet::IpNet;

/// Which traffic direction a rule governs, seen from the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Deny sorts before allow: at equal priority deny wins.
    Deny,
    Allow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Allow => "allow",
        }
    }
}

/// An inclusive port range; `PortRange::ANY` is `-1/-1` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    pub const fn new(lo: u16, hi: u16) -> PortRange {
        PortRange { lo, hi }
    }

    pub const fn single(port: u16) -> PortRange {
        PortRange { lo: port, hi: port }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    pub fn is_any(&self) -> bool {
        *self == PortRange::ANY
    }
}

/// The authorization object of a rule (source of ingress rules,
/// destination of egress rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// An address or CIDR (an address is a /32 or /128).
    Cidr(IpNet),
    /// The private addresses of the members of a security group.
    Group(usize),
    /// The entries of a prefix list.
    PrefixList(usize),
}

/// One rule of a security group or of a network ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub direction: Direction,
    pub action: Action,
    /// 1..=100, smaller wins.
    pub priority: u8,
    /// IANA protocol number; `None` = all protocols.
    pub protocol: Option<u8>,
    /// Destination ports: one range, or the entries of a port list.
    /// `[PortRange::ANY]` for protocols other than TCP and UDP.
    pub ports: Vec<PortRange>,
    /// Set when the ports come from a port list (for messages and quotas).
    pub port_list: Option<usize>,
    pub peer: Peer,
    /// Quintuple rules: the other address (destination of an ingress rule,
    /// source of an egress rule). `None` = any.
    pub local: Option<IpNet>,
    /// Quintuple rules: source ports. `PortRange::ANY` when not given.
    pub source_ports: PortRange,
    pub description: String,
    /// 1-based line of the rule in its configuration file (0 if unknown).
    pub line: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Ingress denied and egress allowed by default; members reach each
    /// other when `internal_access` is true.
    Basic { internal_access: bool },
    /// Ingress and egress denied by default; members are isolated.
    Enterprise,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub kind: GroupKind,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixList {
    pub id: String,
    pub max_entries: u32,
    pub entries: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList {
    pub id: String,
    pub max_entries: u32,
    pub entries: Vec<PortRange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAcl {
    pub id: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    /// The IPv4 CIDR and, when given, the IPv6 CIDR.
    pub cidrs: Vec<IpNet>,
    pub network_acl: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub subnet: usize,
    pub addresses: Vec<IpAddr>,
    pub security_groups: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// Smooth weighted round-robin.
    Wrr,
    /// Weighted least-connections.
    Wlc,
    /// Maglev consistent hashing.
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthProtocol {
    Tcp,
    Http,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub enabled: bool,
    pub protocol: HealthProtocol,
    /// `None` = each server's own port.
    pub port: Option<u16>,
    pub path: String,
    /// Inclusive status-code ranges ("2xx" = 200..=299).
    pub expected_codes: Vec<(u16, u16)>,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            enabled: true,
            protocol: HealthProtocol::Tcp,
            port: None,
            path: "/".to_string(),
            expected_codes: vec![(200, 299), (300, 399)],
            interval_ms: 2000,
            timeout_ms: 2000,
            healthy_threshold: 3,
            unhealthy_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// How messages name it: the instance id, or `address:port`.
    pub name: String,
    pub instance: Option<usize>,
    /// The server's addresses (an instance's, or the one given).
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    /// 0..=100; 0 = no new connections.
    pub weight: u8,
    /// Draining by configuration: no new sessions, the open ones go on
    /// (until the group's `drain_timeout_ms`, if any).
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerGroup {
    pub id: String,
    pub scheduler: SchedulerKind,
    pub health_check: HealthCheck,
    pub servers: Vec<Server>,
    /// How long a server that comes up (health check passes again, drain
    /// ends, added by a reload) takes to ramp its weight from a small
    /// value to the configured one (0: no slow start; see
    /// [`crate::sched::slow_start`]).
    pub slow_start_ms: u32,
    /// How long a draining server's sessions go on before they are ended
    /// (`None`: until they end by themselves).
    pub drain_timeout_ms: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    Tcp,
    Udp,
    Http,
    Https,
    Quic,
}

impl ListenerProtocol {
    /// The IP protocol number the listener receives.
    pub fn ip_protocol(self) -> u8 {
        match self {
            ListenerProtocol::Tcp | ListenerProtocol::Http | ListenerProtocol::Https => 6,
            ListenerProtocol::Udp | ListenerProtocol::Quic => 17,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclMode {
    Whitelist,
    Blacklist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerAcl {
    pub mode: AclMode,
    pub prefix_list: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub protocol: ListenerProtocol,
    pub port: u16,
    pub server_group: usize,
    pub transfer_client_ip: bool,
    pub acl: Option<ListenerAcl>,
    /// When the listener answers SYNs itself with SYN cookies (TCP
    /// listeners).
    pub syn_proxy: SynProxyMode,
    /// Under [`SynProxyMode::Auto`], the half-open sessions of a worker at
    /// which the proxy engages (it disengages below half as many).
    pub syn_proxy_threshold: u32,
    /// Concurrent and new sessions the listener takes at most.
    pub limits: ListenerLimits,
    /// Where a line about each session goes, if anywhere.
    pub access_log: Option<AccessLog>,
}

/// A listener's session log: one line per session when it ends (and, with
/// `on_start`, one when it starts). The data plane writes it; the pipeline
/// only says what happened ([`crate::pipeline::SessionRecord`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// The file (absolute), opened for appending.
    pub path: String,
    pub format: AccessLogFormat,
    /// Also a line when a session starts.
    pub on_start: bool,
}

/// How an access log's lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
}

/// A listener's capacity, like a cloud load balancer's instance
/// specification: beyond it, new sessions are refused (their opening
/// packet dropped and counted as `listener_limit`); open ones go on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Sessions open at once, across all workers.
    pub max_connections: Option<u32>,
    /// New sessions per second, across all workers.
    pub max_new_connections_per_s: Option<u32>,
}

impl ListenerLimits {
    pub fn is_limited(&self) -> bool {
        self.max_connections.is_some() || self.max_new_connections_per_s.is_some()
    }
}

/// A listener's SYN proxy (see [`crate::synproxy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynProxyMode {
    /// Every SYN opens a session (early drop still bounds a flood).
    Off,
    /// Every SYN is answered with a cookie.
    On,
    /// Cookies while a worker holds many half-open sessions.
    #[default]
    Auto,
}

/// The default [`Listener::syn_proxy_threshold`].
pub const DEFAULT_SYN_PROXY_THRESHOLD: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub id: String,
    pub vips: Vec<IpAddr>,
    pub security_groups: Vec<usize>,
    pub local_addresses: Vec<IpAddr>,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendSgPolicy {
    /// Traffic a load balancer forwards to its backends (listener traffic,
    /// health checks) skips the backends' security groups and network ACLs.
    Bypass,
    /// It is checked, except for `transfer_client_ip` listeners, and network
    /// ACLs except when the load balancer sits in the backend's subnet.
    Enforce,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub backend_sg_policy: BackendSgPolicy,
    pub session_timeout_s: u32,
    pub restrict_smtp: bool,
    pub metadata_address: IpAddr,
    /// The most a session lives idle before its first reply (conntrack's
    /// unreplied timeout), capped at `session_timeout_s`.
    pub unreplied_timeout_s: u32,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            backend_sg_policy: BackendSgPolicy::Bypass,
            session_timeout_s: 910,
            restrict_smtp: true,
            metadata_address: IpAddr::from([100, 100, 100, 200]),
            unreplied_timeout_s: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    AfPacket,
    Dpdk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Spin without pause.
    Busy,
    /// Back off to short sleeps when there is no traffic.
    Adaptive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    pub io: IoBackend,
    pub workers: u16,
    pub cores: Vec<u16>,
    pub eal_args: Vec<String>,
    pub idle: IdlePolicy,
    /// IPv4 sessions each worker can hold (its table is allocated at
    /// start).
    pub max_sessions: usize,
    /// IPv6 sessions each worker can hold (a table of their own).
    pub max_sessions_v6: usize,
    /// A TCP segment to a listener without a session (other than a SYN or
    /// a RST) is answered with a RST, as a host with no such connection
    /// does (RFC 9293 §3.10.7.1): clients of a restarted data plane learn
    /// at once that their connections are gone.
    pub reset_unknown: bool,
    /// At most this many such RSTs per second and worker (a token bucket
    /// holding one second's worth).
    pub reset_unknown_rate: u32,
    /// How non-first IP fragments are handled.
    pub fragments: Fragments,
    /// Frames each direction of a port's exception path holds (to the
    /// kernel, from the kernel); beyond, frames are dropped and counted.
    pub exception_queue: usize,
}

/// IP fragments without reassembly: the first fragment (it holds the L4
/// header) is decided like any packet; its verdict and translation are
/// kept in a per-worker table for the fragments that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragments {
    /// Forward the fragments of allowed packets (else every non-first
    /// fragment is dropped).
    pub forward: bool,
    /// Entries of each worker's fragment table (a power of two).
    pub table: usize,
    /// How long an entry lives after its first fragment, in milliseconds.
    pub timeout_ms: u32,
    /// Fragments each worker holds while their first fragment has not
    /// arrived (0: none, they are dropped at once).
    pub hold: usize,
    /// How long such a fragment is held, in milliseconds.
    pub hold_ms: u32,
}

impl Default for Fragments {
    fn default() -> Self {
        Fragments {
            forward: true,
            table: 4096,
            timeout_ms: 2000,
            hold: 64,
            hold_ms: 100,
        }
    }
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            io: IoBackend::AfPacket,
            workers: 1,
            cores: Vec::new(),
            eal_args: Vec::new(),
            idle: IdlePolicy::Adaptive,
            max_sessions: 1 << 20,
            max_sessions_v6: 1 << 18,
            reset_unknown: true,
            reset_unknown_rate: 1000,
            fragments: Fragments::default(),
            exception_queue: Dataplane::DEFAULT_EXCEPTION_QUEUE,
        }
    }
}

impl Dataplane {
    /// The default of [`Dataplane::exception_queue`].
    pub const DEFAULT_EXCEPTION_QUEUE: usize = 1024;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// AF_PACKET: the kernel interface.
    pub interface: Option<String>,
    /// DPDK: the ethdev port id.
    pub dpdk_port: Option<u16>,
    /// The data plane's own addresses on this link, with their prefix
    /// length (host bits are the address itself).
    pub addresses: Vec<IpNet>,
    /// How the sources of packets arriving on this port are validated.
    pub source_check: SourceCheck,
    /// The 802.1Q VLAN (1..=4094) the port's frames carry, in and out;
    /// `None`: the port is untagged and drops tagged frames.
    pub vlan: Option<u16>,
    /// The most neighbour entries (resolved or being resolved) kept for
    /// this link, like Linux's `gc_thresh3`.
    pub max_neighbors: u32,
    /// The kernel TAP interface of the port's exception path: frames for
    /// the port's own addresses that the data plane does not serve go up
    /// to it, and what the kernel sends through it leaves by the port.
    pub tap: Option<String>,
}

impl Port {
    /// The default of [`Port::max_neighbors`] (Linux's `gc_thresh3`).
    pub const DEFAULT_MAX_NEIGHBORS: u32 = 1024;
}

/// Source validation of a port (reverse-path filtering, as Linux's
/// `rp_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceCheck {
    /// The source must route back through the port it arrived on
    /// (`rp_filter=1`, cloud anti-spoofing).
    #[default]
    Strict,
    /// The source must be routable through some port (`rp_filter=2`).
    Loose,
    /// No check.
    Off,
}

impl SourceCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceCheck::Strict => "strict",
            SourceCheck::Loose => "loose",
            SourceCheck::Off => "off",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    pub via: Option<IpAddr>,
    pub port: usize,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub platform: Platform,
    pub dataplane: Dataplane,
    pub ports: Vec<Port>,
    pub routes: Vec<Route>,
    pub prefix_lists: Vec<PrefixList>,
    pub port_lists: Vec<PortList>,
    pub security_groups: Vec<SecurityGroup>,
    pub network_acls: Vec<NetworkAcl>,
    pub subnets: Vec<Subnet>,
    pub instances: Vec<Instance>,
    pub server_groups: Vec<ServerGroup>,
    pub load_balancers: Vec<LoadBalancer>,
    /// This node's place in a cluster of load balancers; `None`: a single
    /// node.
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: several nodes announce the same VIPs over BGP and the
/// upstream routers spread flows over them (ECMP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This node, `1..=nodes`.
    pub node_id: u16,
    /// How many nodes share the VIPs: node `i` uses slice `i` of each
    /// local address's ports.
    pub nodes: u16,
    /// This node's autonomous system.
    pub asn: u32,
    /// The file the routing daemon includes, which lbd writes.
    pub bird_config: String,
    /// The routing daemon's control socket (`birdc -s`).
    pub bird_socket: String,
    pub hold_time_s: u16,
    pub keepalive_s: u16,
    pub bfd: bool,
    pub bfd_interval_ms: u32,
    pub bfd_multiplier: u8,
    pub peers: Vec<ClusterPeer>,
}

impl Cluster {
    pub const DEFAULT_BIRD_CONFIG: &'static str = "/run/lbd/bird-lbd.conf";
    pub const DEFAULT_BIRD_SOCKET: &'static str = "/run/bird/bird.ctl";
    pub const DEFAULT_HOLD_TIME_S: u16 = 3;
    pub const DEFAULT_KEEPALIVE_S: u16 = 1;
    pub const DEFAULT_BFD_INTERVAL_MS: u32 = 100;
    pub const DEFAULT_BFD_MULTIPLIER: u8 = 3;
}

/// `[[cluster.peer]]`: an upstream router this node speaks BGP with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPeer {
    pub address: IpAddr,
    pub asn: u32,
    /// The port (index into [`Config::ports`]) the peer is behind.
    pub port: usize,
    /// This node's address on the peer's link (one of the port's).
    pub local: IpAddr,
}

/// Well-known IANA protocol numbers.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
}
