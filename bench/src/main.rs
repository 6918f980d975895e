//! Benchmarks of the load balancer's hot paths.
//!
//! ```text
//! bench acl --rules ../shared/bench-data/cb_fw1_1000
//! bench acl --rules sg6_1k.rules --trace sg6_1k.trace --ipv6
//! bench acl --all ../shared/bench-data --packets 200000
//! bench pipeline
//! bench gen --tx-iface c-eth0 --rx-iface sw-lb --dst-mac 02:00:00:00:00:02 --rate 20k
//! bench dataplane --workers 1,2
//! ```

mod acl;
mod pipeline;

// Session tables and classifier tables on huge pages, as in lbd.
#[global_allocator]
static ALLOC: lb_dataplane::alloc::HugePageAlloc = lb_dataplane::alloc::HugePageAlloc;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Load balancer benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Packet classifier: compiled classifier against the linear scan.
    Acl(AclArgs),
    /// The per-core fast path: frames through the real worker code, no I/O.
    Pipeline(PipelineArgs),
    /// Traffic generator: new / established / denied TCP flows to a VIP
    /// through a port, counted after the load balancer.
    Gen(lb_bench::gen::GenArgs),
    /// The whole data path over DPDK memif links: lbd against dpdk-testpmd.
    Dataplane(lb_bench::dataplane::DataplaneArgs),
    /// The traffic process of `bench dataplane` (clients and backends on
    /// two DPDK ports), also for real NIC ports.
    DataplaneTraffic(lb_bench::dataplane::TrafficArgs),
}

/// Arguments of `bench pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Session counts of the established-flow scenarios.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000usize, 1_000_000])]
    pub sessions: Vec<usize>,
    /// Packets per scenario.
    #[arg(long, default_value_t = 4_000_000)]
    pub packets: usize,
    /// Also measure lookups in a table of this many sessions (e.g. 10000000).
    #[arg(long, default_value_t = 0)]
    pub big: usize,
    /// Skip the new-connection scenarios.
    #[arg(long)]
    pub no_new: bool,
}

/// Arguments of `bench acl`.
#[derive(Debug, Args)]
pub struct AclArgs {
    /// A rule file in ClassBench / dpdk-test-acl format.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub rules: Option<PathBuf>,
    /// Run every rule file (cb_* and *.rules) of this directory.
    #[arg(long, value_name = "DIR")]
    pub all: Option<PathBuf>,
    /// A trace in dpdk-test-acl format; generated from the rules if absent.
    #[arg(long, conflicts_with = "all")]
    pub trace: Option<PathBuf>,
    /// The rule file is IPv6 (otherwise detected from the addresses).
    #[arg(long)]
    pub ipv6: bool,
    /// Packets of the generated trace.
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: usize,
    /// Timing rounds per engine (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seed of the trace generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn main() -> anyhow::Result<()> {
    // As lbd: freed table memory stays in the process for the next build.
    lb_dataplane::alloc::keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Acl(args) => acl::run(&args),
        Command::Gen(args) => lb_bench::gen::main(&args),
        Command::Dataplane(args) => lb_bench::dataplane::main(&args),
        Command::DataplaneTraffic(args) => lb_bench::dataplane::traffic_main(&args),
        Command::Pipeline(a) => {
            pipeline::run(&pipeline::Opts {
                sessions: a.sessions,
                packets: a.packets,
                big: a.big,
                new_connections: !a.no_new,
            });
            Ok(())
        }
    }
}
