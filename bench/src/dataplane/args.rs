//! The command lines of `bench dataplane` and `bench dataplane-traffic`.

use super::*;

/// Arguments of `bench dataplane`.
#[derive(Debug, Clone, Args)]
pub struct DataplaneArgs {
    /// Worker counts to measure (lbd workers, testpmd forwarding cores).
    #[arg(long, value_delimiter = ',', default_values_t = [1u16, 2])]
    pub workers: Vec<u16>,
    /// Length of each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Established flows.
    #[arg(long, default_value_t = 4096)]
    pub flows: usize,
    /// Phases measured through lbd (est, new, deny, lat; lat after est).
    #[arg(long, value_delimiter = ',', default_values_t = ["est".to_string(), "new".into(), "deny".into(), "lat".into()])]
    pub phases: Vec<String>,
    /// The lbd binary, built with the dpdk feature (default: next to this
    /// binary).
    #[arg(long)]
    pub lbd: Option<PathBuf>,
    /// The lbctl binary (default: next to this binary).
    #[arg(long)]
    pub lbctl: Option<PathBuf>,
    /// The reference forwarder.
    #[arg(long, default_value = "dpdk-testpmd")]
    pub testpmd: PathBuf,
    /// Skip the testpmd reference.
    #[arg(long)]
    pub no_reference: bool,
    /// CPU of the traffic process (lbd's single worker and testpmd's single
    /// forwarding core take another).
    #[arg(long, default_value_t = 0)]
    pub gen_cpu: u16,
    /// Upper bound of each device run (start, warm-up, phases, stop).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub max_time: Duration,
    /// lbd's IPv4 sessions per worker (`max_sessions`): the new-connection
    /// phase needs room for all it opens (millions a second, for
    /// `--duration`).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_sessions: usize,
    /// Keep the working directory (configuration, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Print lbd's configuration for memif server sockets `DIR/ext.sock`
    /// and `DIR/int.sock` (EAL file prefix `lbdpb-<DIR's name>`, the first
    /// of `--workers`, no pinned cores) and exit: for other generators,
    /// such as pktgen (scripts/pktgen/memif.sh).
    #[arg(long, value_name = "DIR")]
    pub print_config: Option<PathBuf>,
}

/// Arguments of `bench dataplane-traffic`.
#[derive(Debug, Clone, Args)]
pub struct TrafficArgs {
    /// EAL arguments (one string): port 0 faces the device's client side,
    /// port 1 its backend side.
    #[arg(long, allow_hyphen_values = true)]
    pub eal: String,
    /// Queue pairs per port (frames spread over them round robin).
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Destination MAC of the frames: the device's client-side port.
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:10:01")]
    pub dst_mac: [u8; 6],
    #[arg(long, default_value = "198.18.0.10")]
    pub vip: IpAddr,
    /// The allowed listener port.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// A port the load balancer's security group denies.
    #[arg(long, default_value_t = 81)]
    pub deny_port: u16,
    /// Client addresses (on the device's client-side link).
    #[arg(long, default_value = "198.18.0.100-198.18.0.200")]
    pub src: SrcNet,
    /// The backends' addresses (answered for on port 1).
    #[arg(long, value_delimiter = ',', default_values_t = ["198.19.1.11".parse::<IpAddr>().expect("ip"), "198.19.1.12".parse().expect("ip")])]
    pub backends: Vec<IpAddr>,
    /// Established flows.
    #[arg(long, default_value_t = 4096)]
    pub flows: usize,
    /// Length of each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Phases, in order: est, new, deny, lat.
    #[arg(long, value_delimiter = ',', default_values_t = ["est".to_string(), "new".into(), "deny".into(), "lat".into()])]
    pub phases: Vec<String>,
    /// The lat phase's rate as a share of what est delivered.
    #[arg(long, default_value_t = 0.5)]
    pub lat_share: f64,
    /// Upper bound of the whole run.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub max_time: Duration,
    /// Play only the backends, on port 0, for `--max-time`: answer every
    /// IPv4 TCP frame (another generator's too) and ARP for `--backends`.
    #[arg(long)]
    pub backends_only: bool,
}
