//! The exception path on DPDK ports, end to end in the namespace
//! topology: `lbd` built with the `dpdk` feature runs `io = "dpdk"` on
//! `net_af_packet` virtual devices bound to its two links, with `tap =
//! "lbd-ext"` on the ext port; see `exception_common`.
//!
//! Needs root, iproute2, ethtool, curl, nginx, python3 and nft (CI
//! installs them); elsewhere it prints `SKIPPED …` and passes, or fails
//! under CI.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod common;
mod exception_common;

use common::{dpdk_config, dpdk_runtime_dir, lbd_eal_args, seed_config, RuntimeDir};
use exception_common::{run_case, with_tap};

#[test]
fn control_traffic_reaches_the_kernel_through_the_tap_on_dpdk() {
    let prefix = format!("lbexc{}", std::process::id());
    let _runtime = RuntimeDir(dpdk_runtime_dir(&prefix));
    let Some((_g, mut t)) = exception_common::topology() else {
        return;
    };
    let eal = lbd_eal_args(
        &prefix,
        256,
        &[
            "--vdev=net_af_packet0,iface=lb-ext,qdisc_bypass=1",
            "--vdev=net_af_packet1,iface=lb-int,qdisc_bypass=1",
        ],
    );
    let config = with_tap(&dpdk_config(&seed_config("", "", (100, 100)), &eal));
    assert!(config.contains("io = \"dpdk\"") && config.contains("tap = \"lbd-ext\""));
    assert!(!config.contains("interface ="), "{config}");
    t.start_lbd_with(&config, &["--metrics", "127.0.0.1:9464"]);
    assert!(t.log().contains("DPDK port open"), "{}", t.log());
    run_case(&mut t);
}
