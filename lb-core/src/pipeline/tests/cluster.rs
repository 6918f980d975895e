//! A cluster of nodes built from the same configuration (each with its
//! own `node_id`): the same backend for the same flow on every node,
//! through a backend's outage, and local ports from the node's own slice.

use super::*;

/// [`config`] with a Maglev group of four servers, as node `node` of 3.
fn node_config(node: u16) -> Config {
    let mut cfg = config();
    let group = &mut cfg.server_groups[0];
    group.scheduler = SchedulerKind::Maglev;
    for i in 2..=4 {
        group.servers.push(Server {
            name: format!("198.19.1.{}:80", 10 + i),
            instance: None,
            addresses: vec![addr(&format!("198.19.1.{}", 10 + i))],
            port: 80,
            weight: 100,
            draining: false,
        });
    }
    cfg.cluster = Some(Cluster {
        node_id: node,
        nodes: 3,
        asn: 65011,
        bird_config: Cluster::DEFAULT_BIRD_CONFIG.into(),
        bird_socket: Cluster::DEFAULT_BIRD_SOCKET.into(),
        hold_time_s: 3,
        keepalive_s: 1,
        bfd: true,
        bfd_interval_ms: 100,
        bfd_multiplier: 3,
        peers: Vec::new(),
    });
    cfg
}

/// Servers listed as down.
struct Down(Vec<usize>);

impl Health for Down {
    fn is_up(&self, _group: usize, server: usize) -> bool {
        !self.0.contains(&server)
    }
}

/// The backend each client's SYN goes to, and the local port it leaves
/// from, on a fresh worker `id` of `workers`.
fn open(
    snap: &Snapshot,
    id: u16,
    workers: u16,
    clients: u16,
    health: &dyn Health,
) -> Vec<(IpAddr, u16)> {
    let mut w = Worker::new(id, workers, 4096, 1024);
    (0..clients)
        .map(|i| {
            let src = format!("198.18.0.{}", 20 + i % 200);
            let mut f = tcp_frame(&src, "198.18.0.10", 20_000 + i, 80, TCP_SYN);
            match w.process(&mut f, RxInfo::default(), 0, snap, health) {
                Verdict::Forward(fw) => (fw.out.dst, fw.out.sport),
                v => panic!("client {src}:{}: {v:?}", 20_000 + i),
            }
        })
        .collect()
}

#[test]
fn nodes_send_a_flow_to_the_same_backend_through_an_outage() {
    // Compiled apart, as two processes on two hosts would.
    let a = Snapshot::compile(node_config(1), 1);
    let b = Snapshot::compile(node_config(2), 1);
    let backends = |v: Vec<(IpAddr, u16)>| v.into_iter().map(|(b, _)| b).collect::<Vec<_>>();
    let up = Down(vec![]);
    let before = backends(open(&a, 0, 1, 600, &up));
    // Another worker count on the other node changes nothing.
    assert_eq!(before, backends(open(&b, 1, 4, 600, &up)));
    let used: std::collections::HashSet<_> = before.iter().collect();
    assert_eq!(used.len(), 4, "every backend takes flows");

    let down = Down(vec![1]);
    let during = backends(open(&a, 0, 1, 600, &down));
    assert_eq!(during, backends(open(&b, 2, 3, 600, &down)));
    let gone = addr("198.19.1.12");
    assert!(!during.contains(&gone));
    // Flows of the healthy backends stay where they were, but for the
    // few entries Maglev's table moves (about 1 % with 4 servers).
    let kept: Vec<_> = before
        .iter()
        .zip(&during)
        .filter(|(x, _)| **x != gone)
        .collect();
    let moved = kept.iter().filter(|(x, y)| x != y).count();
    assert!(moved * 50 < kept.len(), "{moved} of {} moved", kept.len());

    // Back up: the same table as before on both nodes.
    assert_eq!(backends(open(&a, 0, 1, 600, &up)), before);
    assert_eq!(backends(open(&b, 0, 2, 600, &up)), before);
}

#[test]
fn each_node_takes_local_ports_from_its_own_slice() {
    let mut seen: std::collections::HashMap<u16, u16> = Default::default();
    for node in 1..=3 {
        let snap = Snapshot::compile(node_config(node), 1);
        let slice = crate::nat::node_ports(node, 3);
        for worker in 0..2 {
            for (_, port) in open(&snap, worker, 2, 500, &AllUp) {
                assert!(slice.contains(&port), "node {node}: port {port}");
                assert_eq!(crate::nat::port_owner(port, 2), worker);
                if let Some(other) = seen.insert(port, node) {
                    panic!("port {port} used by nodes {other} and {node}");
                }
            }
        }
    }
    // Without [cluster], the whole range from its start.
    let snap = Snapshot::compile(config(), 1);
    assert_eq!(open(&snap, 0, 1, 1, &AllUp)[0].1, crate::nat::FIRST_PORT);
}

#[test]
fn ending_listener_sessions_frees_their_ports_and_resets_their_clients() {
    let snap = Snapshot::compile(node_config(1), 1);
    let mut w = Worker::new(0, 1, 1024, 1024);
    let local = addr("198.19.1.250");
    let mut ports = Vec::new();
    for i in 0..10 {
        let mut f = tcp_frame("198.18.0.20", "198.18.0.10", 30_000 + i, 80, TCP_SYN);
        match w.process(&mut f, RxInfo::default(), 0, &snap, &AllUp) {
            Verdict::Forward(fw) => ports.push(fw.out.sport),
            v => panic!("{v:?}"),
        }
    }
    assert_eq!(w.sessions.len(), 10);
    assert!(ports.iter().all(|&p| w.ports.users(local, p) == 1));
    assert_eq!(w.end_listener_sessions(), 10);
    assert!(w.sessions.is_empty());
    assert!(ports.iter().all(|&p| w.ports.users(local, p) == 0));
    assert_eq!(w.stats.listener_sessions.at_mut((0, 0)).active, 0);
    // The client's next segment finds no session: answered with a RST.
    let mut f = tcp_frame("198.18.0.20", "198.18.0.10", 30_000, 80, TCP_ACK);
    let v = w.process(&mut f, RxInfo::default(), 5 * NANOS_PER_SEC, &snap, &AllUp);
    assert!(matches!(v, Verdict::Drop(Reason::NoSessionReset)), "{v:?}");
    assert_eq!(w.end_listener_sessions(), 0);
}
