//! End to end: `lbd` on AF_PACKET between namespaces, real nginx backends,
//! real curl. Needs root, iproute2, ethtool, curl and nginx (CI installs
//! them); elsewhere each test prints `SKIPPED …` and passes, or fails under
//! CI (`common/skip.rs`).

mod common;

use common::{lock, seed_config, sg_alb, wait_healthy, Topo};

const V4_80: &str = "http://198.18.0.10:80/";
const V4_81: &str = "http://198.18.0.10:81/";
const V6_80: &str = "http://[2001:db8:18::10]:80/";
const V6_81: &str = "http://[2001:db8:18::10]:81/";

#[test]
fn seed_scenario_over_ipv4_and_ipv6() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    wait_healthy(&t);

    // Step 5: no security group: every port answers.
    for url in [V4_80, V4_81, V6_80, V6_81] {
        assert!(t.backend_of(url).is_some(), "step 5: {url} should answer");
    }

    // Step 6: deny 81.
    let out = t.reload(&seed_config(
        "security_groups = [\"sg-alb\"]",
        &sg_alb(false),
        (100, 100),
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
    let out = t.reload(&seed_config(
        "security_groups = [\"sg-alb\"]",
        &sg_alb(true),
        (100, 100),
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
}

#[test]
fn weighted_round_robin_proportions() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (75, 25)));
    wait_healthy(&t);
    let (mut a, mut b) = (0, 0);
    for _ in 0..80 {
        match t.backend_of(V4_80).as_deref() {
            Some("ECS01") => a += 1,
            Some("ECS02") => b += 1,
            other => panic!("request failed: {other:?}\n{}", t.log()),
        }
    }
    // 3:1 of 80 new connections; two workers each run their own smooth
    // round-robin, so allow a small deviation from exactly 60/20.
    assert!(
        (55..=65).contains(&a) && a + b == 80,
        "ECS01 {a}, ECS02 {b}"
    );
}

#[test]
fn health_check_failover_and_recovery() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    wait_healthy(&t);
    t.netns(&["nginx-stop", "1"]);
    t.wait_for(15, "ecs01 marked down", |t| {
        t.server_up("sgp-web", "ecs01") == Some(false)
    });
    for _ in 0..10 {
        assert_eq!(
            t.backend_of(V4_80).as_deref(),
            Some("ECS02"),
            "traffic moved to the healthy server"
        );
        assert_eq!(t.backend_of(V6_81).as_deref(), Some("ECS02"));
    }
    t.netns(&["nginx-start", "1"]);
    t.wait_for(15, "ecs01 back up", |t| {
        t.server_up("sgp-web", "ecs01") == Some(true)
    });
    let seen: Vec<_> = (0..6).filter_map(|_| t.backend_of(V4_80)).collect();
    assert!(
        seen.iter().any(|b| b == "ECS01"),
        "ecs01 serves again: {seen:?}"
    );
}

#[test]
fn nat_mode_backend_sees_the_client_address() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    t.wait_for(15, "ecs01:8080 healthy", |t| {
        t.server_up("sgp-nat", "ecs01") == Some(true)
    });
    assert_eq!(
        t.curl("http://198.18.0.10:8080/whoami").as_deref(),
        Some("198.18.0.2")
    );
    assert_eq!(
        t.curl("http://[2001:db8:18::10]:8080/whoami").as_deref(),
        Some("2001:db8:18::2")
    );
    // FULLNAT listeners show the local address instead.
    assert_eq!(
        t.curl("http://198.18.0.10:80/whoami").as_deref(),
        Some("198.19.1.250")
    );
}

#[test]
fn routed_instance_traffic_filtered_by_security_group_and_network_acl() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    // The data plane answers pings to its own addresses.
    for target in [
        "198.18.0.10",
        "198.18.0.1",
        "2001:db8:18::10",
        "2001:db8:18::1",
    ] {
        let out = t.exec("client", &["ping", "-c", "1", "-W", "2", target]);
        assert!(
            out.status.success(),
            "ping {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Allowed by the group and the network ACL.
    assert!(t.backend_of("http://198.19.1.11/").as_deref() == Some("ECS01"));
    assert!(t.backend_of("http://[2001:db8:19:1::12]/").as_deref() == Some("ECS02"));
    // The group allows 8080 over IPv4, the network ACL does not.
    let before = t.stats();
    assert!(t.curl("http://198.19.1.11:8080/").is_none());
    // Over IPv6 the network ACL allows it, the group does not.
    assert!(t.curl("http://[2001:db8:19:1::11]:8080/").is_none());
    let after = t.stats();
    let grew = |k: &str| {
        after["drops"][k].as_u64().unwrap_or(0) > before["drops"][k].as_u64().unwrap_or(0)
    };
    assert!(grew("network_acl"), "network ACL drop counted: {after}");
    assert!(
        grew("security_group"),
        "security group drop counted: {after}"
    );
}

#[test]
fn invalid_reload_keeps_traffic_flowing_and_malformed_frames_are_counted() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    let good = seed_config("", "", (100, 100));
    t.start_lbd(&good);
    assert!(t.backend_of(V4_80).is_some());
    let bad = good.replace(
        "priority = 1\nprotocol = \"tcp\"\nport_range = \"80/80\"",
        "priority = 0\nprotocol = \"tcp\"\nport_range = \"80/80\"",
    );
    let out = t.reload(&bad);
    assert!(!out.status.success(), "an invalid file must be rejected");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lbd.toml:") && err.contains("priority"),
        "errors name file:line:col: {err}"
    );
    assert!(
        t.backend_of(V4_80).is_some(),
        "the old configuration keeps running"
    );
    let s = t.stats();
    assert_eq!(s["reload_failures"], 1);
    assert_eq!(s["generation"], 1);

    // A frame with an IPv4 header length of 3 words.
    let frame = "ffffffffffff020000000001080043000014000000004006000001020304c6120001";
    let py = format!(
        "import socket; s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('c-eth0', 0)); s.send(bytes.fromhex('{frame}'))"
    );
    let out = t.exec("client", &["python3", "-c", &py]);
    assert!(
        out.status.success(),
        "send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.wait_for(5, "the malformed frame counted", |t| {
        t.stats()["drops"]["malformed"].as_u64().unwrap_or(0) >= 1
    });
    // And lbd is still serving.
    assert!(t.backend_of(V6_80).is_some());
}

