//! `[cluster]` and `[[cluster.peer]]`.

use super::*;

/// Two ports (ext with the upstream link and a tap, int) and nothing
/// else: 9 lines.
const PORTS: &str = r#"
[[port]]
name = "ext"
interface = "lb-ext"
tap = "lbd-ext"
addresses = ["198.18.10.11/24", "2001:db8:10::11/64"]
[[port]]
name = "int"
interface = "lb-int"
addresses = ["198.19.2.11/24"]
"#;

fn cluster(body: &str) -> String {
    format!("{}{}", text(PORTS), text(body))
}

#[test]
fn the_contract_example_compiles() {
    let cfg = ok(&cluster(
        r#"
[cluster]
node_id = 2
nodes = 3
asn = 65011
bird_config = "/run/lbd/bird-lbd.conf"
bird_socket = "/run/bird/bird.ctl"
hold_time_s = 3
keepalive_s = 1
bfd = true
bfd_interval_ms = 100
bfd_multiplier = 3

[[cluster.peer]]
address = "198.18.10.1"
asn = 65000
port = "ext"

[[cluster.peer]]
address = "2001:db8:10::1"
asn = 65000
port = "ext"
"#,
    ));
    assert!(
        summary(&cfg).ends_with(", cluster node 2 of 3 (2 peers)"),
        "{}",
        summary(&cfg)
    );
    let c = cfg.cluster.expect("a cluster");
    assert_eq!((c.node_id, c.nodes, c.asn), (2, 3, 65011));
    assert_eq!(c.bird_config, "/run/lbd/bird-lbd.conf");
    assert_eq!((c.hold_time_s, c.keepalive_s), (3, 1));
    assert!(c.bfd);
    assert_eq!((c.bfd_interval_ms, c.bfd_multiplier), (100, 3));
    assert_eq!(c.peers.len(), 2);
    assert_eq!(
        c.peers[0].address,
        "198.18.10.1".parse::<IpAddr>().expect("addr")
    );
    assert_eq!(c.peers[0].port, 0);
    assert_eq!(
        c.peers[0].local,
        "198.18.10.11".parse::<IpAddr>().expect("addr")
    );
    assert_eq!(
        c.peers[1].local,
        "2001:db8:10::11".parse::<IpAddr>().expect("addr")
    );
}

#[test]
fn defaults_and_no_cluster() {
    assert_eq!(ok(PORTS).cluster, None);
    let c = ok(&cluster(
        r#"
[cluster]
node_id = 1
nodes = 1
asn = 65011
hold_time_s = 9
[[cluster.peer]]
address = "198.18.10.1"
asn = 65000
port = "ext"
"#,
    ))
    .cluster
    .expect("a cluster");
    assert_eq!(c.bird_config, lb_core::model::Cluster::DEFAULT_BIRD_CONFIG);
    assert_eq!(c.bird_socket, lb_core::model::Cluster::DEFAULT_BIRD_SOCKET);
    assert_eq!(
        (c.hold_time_s, c.keepalive_s),
        (9, 3),
        "a third of the hold time"
    );
    assert!(c.bfd);
    assert_eq!((c.bfd_interval_ms, c.bfd_multiplier), (100, 3));
}

#[test]
fn values_out_of_range() {
    assert_eq!(
        errs(&cluster(
            r#"
[cluster]
node_id = 4
nodes = 3
asn = 23456
bird_config = "run/bird-lbd.conf"
hold_time_s = 2
keepalive_s = 1
bfd_interval_ms = 5
bfd_multiplier = 0
[[cluster.peer]]
address = "198.18.10.1"
asn = 0
port = "ext"
"#
        )),
        [
            "11:11: node_id (1..=nodes) must be 1..=3, got 4",
            "13:7: AS 23456 is AS_TRANS (RFC 6793), a placeholder; use the real AS number",
            "14:15: bird_config must be an absolute file path without quotes or control characters, got \"run/bird-lbd.conf\"",
            "15:15: hold_time_s must be 3..=65535, got 2",
            "17:19: bfd_interval_ms must be 10..=10000, got 5",
            "18:18: bfd_multiplier must be 1..=255, got 0",
            "21:7: an AS number must be 1..=4294967294, got 0",
        ]
    );
    assert_eq!(
        errs(&cluster(
            r#"
[cluster]
node_id = 1
nodes = 0
asn = 65011
hold_time_s = 6
keepalive_s = 3
[[cluster.peer]]
address = "198.18.10.1"
asn = 4294967295
port = "ext"
"#
        )),
        [
            "12:9: nodes must be 1..=255, got 0",
            "15:15: keepalive_s (at most a third of hold_time_s) must be 1..=2, got 3",
            "18:7: an AS number must be 1..=4294967294, got 4294967295",
        ]
    );
}

