//! The announced set and the rendered include file.

use std::sync::atomic::Ordering;

use lb_core::pipeline::Snapshot;

use super::render::render;
use super::*;

/// A node with one VIP of each family, a v4 and a v6 server, both
/// checked; and its peers.
fn config(cluster: &str) -> Config {
    let text = format!(
        r#"
[[port]]
name = "ext"
interface = "lbcb-raw"
tap = "lbcb-ext"
addresses = ["198.18.10.11/24", "2001:db8:10::11/64"]
[[port]]
name = "int"
interface = "lbcb-int"
addresses = ["198.19.2.11/24", "2001:db8:19:2::11/64"]

[[server_group]]
id = "sgp-web"
scheduler = "maglev"
[[server_group.server]]
address = "198.19.2.101"
port = 80
[[server_group.server]]
address = "2001:db8:19:2::102"
port = 80

[[load_balancer]]
id = "alb-1"
vips = ["198.18.20.10", "2001:db8:20::10"]
local_addresses = ["198.19.2.21", "2001:db8:19:2::21"]
[[load_balancer.listener]]
protocol = "tcp"
port = 80
server_group = "sgp-web"
{cluster}"#
    );
    lb_config::parse_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
}

const CLUSTER: &str = r#"
[cluster]
node_id = 2
nodes = 3
asn = 65011
bird_config = "/run/lbd/bird-lbd.conf"
[[cluster.peer]]
address = "198.18.10.1"
asn = 65000
port = "ext"
"#;

fn net(s: &str) -> IpNet {
    s.parse().expect("a prefix")
}

fn set_health(h: &HealthTable, server: usize, checked: bool, up: bool) {
    let s = h.server(0, server).expect("a server");
    s.checked.store(checked, Ordering::Relaxed);
    s.up.store(up, Ordering::Relaxed);
}

fn strings(set: &Announced) -> Vec<String> {
    set.prefixes().map(ToString::to_string).collect()
}

#[test]
fn vips_follow_health_and_drain_local_addresses_stay() {
    let snap = Snapshot::compile(config(CLUSTER), 1);
    let h = HealthTable::new(&snap, None);
    let cfg = &snap.cfg;
    // Not yet checked: the local addresses only.
    assert_eq!(
        strings(&announced(cfg, &h, false)),
        ["198.19.2.21/32", "2001:db8:19:2::21/128"]
    );
    // The v4 server is up: the v4 VIP (a v6 client has no v6 server yet).
    set_health(&h, 0, true, true);
    let set = announced(cfg, &h, false);
    assert_eq!(set.vips, [net("198.18.20.10/32")].into());
    assert_eq!(set.len(), 3);
    set_health(&h, 1, true, true);
    assert_eq!(
        strings(&announced(cfg, &h, false)),
        [
            "198.18.20.10/32",
            "2001:db8:20::10/128",
            "198.19.2.21/32",
            "2001:db8:19:2::21/128"
        ]
    );
    // Draining: the VIPs go, the local addresses (replies) stay.
    let set = announced(cfg, &h, true);
    assert!(set.vips.is_empty());
    assert_eq!(set.len(), 2);
    // The v4 server fails its check: the v4 VIP goes.
    set_health(&h, 0, true, false);
    assert_eq!(
        announced(cfg, &h, false).vips,
        [net("2001:db8:20::10/128")].into()
    );
}

#[test]
fn weight_zero_and_unchecked_servers_do_not_count_disabled_checks_do() {
    let mut cfg = config(CLUSTER);
    cfg.server_groups[0].servers[0].weight = 0;
    let snap = Snapshot::compile(cfg, 1);
    let h = HealthTable::new(&snap, None);
    set_health(&h, 0, true, true);
    assert!(announced(&snap.cfg, &h, false).vips.is_empty());

    let mut cfg = config(CLUSTER);
    cfg.server_groups[0].health_check.enabled = false;
    let snap = Snapshot::compile(cfg, 1);
    let h = HealthTable::new(&snap, None);
    assert_eq!(announced(&snap.cfg, &h, false).vips.len(), 2);

    // No [cluster]: nothing.
    let snap = Snapshot::compile(config(""), 1);
    let h = HealthTable::new(&snap, None);
    set_health(&h, 0, true, true);
    assert!(announced(&snap.cfg, &h, false).is_empty());
}

#[test]
fn a_drained_server_does_not_keep_its_vip_announced() {
    let snap = Snapshot::compile(config(CLUSTER), 1);
    let h = HealthTable::new(&snap, None);
    set_health(&h, 0, true, true);
    set_health(&h, 1, true, true);
    h.servers.tick(&snap, &h, 0);
    assert_eq!(announced(&snap.cfg, &h, false).vips.len(), 2);
    h.servers
        .drain(&snap, "sgp-web", "198.19.2.101", None, 0)
        .expect("drain");
    h.servers.tick(&snap, &h, 0);
    assert_eq!(
        announced(&snap.cfg, &h, false).vips,
        [net("2001:db8:20::10/128")].into(),
        "the v4 VIP's only server is drained"
    );
    h.servers
        .undrain(&snap, "sgp-web", "198.19.2.101")
        .expect("undrain");
    h.servers.tick(&snap, &h, 0);
    assert_eq!(announced(&snap.cfg, &h, false).vips.len(), 2);
}