#[test]
fn a_large_rule_set_applies_at_reload_and_is_refined_in_the_background() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    wait_healthy(&t);
    // sg-alb (deny 81) after 900 deny rules for other sources, each with
    // its own port range: large enough that its tables are staged first.
    let mut group = sg_alb(false);
    for i in 0..900u32 {
        let lo = 1000 + i * 7;
        group.push_str(&format!(
            "\n[[security_group.rule]]\ndirection = \"ingress\"\naction = \"deny\"\npriority = 2\nprotocol = \"tcp\"\nport_range = \"{lo}/{}\"\nsource = \"198.18.{}.{}/32\"\n",
            lo + i % 50,
            100 + i / 250,
            i % 250
        ));
    }
    let out = t.reload(&seed_config(
        "security_groups = [\"sg-alb\"]",
        &group,
        (100, 100),
    ));
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The new rules hold from the reload on, staged or not.
    assert!(t.curl(V4_81).is_none(), "81 is denied at once");
    assert!(t.backend_of(V4_80).is_some(), "80 answers at once");
    t.wait_for(20, "every rule set refined", |t| {
        let s = t.stats();
        s["classifiers"]["staged"] == 0 && s["classifiers"]["rule_sets"].as_u64() > Some(0)
    });
    // lbd logs what it refined: generation 2's load-balancer group.
    t.wait_for(5, "the refinement logged", |t| {
        t.log()
            .lines()
            .any(|l| l.contains("classifiers refined") && l.contains("generation=2"))
    });
    assert!(t.curl(V6_81).is_none(), "81 is denied after the refinement");
    assert!(t.backend_of(V6_80).is_some());
    assert!(t.backend_of(V4_80).is_some());
}

#[test]
fn partial_checksums_from_the_client_are_completed() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up_with(&[("LBT_CLIENT_OFFLOAD", "on")]);
    t.start_lbd(&seed_config("", "", (100, 100)));
    wait_healthy(&t);
    // Bodies bigger than one segment, both ways, through FULLNAT and routing.
    let big = "x".repeat(3000);
    for url in [V4_80, V6_81, "http://198.19.1.11/"] {
        let out = t.exec(
            "client",
            &[
                "curl",
                "-s",
                "-g",
                "--max-time",
                "3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--data",
                &big,
                url,
            ],
        );
        // nginx answers a POST to a static file with 405: a whole exchange.
        assert_eq!(String::from_utf8_lossy(&out.stdout), "405", "{url}");
    }
}

#[test]
fn metrics_endpoint_and_sighup_reload() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd_with(
        &seed_config("", "", (100, 100)),
        &["--metrics", "127.0.0.1:9464"],
    );
    assert!(t.backend_of(V4_80).is_some());
    let text = t.metrics();
    assert!(
        text.contains("lbd_port_rx_packets_total{port=\"ext\"}"),
        "{text}"
    );
    assert!(
        text.contains("lbd_server_up{group=\"sgp-web\",server=\"ecs01\",port=\"80\"}"),
        "{text}"
    );
    assert!(
        text.contains("lbd_classifier_rule_sets{state=\"staged\"} 0"),
        "{text}"
    );
    // SIGHUP re-reads the file like `lbctl reload`.
    t.write_config(&seed_config(
        "security_groups = [\"sg-alb\"]",
        &sg_alb(false),
        (100, 100),
    ));
    t.signal(libc::SIGHUP);
    t.wait_for(5, "generation 2", |t| t.stats()["generation"] == 2);
    assert!(t.curl(V4_81).is_none(), "port 81 denied after SIGHUP");
}

/// A UDP request from the client: which backend answered, if any.
fn udp_backend(t: &Topo, addr: &str) -> Option<String> {
    let fam = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let py = format!(
        "import socket; s=socket.socket(socket.{fam}, socket.SOCK_DGRAM); s.settimeout(1.5); \
         s.sendto(b'ping', ('{addr}', 53)); print(s.recv(100).decode())"
    );
    let out = t.exec("client", &["python3", "-c", &py]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    out.status
        .success()
        .then(|| text.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn udp_listener_and_udp_health_checks() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.netns(&["udp-up"]);
    let mut cfg = seed_config("", "", (100, 100));
    // The backends' group must let the datagrams and the ICMP errors through
    // only under "enforce"; under the default "bypass" nothing is needed.
    cfg.push_str(common::UDP_LISTENER);
    t.start_lbd(&cfg);
    common::wait_udp_healthy(&t);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(udp_backend(&t, "198.18.0.20").expect("UDP answer over IPv4"));
        seen.insert(udp_backend(&t, "2001:db8:18::20").expect("UDP answer over IPv6"));
    }
    assert_eq!(seen.len(), 2, "both servers answer: {seen:?}");
    // A stopped server answers probes with ICMP port unreachable: down.
    t.netns(&["udp-stop", "1"]);
    t.wait_for(15, "ecs01 UDP marked down", |t| {
        t.server_up("sgp-udp", "ecs01") == Some(false)
    });
    for _ in 0..4 {
        assert_eq!(udp_backend(&t, "198.18.0.20").as_deref(), Some("ECS02"));
    }
}
