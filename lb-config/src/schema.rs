//! The TOML schema: serde structs that mirror `CONFIG.md` one to one.
//!
//! ```
//! use lb_config::schema::{ProtocolConfig, RuleConfig};
//!
//! let rule: RuleConfig = toml::from_str(
//!     "direction = \"ingress\"\naction = \"deny\"\nprotocol = \"tcp\"\nport_range = \"81/81\"\nsource = \"0.0.0.0/0\"",
//! )
//! .expect("a valid rule");
//! assert_eq!(rule.protocol.get_ref().resolve(), Ok(ProtocolConfig(Some(6))));
//! assert_eq!(rule.port_range.map(|p| p.into_inner()), Some("81/81".to_string()));
//! ```
//!
//! These structs only check the shape of the file; [`crate::parse_str`]
//! validates the values and resolves ids.
//!
//! Values that validation may complain about are wrapped in
//! [`toml::Spanned`] so that every diagnostic carries a position. Numbers
//! with limits are read as `i64` so that an out-of-range value gets our own
//! message ("priority must be 1..=100, got 0") rather than a serde type error.
//! Defaults are applied when compiling (see `compile/`), so that an absent
//! value and an explicit one can be told apart where it matters.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// `Spanned<T>`, shortened.
pub(crate) type S<T> = Spanned<T>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub platform: Option<S<PlatformConfig>>,
    pub dataplane: Option<S<DataplaneConfig>>,
    #[serde(default, rename = "port")]
    pub ports: Vec<S<PortConfig>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<S<RouteConfig>>,
    #[serde(default, rename = "prefix_list")]
    pub prefix_lists: Vec<S<PrefixListConfig>>,
    #[serde(default, rename = "port_list")]
    pub port_lists: Vec<S<PortListConfig>>,
    #[serde(default, rename = "security_group")]
    pub security_groups: Vec<S<SecurityGroupConfig>>,
    #[serde(default, rename = "network_acl")]
    pub network_acls: Vec<S<NetworkAclConfig>>,
    #[serde(default, rename = "subnet")]
    pub subnets: Vec<S<SubnetConfig>>,
    #[serde(default, rename = "instance")]
    pub instances: Vec<S<InstanceConfig>>,
    #[serde(default, rename = "server_group")]
    pub server_groups: Vec<S<ServerGroupConfig>>,
    #[serde(default, rename = "load_balancer")]
    pub load_balancers: Vec<S<LoadBalancerConfig>>,
    /// `[cluster]`: this node's place in a cluster announcing the VIPs
    /// over BGP.
    pub cluster: Option<S<ClusterConfig>>,
}

/// `[cluster]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub node_id: S<i64>,
    pub nodes: S<i64>,
    pub asn: S<i64>,
    pub bird_config: Option<S<String>>,
    pub bird_socket: Option<S<String>>,
    pub hold_time_s: Option<S<i64>>,
    pub keepalive_s: Option<S<i64>>,
    pub bfd: Option<bool>,
    pub bfd_interval_ms: Option<S<i64>>,
    pub bfd_multiplier: Option<S<i64>>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<S<ClusterPeerConfig>>,
}

/// `[[cluster.peer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPeerConfig {
    pub address: S<String>,
    pub asn: S<i64>,
    pub port: S<String>,
}

/// `[platform]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    pub backend_sg_policy: Option<BackendSgPolicyConfig>,
    pub session_timeout_s: Option<S<i64>>,
    pub restrict_smtp: Option<bool>,
    pub metadata_address: Option<S<String>>,
    /// Idle timeout of a session no reply has come for.
    pub unreplied_timeout_s: Option<S<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendSgPolicyConfig {
    Bypass,
    Enforce,
}

/// `[dataplane]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    pub io: Option<S<IoConfig>>,
    pub workers: Option<S<i64>>,
    pub cores: Option<S<Vec<S<i64>>>>,
    pub eal_args: Option<S<Vec<String>>>,
    pub idle: Option<IdleConfig>,
    /// IPv4 sessions per worker.
    pub max_sessions: Option<S<i64>>,
    /// IPv6 sessions per worker.
    pub max_sessions_v6: Option<S<i64>>,
    /// Bound of the session tables' memory estimate, in MiB.
    pub max_memory_mib: Option<S<i64>>,
    /// Answer TCP segments to a listener without a session with a RST.
    pub reset_unknown: Option<bool>,
    /// RSTs per second per worker for `reset_unknown`.
    pub reset_unknown_rate: Option<S<i64>>,
    /// `[dataplane.fragments]`: IP fragments without reassembly.
    pub fragments: Option<S<FragmentsConfig>>,
    /// Frames per direction of each port's exception path.
    pub exception_queue: Option<S<i64>>,
}

