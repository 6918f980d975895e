//! End to end over DPDK's `net_af_xdp`: `lbd` with `io = "dpdk"` on
//! AF_XDP virtual devices bound to the veth links of the namespace
//! topology (scripts/netns.sh), the path for hosts whose NIC stays with
//! the kernel. Real nginx backends, real curl: the seed scenario's step 6
//! (port 80 allowed, 81 denied by the load balancer's security group),
//! IPv4 and IPv6, health checks through the data plane.
//!
//! Needs root, iproute2, ethtool, curl, nginx and python3 (CI installs
//! them) and a kernel with AF_XDP; a missing prerequisite fails it under
//! `CI=true`, elsewhere it says SKIPPED and passes.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod common;

use common::{
    dpdk_config, dpdk_runtime_dir, lbd_eal_args, seed_config, sg_alb, RuntimeDir, Topo, SERIAL,
};

/// EAL arguments for `lbd` in the load-balancer namespace: no hugepages,
/// no PCI, one `net_af_xdp` vdev per link (queue 0), in port order.
fn eal_args(file_prefix: &str) -> Vec<String> {
    lbd_eal_args(
        file_prefix,
        512,
        &[
            "--vdev=net_af_xdp0,iface=lb-ext,start_queue=0,queue_count=1",
            "--vdev=net_af_xdp1,iface=lb-int,start_queue=0,queue_count=1",
        ],
    )
}

#[test]
fn seed_scenario_over_dpdk_af_xdp_vdevs() {
    require_netns!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = format!("lbxdp{}", std::process::id());
    let _runtime = RuntimeDir(dpdk_runtime_dir(&prefix));
    let mut t = Topo::up();
    let conf = dpdk_config(
        &seed_config("security_groups = [\"sg-alb\"]", &sg_alb(false), (100, 100)),
        &eal_args(&prefix),
    );
    t.start_lbd(&conf);
    let log = t.log();
    assert!(
        log.contains("net_af_xdp0") && log.contains("net_af_xdp1"),
        "{log}"
    );
    t.wait_for(20, "both backends healthy", |t| {
        t.server_up("sgp-web", "ecs01") == Some(true)
            && t.server_up("sgp-web", "ecs02") == Some(true)
    });
    for url in ["http://198.18.0.10:80/", "http://[2001:db8:18::10]:80/"] {
        assert!(t.backend_of(url).is_some(), "{url} should answer");
    }
    for url in ["http://198.18.0.10:81/", "http://[2001:db8:18::10]:81/"] {
        assert!(t.curl(url).is_none(), "{url} should be blocked");
    }
    let s = t.stats();
    assert!(
        s["drops"]["security_group"].as_u64().unwrap_or(0) > 0,
        "drops counted: {s}"
    );
    for p in s["ports"].as_array().expect("ports") {
        assert!(
            p["tx_packets"].as_u64().unwrap_or(0) > 0,
            "frames sent through AF_XDP on {}: {s}",
            p["name"]
        );
    }
}