#[test]
fn peers_must_be_directly_connected_routers() {
    assert_eq!(
        errs(&cluster(
            r#"
[cluster]
node_id = 1
nodes = 2
asn = 65011
[[cluster.peer]]
address = "198.18.20.1"
asn = 65000
port = "ext"
[[cluster.peer]]
address = "198.18.10.11"
asn = 65000
port = "ext"
[[cluster.peer]]
address = "198.18.10.1"
asn = 65000
port = "wan"
[[cluster.peer]]
address = "198.18.10.2"
asn = 65000
port = "ext"
[[cluster.peer]]
address = "198.18.10.2"
asn = 65001
port = "ext"
[[cluster.peer]]
address = "198.18.10.300"
asn = 65001
port = "ext"
[[cluster.peer]]
address = "198.18.10.255"
asn = 65001
port = "ext"
"#
        )),
        [
            "15:11: peer 198.18.20.1 is not on a link of port ext (198.18.10.11/24, 2001:db8:10::11/64); a peer must be directly connected",
            "19:11: peer 198.18.10.11 is our own address (port ext on line 5); a peer is an upstream router",
            "25:8: unknown port wan",
            "31:11: peer 198.18.10.2 is already defined on line 27",
            "35:11: \"198.18.10.300\" is not an IP address",
            "39:11: peer 198.18.10.255 is the network or broadcast address of port ext (198.18.10.0/24), not a host address",
        ]
    );
    assert_eq!(
        errs(&cluster("[cluster]\nnode_id = 1\nnodes = 1\nasn = 65011\n")),
        ["10:1: [cluster] needs at least one [[cluster.peer]] (the routers the VIPs are announced to)"]
    );
    assert_eq!(
        errs(&cluster("[cluster]\nnode_id = 1\nnodes = 1\nasn = 65011\nhold = 3\n")),
        [
            "10:1: [cluster] needs at least one [[cluster.peer]] (the routers the VIPs are announced to)",
            "14:1: unknown field `hold`, expected one of `node_id`, `nodes`, `asn`, `bird_config`, `bird_socket`, `hold_time_s`, `keepalive_s`, `bfd`, `bfd_interval_ms`, `bfd_multiplier`, `peer`"
        ]
    );
}

#[test]
fn a_peer_is_behind_a_port_with_a_tap() {
    assert_eq!(
        errs(&cluster(
            r#"
[cluster]
node_id = 1
nodes = 1
asn = 65011
[[cluster.peer]]
address = "198.19.2.1"
asn = 65000
port = "int"
"#
        )),
        ["17:8: port int has no tap: BGP and BFD to a peer run over the port's TAP interface, so that they end when lbd does"]
    );
}

#[test]
fn every_worker_of_every_node_keeps_enough_ports() {
    let body = |nodes: u16, workers: u16| {
        format!(
            "[dataplane]\nworkers = {workers}\n{}[cluster]\nnode_id = 1\nnodes = {nodes}\nasn = 65011\n[[cluster.peer]]\naddress = \"198.18.10.1\"\nasn = 65000\nport = \"ext\"\n",
            text(PORTS)
        )
    };
    assert!(errs(&body(14, 64)).is_empty());
    assert_eq!(
        errs(&body(15, 64)),
        ["14:9: nodes = 15 with workers = 64 leaves a worker 62 ports of each local address; at least 64 are needed (fewer nodes or workers)"]
    );
}