/// `[dataplane.fragments]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FragmentsConfig {
    /// Forward the later fragments of forwarded first fragments.
    pub forward: Option<bool>,
    /// Fragment table entries per worker.
    pub table: Option<S<i64>>,
    /// Lifetime of an entry, in milliseconds.
    pub timeout_ms: Option<S<i64>>,
    /// Fragments held per worker while their first fragment is missing.
    pub hold: Option<S<i64>>,
    /// How long such a fragment is held, in milliseconds.
    pub hold_ms: Option<S<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoConfig {
    AfPacket,
    Dpdk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleConfig {
    Busy,
    Adaptive,
}

/// `[[port]]`: a network port the data plane owns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub name: S<String>,
    pub interface: Option<S<String>>,
    pub dpdk_port: Option<S<i64>>,
    #[serde(default)]
    pub addresses: Vec<S<String>>,
    pub source_check: Option<SourceCheckConfig>,
    pub vlan: Option<S<i64>>,
    pub max_neighbors: Option<S<i64>>,
    /// The TAP interface of the port's exception path.
    pub tap: Option<S<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceCheckConfig {
    Strict,
    Loose,
    Off,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub destination: S<String>,
    pub via: Option<S<String>>,
    pub port: S<String>,
}

/// `[[prefix_list]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixListConfig {
    pub id: S<String>,
    pub max_entries: S<i64>,
    #[serde(default)]
    pub entries: Vec<S<String>>,
}

/// `[[port_list]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortListConfig {
    pub id: S<String>,
    pub max_entries: S<i64>,
    #[serde(default)]
    pub entries: Vec<S<String>>,
}

/// `[[security_group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupConfig {
    pub id: S<String>,
    #[serde(rename = "type")]
    pub kind: Option<S<GroupTypeConfig>>,
    pub internal_access: Option<S<InternalAccessConfig>>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<S<RuleConfig>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupTypeConfig {
    Basic,
    Enterprise,
}

impl GroupTypeConfig {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupTypeConfig::Basic => "basic",
            GroupTypeConfig::Enterprise => "enterprise",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InternalAccessConfig {
    Accept,
    Drop,
}

/// `[[security_group.rule]]` and `[[network_acl.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub direction: S<DirectionConfig>,
    pub action: S<ActionConfig>,
    pub priority: Option<S<i64>>,
    pub protocol: S<ProtocolValue>,
    pub port_range: Option<S<String>>,
    pub port_list: Option<S<String>>,
    pub source: Option<S<String>>,
    pub destination: Option<S<String>>,
    pub source_port_range: Option<S<String>>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectionConfig {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionConfig {
    Allow,
    Deny,
}

/// A rule's protocol: a name or an IANA number (TOML integer or string).
/// `None` is "all".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolConfig(pub Option<u8>);

const PROTOCOL_EXPECTED: &str =
    "tcp, udp, icmp, icmpv6, gre, all or an IANA protocol number 0..=255";

impl ProtocolConfig {
    fn from_number<E: de::Error>(n: i128) -> Result<Self, E> {
        u8::try_from(n)
            .map(|p| ProtocolConfig(Some(p)))
            .map_err(|_| {
                E::custom(format!(
                    "protocol number {n} is out of range; expected {PROTOCOL_EXPECTED}"
                ))
            })
    }

    fn from_name<E: de::Error>(s: &str) -> Result<Self, E> {
        use lb_core::model::proto;
        let p = match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Some(proto::TCP),
            "udp" => Some(proto::UDP),
            "icmp" | "icmpv4" => Some(proto::ICMP),
            "icmpv6" => Some(proto::ICMPV6),
            "gre" => Some(proto::GRE),
            "all" => None,
            other => match other.parse::<i128>() {
                Ok(n) => return Self::from_number(n),
                Err(_) => {
                    return Err(E::custom(format!(
                        "unknown protocol `{s}`; expected {PROTOCOL_EXPECTED}"
                    )))
                }
            },
        };
        Ok(ProtocolConfig(p))
    }
}

/// A rule's protocol as written. It is resolved when the file is compiled
/// ([`ProtocolValue::resolve`]), so that an unknown name is reported with
/// every other problem of the file rather than stopping the check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ProtocolValue {
    Number(i64),
    Name(String),
}