#[test]
fn the_include_file() {
    let cfg = config(CLUSTER);
    let c = cfg.cluster.as_ref().expect("a cluster");
    let set = Announced {
        vips: [net("198.18.20.10/32"), net("2001:db8:20::10/128")].into(),
        locals: [net("198.19.2.21/32")].into(),
    };
    assert_eq!(
        render(c, &cfg.ports, &set),
        r#"# Written by lbd for node 2 of 3 (AS 65011). Do not edit: lbd rewrites
# it whenever what the node announces changes, then runs `birdc configure`.
# Announced: 198.18.20.10/32, 2001:db8:20::10/128, 198.19.2.21/32.

protocol bfd lbd_bfd {
  interface "lbcb-ext" {
    interval 100 ms;
    multiplier 3;
  };
}

protocol static lbd_routes4_0 {
  ipv4;
  route 198.18.20.10/32 via "lbcb-ext";
  route 198.19.2.21/32 via "lbcb-ext";
}

protocol static lbd_routes6_0 {
  ipv6;
  route 2001:db8:20::10/128 via "lbcb-ext";
}

protocol bgp lbd_peer1 {
  description "198.18.10.1 behind port ext";
  local 198.18.10.11 as 65011;
  neighbor 198.18.10.1 as 65000;
  direct;
  hold time 3;
  keepalive time 1;
  connect retry time 5;
  error wait time 1, 10;
  graceful restart off;
  bfd on;
  ipv4 {
    import none;
    export where proto = "lbd_routes4_0" && net ~ [ 198.18.20.10/32, 198.19.2.21/32 ];
    next hop self;
  };
}
"#
    );
}

#[test]
fn without_bfd_with_a_v6_peer_and_nothing_to_announce() {
    let cluster = r#"
[cluster]
node_id = 1
nodes = 2
asn = 65011
bfd = false
hold_time_s = 9
[[cluster.peer]]
address = "2001:db8:10::1"
asn = 65011
port = "ext"
[[cluster.peer]]
address = "198.18.10.2"
asn = 65000
port = "ext"
"#;
    let cfg = config(cluster);
    let c = cfg.cluster.as_ref().expect("a cluster");
    let set = Announced {
        vips: [net("198.18.20.10/32"), net("2001:db8:20::10/128")].into(),
        locals: Default::default(),
    };
    let text = render(c, &cfg.ports, &set);
    assert!(!text.contains("protocol bfd"), "{text}");
    assert_eq!(text.matches("  bfd off;").count(), 2, "{text}");
    assert!(
        text.contains("  hold time 9;\n  keepalive time 3;"),
        "{text}"
    );
    // The v6 peer (iBGP: same AS) gets the v6 VIP only; the v4 peer the v4 one.
    assert!(text.contains(
        "protocol bgp lbd_peer1 {\n  description \"2001:db8:10::1 behind port ext\";\n  local 2001:db8:10::11 as 65011;\n  neighbor 2001:db8:10::1 as 65011;"
    ), "{text}");
    assert!(text.contains(
        "  ipv6 {\n    import none;\n    export where proto = \"lbd_routes6_0\" && net ~ [ 2001:db8:20::10/128 ];"
    ), "{text}");
    assert!(
        text.contains("    export where proto = \"lbd_routes4_0\" && net ~ [ 198.18.20.10/32 ];"),
        "{text}"
    );

    // Nothing announced (a clean stop): no route, no export.
    let empty = render(c, &cfg.ports, &Announced::default());
    assert!(empty.contains("# Announced: nothing."), "{empty}");
    assert!(!empty.contains("route "), "{empty}");
    assert_eq!(empty.matches("export none;").count(), 2, "{empty}");
}

#[test]
fn drain_deadline_ends_sessions_once() {
    let st = ClusterState::default();
    assert_eq!(st.state_name(), "active");
    st.drain(Some(Duration::from_secs(10)), 1_000);
    assert_eq!(st.state_name(), "draining");
    assert_eq!(
        st.status(1_000),
        DrainStatus {
            draining: true,
            deadline_in_s: Some(10),
            deadline_passed: false
        }
    );
    assert!(!st.check_deadline(5_000_000_000));
    assert_eq!(st.status(5_000_000_000).deadline_in_s, Some(6));
    assert!(st.check_deadline(10_000_001_000));
    assert!(!st.check_deadline(20_000_000_000), "once");
    assert_eq!(st.end_sessions.load(Ordering::Relaxed), 1);
    assert!(st.status(20_000_000_000).deadline_passed);
    st.undrain();
    assert_eq!(st.state_name(), "active");
    assert!(!st.check_deadline(u64::MAX));
    // Without a deadline, never.
    st.drain(None, 0);
    assert!(!st.check_deadline(u64::MAX));
    assert_eq!(st.status(0).deadline_in_s, None);
}

#[test]
fn scheduler_warnings() {
    let mut cfg = config(CLUSTER);
    assert!(warnings(&cfg).is_empty());
    cfg.server_groups[0].scheduler = lb_core::model::SchedulerKind::Wrr;
    assert_eq!(
        warnings(&cfg),
        ["listener alb-1:80 of a cluster node uses server group sgp-web with scheduler wrr; use \"maglev\" so that every node sends a flow to the same server"]
    );
    cfg.cluster = None;
    assert!(warnings(&cfg).is_empty());
}
