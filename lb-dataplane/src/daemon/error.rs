//! Why `lbd` could not start, or why a reload was refused.

use std::path::PathBuf;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] lb_config::ConfigErrors),
    #[error("port {port} has no interface")]
    NoInterface { port: String },
    #[error("opening AF_PACKET on {interface}")]
    AfPacket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a send socket on {interface}")]
    SendSocket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: io = \"dpdk\" needs lbd built with the dpdk feature \
         (cargo build --release -p lb-dataplane --features dpdk)",
        config.display()
    )]
    DpdkNotBuilt { config: PathBuf },
    #[cfg(feature = "dpdk")]
    #[error(
        "{}: initialising DPDK (check [dataplane] eal_args, hugepages: scripts/dpdk-setup.sh --check)",
        config.display()
    )]
    Eal {
        config: PathBuf,
        #[source]
        source: crate::io::dpdk::DpdkError,
    },
    #[cfg(feature = "dpdk")]
    #[error("creating a DPDK mempool of {buffers} buffers")]
    Mempool {
        buffers: u32,
        #[source]
        source: crate::io::dpdk::DpdkError,
    },
    #[error("port {port} has no dpdk_port")]
    NoDpdkPort { port: String },
    #[cfg(feature = "dpdk")]
    #[error("opening DPDK port {id} (port {port}): EAL found {found} port(s)")]
    DpdkPort {
        id: u16,
        port: String,
        found: u16,
        #[source]
        source: crate::io::dpdk::DpdkError,
    },
    #[error(
        "DPDK port {id} ({device}) has {queues} queues but another port only {workers}: \
         set [dataplane] workers = {workers}"
    )]
    QueueMismatch {
        id: u16,
        device: String,
        queues: u16,
        workers: usize,
    },
    #[cfg(feature = "dpdk")]
    #[error("queue {queue} of DPDK port {id}")]
    DpdkQueue {
        queue: u16,
        id: u16,
        #[source]
        source: crate::io::dpdk::DpdkError,
    },
    #[error("opening the exception path (needs /dev/net/tun and CAP_NET_ADMIN)")]
    Tap {
        #[source]
        source: std::io::Error,
    },
    #[error("starting {thread}")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] lb_config::ConfigErrors),
    #[error("ports changed: restart lbd to add, remove or rename ports or change their taps")]
    PortsChanged,
    #[error("[dataplane] changed: restart lbd to apply it")]
    DataplaneChanged,
    #[error("[[port]] max_neighbors changed: restart lbd to apply it")]
    MaxNeighborsChanged,
    #[error("[cluster] node_id or nodes changed (or [cluster] was added or removed): restart lbd to apply it")]
    ClusterNodeChanged,
}