impl ProtocolValue {
    /// The protocol, or the message explaining why it is none.
    pub fn resolve(&self) -> Result<ProtocolConfig, String> {
        let r: Result<ProtocolConfig, de::value::Error> = match self {
            ProtocolValue::Number(n) => ProtocolConfig::from_number(i128::from(*n)),
            ProtocolValue::Name(s) => ProtocolConfig::from_name(s),
        };
        r.map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for ProtocolConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ProtocolConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PROTOCOL_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                ProtocolConfig::from_number(i128::from(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ProtocolConfig::from_number(i128::from(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ProtocolConfig::from_name(v)
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[network_acl]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAclConfig {
    pub id: S<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<S<RuleConfig>>,
}

/// `[[subnet]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    pub id: S<String>,
    pub cidr: S<String>,
    pub ipv6_cidr: Option<S<String>>,
    pub network_acl: Option<S<String>>,
}

/// `[[instance]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub id: S<String>,
    pub subnet: S<String>,
    pub addresses: S<Vec<S<String>>>,
    pub security_groups: S<Vec<S<String>>>,
}

/// `[[server_group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerGroupConfig {
    pub id: S<String>,
    pub scheduler: Option<SchedulerConfig>,
    pub health_check: Option<S<HealthCheckConfig>>,
    /// Seconds a server that comes up takes to reach its weight.
    pub slow_start_s: Option<S<Seconds>>,
    /// Seconds a draining server's sessions go on before they are ended.
    pub drain_timeout_s: Option<S<Seconds>>,
    #[serde(default, rename = "server")]
    pub servers: Vec<S<ServerConfig>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerConfig {
    Wrr,
    Wlc,
    Maglev,
}

/// `[server_group.health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub enabled: Option<bool>,
    pub protocol: Option<S<HealthProtocolConfig>>,
    pub port: Option<S<i64>>,
    pub path: Option<S<String>>,
    pub expected_codes: Option<S<Vec<S<String>>>>,
    pub interval_s: Option<S<Seconds>>,
    pub timeout_s: Option<S<Seconds>>,
    pub healthy_threshold: Option<S<i64>>,
    pub unhealthy_threshold: Option<S<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthProtocolConfig {
    Tcp,
    Http,
    Udp,
}

impl HealthProtocolConfig {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthProtocolConfig::Tcp => "tcp",
            HealthProtocolConfig::Http => "http",
            HealthProtocolConfig::Udp => "udp",
        }
    }
}

/// A duration in seconds, written as a TOML integer or float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds (integer or float)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                // Precision loss only beyond 2^53 s, far outside any limit.
                Ok(Seconds(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Seconds(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[server_group.server]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub instance: Option<S<String>>,
    pub address: Option<S<String>>,
    pub port: S<i64>,
    pub weight: Option<S<i64>>,
    pub state: Option<ServerStateConfig>,
}

/// `state` of a `[[server_group.server]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerStateConfig {
    /// Takes new sessions (the default).
    Active,
    /// No new sessions; the open ones go on.
    Draining,
}

/// `[[load_balancer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    pub id: S<String>,
    pub vips: S<Vec<S<String>>>,
    pub security_groups: Option<S<Vec<S<String>>>>,
    pub local_addresses: Option<S<Vec<S<String>>>>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<S<ListenerConfig>>,
}

/// `[[load_balancer.listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub protocol: S<ListenerProtocolConfig>,
    pub port: S<i64>,
    pub server_group: S<String>,
    pub transfer_client_ip: Option<bool>,
    pub acl: Option<S<ListenerAclConfig>>,
    pub syn_proxy: Option<S<SynProxyConfig>>,
    pub syn_proxy_threshold: Option<S<i64>>,
    /// Sessions open at once, across workers.
    pub max_connections: Option<S<i64>>,
    /// New sessions per second, across workers.
    pub max_new_connections_per_s: Option<S<i64>>,
    /// A line per session in a file.
    pub access_log: Option<S<AccessLogConfig>>,
}

/// A listener's `access_log = { path = …, format = "json", on_start = … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    pub path: S<String>,
    /// Only `"json"` (the default) for now.
    pub format: Option<S<String>>,
    pub on_start: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynProxyConfig {
    Off,
    On,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocolConfig {
    Tcp,
    Udp,
    Http,
    Https,
    Quic,
}

impl ListenerProtocolConfig {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocolConfig::Tcp => "tcp",
            ListenerProtocolConfig::Udp => "udp",
            ListenerProtocolConfig::Http => "http",
            ListenerProtocolConfig::Https => "https",
            ListenerProtocolConfig::Quic => "quic",
        }
    }

    /// True for listeners carried over UDP.
    pub fn is_udp(self) -> bool {
        matches!(
            self,
            ListenerProtocolConfig::Udp | ListenerProtocolConfig::Quic
        )
    }
}

/// A listener's `acl = { mode = …, prefix_list = … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerAclConfig {
    pub mode: AclModeConfig,
    pub prefix_list: S<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclModeConfig {
    Whitelist,
    Blacklist,
}
