//! End to end over DPDK: the seed scenario of `tests/e2e.rs` once more,
//! with `lbd` running `io = "dpdk"` on `net_af_packet` virtual devices
//! bound to its two links of the namespace topology (scripts/netns.sh).
//! Real nginx backends, real curl, live reloads, health checks sent by
//! the data plane through worker 0's DPDK queues.
//!
//! Needs root, iproute2, ethtool, curl, nginx and python3 (CI installs
//! them); elsewhere it prints `SKIPPED …` and passes, or fails under CI. One test: EAL
//! runs in `lbd`, not here, but one topology at a time suits two cores.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod common;

use common::{
    dpdk_config, dpdk_runtime_dir, lbd_eal_args, seed_config, sg_alb, RuntimeDir, Topo, SERIAL,
};

const V4_80: &str = "http://198.18.0.10:80/";
const V4_81: &str = "http://198.18.0.10:81/";
const V6_80: &str = "http://[2001:db8:18::10]:80/";
const V6_81: &str = "http://[2001:db8:18::10]:81/";

/// EAL arguments for `lbd` in the load-balancer namespace: no hugepages,
/// no PCI, and one `net_af_packet` vdev per link, in port order.
fn eal_args(file_prefix: &str) -> Vec<String> {
    lbd_eal_args(
        file_prefix,
        256,
        &[
            "--vdev=net_af_packet0,iface=lb-ext,qdisc_bypass=1",
            "--vdev=net_af_packet1,iface=lb-int,qdisc_bypass=1",
        ],
    )
}

/// The seed configuration (with `lb_groups` and `extra` as in
/// [`seed_config`]) on DPDK ports.
fn config(file_prefix: &str, lb_groups: &str, extra: &str) -> String {
    dpdk_config(
        &seed_config(lb_groups, extra, (100, 100)),
        &eal_args(file_prefix),
    )
}

#[test]
fn seed_scenario_over_dpdk_af_packet_vdevs() {
    require_netns!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = format!("lbe2e{}", std::process::id());
    let runtime = RuntimeDir(dpdk_runtime_dir(&prefix));
    let mut t = Topo::up();
    let step5 = config(&prefix, "", "");
    assert!(step5.contains("io = \"dpdk\"") && step5.contains("dpdk_port = 1"));
    assert!(!step5.contains("interface ="), "{step5}");
    t.start_lbd(&step5);

    // The ports came up through DPDK: named, with their link state.
    let log = t.log();
    assert!(log.contains("DPDK port open"), "{log}");
    assert!(log.contains("net_af_packet0") && log.contains("net_af_packet1"));
    let s = t.stats();
    for p in s["ports"].as_array().expect("ports") {
        let link = p["link"].as_str().unwrap_or_default();
        assert!(link.starts_with("up"), "link of {}: {p}", p["name"]);
        // The MTU comes from the device (rte_eth_dev_get_mtu).
        assert!(
            p["mtu"].as_u64().unwrap_or(0) >= 1280,
            "mtu of {}: {p}",
            p["name"]
        );
    }
    // net_af_packet has no RSS: one queue per port, so one worker of two.
    assert!(log.contains("running 1 worker(s) instead of 2"), "{log}");

    // Health checks go out through worker 0's DPDK queue of the int port.
    t.wait_for(20, "both backends healthy", |t| {
        t.server_up("sgp-web", "ecs01") == Some(true)
            && t.server_up("sgp-web", "ecs02") == Some(true)
    });
    let s = t.stats();
    assert_eq!(s["workers"].as_array().map(Vec::len), Some(1), "{s}");

    // Step 5: no security group: every port answers.
    for url in [V4_80, V4_81, V6_80, V6_81] {
        assert!(t.backend_of(url).is_some(), "step 5: {url} should answer");
    }

    // Step 6: deny 81, live.
    let out = t.reload(&config(
        &prefix,
        "security_groups = [\"sg-alb\"]",
        &sg_alb(false),
    ));
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for url in [V4_80, V6_80] {
        assert!(t.backend_of(url).is_some(), "step 6: {url} should answer");
    }
    for url in [V4_81, V6_81] {
        assert!(t.curl(url).is_none(), "step 6: {url} should be blocked");
    }

    // Step 7: deny 80 and 81.
    let out = t.reload(&config(
        &prefix,
        "security_groups = [\"sg-alb\"]",
        &sg_alb(true),
    ));
    assert!(out.status.success());
    for url in [V4_80, V4_81, V6_80, V6_81] {
        assert!(t.curl(url).is_none(), "step 7: {url} should be blocked");
    }
    let s = t.stats();
    assert!(
        s["drops"]["security_group"].as_u64().unwrap_or(0) > 0,
        "drops counted: {s}"
    );
    assert!(
        s["rules"]
            .as_object()
            .is_some_and(|r| r.keys().any(|k| k.starts_with("sg sg-alb rule"))),
        "rule hits counted: {s}"
    );
    let tx: u64 = s["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["tx_packets"].as_u64().unwrap_or(0))
        .sum();
    assert!(tx > 0, "frames sent through DPDK: {s}");

    // A clean stop shuts EAL down, which removes its runtime directory.
    let dir = runtime.0.clone();
    drop(t);
    assert!(
        !dir.exists(),
        "lbd left {} behind on a clean stop",
        dir.display()
    );
}
