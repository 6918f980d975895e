//! Active health checks, sent by the data plane itself from the load
//! balancer's local address (there is no kernel socket to lean on: on DPDK
//! there is no kernel at all).
//!
//! - TCP: the handshake completes (a SYN-ACK comes back); the probe then
//!   resets the connection.
//! - HTTP: after the handshake, `GET path`; the status code of the reply
//!   must be in `expected_codes`.
//! - UDP: a datagram; an ICMP port-unreachable within the timeout marks a
//!   failure, silence a success (which is why backends must allow ICMP).
//!
//! Replies reach the checker from the workers (packets to a local address
//! that no session claims) over a bounded channel.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use lb_core::model::{HealthProtocol, ServerGroup};
use lb_core::packet::{self, FrameSpec, MacAddr};
use lb_core::pipeline::{Health, Snapshot};

use crate::neigh::Neighbors;

/// What the health checker needs of the daemon it runs in.
pub trait Host: Send + Sync {
    /// Whether the checker is to stop.
    fn stopping(&self) -> bool;
    /// The running configuration and its servers' health, published together.
    fn current(&self) -> (Arc<Snapshot>, Arc<HealthTable>);
    /// The neighbour table the workers fill from the answers they receive.
    fn neighbors(&self) -> &Neighbors;
}

/// How the checker puts a frame on a port.
pub trait ProbeSender: Send {
    /// The port's Ethernet address.
    fn mac(&self) -> [u8; 6];
    /// Sends (or queues for sending) one complete Ethernet frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
}

/// Source ports of probes: above the FULLNAT range, so replies never meet
/// a session.
pub const PROBE_PORTS: std::ops::RangeInclusive<u16> = lb_core::nat::PROBE_FIRST_PORT..=u16::MAX;

/// The health of every server of one configuration generation.
#[derive(Debug)]
pub struct HealthTable {
    groups: Vec<Vec<ServerHealth>>,
    /// Drain and slow start, published with the health (see
    /// [`crate::servers`]).
    pub servers: crate::servers::ServerTable,
}

#[derive(Debug)]
pub struct ServerHealth {
    /// The key that survives reloads: (group id, server name, port).
    pub key: (String, String, u16),
    pub up: AtomicBool,
    /// Whether any check has concluded yet.
    pub checked: AtomicBool,
    pub changes: AtomicU64,
}

impl HealthTable {
    /// A table for `snap`, keeping the state of servers that `old` knew.
    pub fn new(snap: &Snapshot, old: Option<&HealthTable>) -> HealthTable {
        let mut prev: HashMap<&(String, String, u16), &ServerHealth> = HashMap::new();
        if let Some(old) = old {
            for s in old.groups.iter().flatten() {
                prev.insert(&s.key, s);
            }
        }
        let groups = snap
            .cfg
            .server_groups
            .iter()
            .map(|g| {
                g.servers
                    .iter()
                    .map(|s| {
                        let key = (g.id.clone(), s.name.clone(), s.port);
                        let (up, checked, changes) = match prev.get(&key) {
                            Some(p) if g.health_check.enabled => (
                                p.up.load(Ordering::Relaxed),
                                p.checked.load(Ordering::Relaxed),
                                p.changes.load(Ordering::Relaxed),
                            ),
                            _ => (true, false, 0),
                        };
                        ServerHealth {
                            key,
                            up: AtomicBool::new(up),
                            checked: AtomicBool::new(checked),
                            changes: AtomicU64::new(changes),
                        }
                    })
                    .collect()
            })
            .collect();
        HealthTable {
            groups,
            servers: crate::servers::ServerTable::new(snap, old.map(|o| &o.servers)),
        }
    }

    pub fn server(&self, group: usize, server: usize) -> Option<&ServerHealth> {
        self.groups.get(group).and_then(|g| g.get(server))
    }
}

impl Health for HealthTable {
    fn is_up(&self, group: usize, server: usize) -> bool {
        self.server(group, server)
            .is_none_or(|s| s.up.load(Ordering::Relaxed))
    }

    fn servers_epoch(&self) -> u64 {
        self.servers.epoch()
    }

    fn weight(&self, group: usize, server: usize) -> Option<u32> {
        self.servers.weight(group, server)
    }

    fn must_close(&self, group: usize, server: usize) -> bool {
        self.servers.must_close(group, server)
    }
}

/// One target of checks: a server of a group, probed at one address.
#[derive(Debug)]
struct Target {
    group: usize,
    server: usize,
    proto: HealthProtocol,
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    path: String,
    expected: Vec<(u16, u16)>,
    interval: Duration,
    timeout: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    out_port: u32,
    next_hop: IpAddr,
}

#[derive(Debug, Default)]
struct Progress {
    successes: u32,
    failures: u32,
    next: Option<Instant>,
    probe: Option<Probe>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    sport: u16,
    isn: u32,
    deadline: Instant,
    state: ProbeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What a probe waits for.
enum ProbeState {
    SynAck,
    /// HTTP: the request is out; waiting for the status line.
    StatusLine {
        server_isn: u32,
    },
    /// UDP: waiting for an ICMP error until the deadline.
    IcmpError,
}

/// Runs the checks until the host stops.
pub fn run<H: Host + 'static, S: ProbeSender>(
    shared: Arc<H>,
    replies: Receiver<Vec<u8>>,
    mut senders: Vec<S>,
) {
    let host: &dyn Host = &*shared;
    let mut progress: HashMap<(String, String, u16), Progress> = HashMap::new();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut seed: u32 = (0x9e37_79b9 ^ std::process::id() ^ clock) | 1;
    // Start somewhere new each run, so a backend still holding state for a
    // probe of a previous run does not answer this run's first probes.
    let span = u32::from(u16::MAX - *PROBE_PORTS.start()) + 1;
    let mut next_sport = *PROBE_PORTS.start() + u16::try_from(seed % span).unwrap_or(0);
    let mut generation = 0;
    let mut targets: Vec<Target> = Vec::new();
    while !host.stopping() {
        let (snap, table) = host.current();
        let rt = Current {
            snap: &snap,
            health: &table,
        };
        if rt.snap.generation != generation {
            generation = rt.snap.generation;
            targets = build_targets(rt.snap);
            let keep: std::collections::HashSet<_> =
                targets.iter().map(|t| key_of(rt.snap, t)).collect();
            progress.retain(|k, _| keep.contains(k));
        }
        let now = Instant::now();
        for t in &targets {
            let key = key_of(rt.snap, t);
            let p = progress.entry(key).or_default();
            // A probe that ran out of time concludes.
            if let Some(probe) = p.probe {
                if now >= probe.deadline {
                    p.probe = None;
                    if probe.state != ProbeState::IcmpError {
                        // Let the server forget a half-open probe.
                        send_tcp(
                            host,
                            &mut senders,
                            t,
                            &probe,
                            probe.isn.wrapping_add(1),
                            0,
                            TCP_RST,
                            Vec::new(),
                        );
                    }
                    let ok = probe.state == ProbeState::IcmpError;
                    conclude(
                        host,
                        rt.health,
                        t,
                        p,
                        ok,
                        if ok { "no ICMP error" } else { "timeout" },
                    );
                }
            }
            if p.probe.is_none() && p.next.is_none_or(|n| now >= n) {
                p.next = Some(now + t.interval);
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let sport = next_sport;
                next_sport = if next_sport == u16::MAX {
                    *PROBE_PORTS.start()
                } else {
                    next_sport + 1
                };
                // Under `enforce`, the backend's own rules decide whether the
                // probe may reach it at all.
                let admitted = match rt.snap.cfg.server_groups[t.group].servers[t.server].instance {
                    Some(inst) => {
                        let key = lb_core::flow::FlowKey {
                            src: t.src,
                            dst: t.dst,
                            proto: if t.proto == HealthProtocol::Udp {
                                17
                            } else {
                                6
                            },
                            sport,
                            dport: t.port,
                        };
                        rt.snap.backend_admits(inst, &key, false).is_ok()
                    }
                    None => true,
                };
                if !admitted {
                    conclude(
                        host,
                        rt.health,
                        t,
                        p,
                        false,
                        "denied by the backend's security group or network ACL",
                    );
                    continue;
                }
                let probe = Probe {
                    sport,
                    isn: seed,
                    deadline: now + t.timeout,
                    state: if t.proto == HealthProtocol::Udp {
                        ProbeState::IcmpError
                    } else {
                        ProbeState::SynAck
                    },
                };
                if send_probe(host, &mut senders, t, &probe, now) {
                    p.probe = Some(probe);
                } else {
                    conclude(host, rt.health, t, p, false, "next hop unresolved");
                }
            }
        }
        // Replies, for up to 10 ms.
        let until = Instant::now() + Duration::from_millis(10);
        while let Ok(frame) = replies.recv_deadline(until) {
            handle_reply(host, &rt, &targets, &mut progress, &mut senders, &frame);
        }
    }
}

fn key_of(snap: &Snapshot, t: &Target) -> (String, String, u16) {
    let g = &snap.cfg.server_groups[t.group];
    (
        g.id.clone(),
        g.servers[t.server].name.clone(),
        g.servers[t.server].port,
    )
}

/// The probes of a configuration: every server of every group whose check
/// is enabled and that a listener uses, from the local address of a load
/// balancer using it (or the egress port's address).
fn build_targets(snap: &Snapshot) -> Vec<Target> {
    let mut v = Vec::new();
    for (gi, g) in snap.cfg.server_groups.iter().enumerate() {
        let hc = &g.health_check;
        if !hc.enabled {
            continue;
        }
        let users: Vec<_> = snap
            .cfg
            .load_balancers
            .iter()
            .filter(|lb| lb.listeners.iter().any(|l| l.server_group == gi))
            .collect();
        if users.is_empty() {
            continue;
        }
        for (si, s) in g.servers.iter().enumerate() {
            // One address per server: IPv4 first, as most checks do.
            let Some(dst) = s.addresses.iter().copied().min_by_key(|a| a.is_ipv6()) else {
                continue;
            };
            let Some(hop) = snap.route(dst) else { continue };
            let src = users
                .iter()
                .flat_map(|lb| lb.local_addresses.iter())
                .copied()
                .find(|a| a.is_ipv6() == dst.is_ipv6())
                .or_else(|| port_address(snap, hop.port, dst));
            let Some(src) = src else { continue };
            v.push(Target {
                group: gi,
                server: si,
                proto: hc.protocol,
                src,
                dst,
                port: hc.port.unwrap_or(s.port),
                path: hc.path.clone(),
                expected: hc.expected_codes.clone(),
                interval: Duration::from_millis(u64::from(hc.interval_ms)),
                timeout: Duration::from_millis(u64::from(hc.timeout_ms)),
                healthy_threshold: hc.healthy_threshold,
                unhealthy_threshold: hc.unhealthy_threshold,
                out_port: hop.port,
                next_hop: hop.next_hop,
            });
        }
    }
    v
}

/// The (source, server) address pairs the health checker probes under
/// `snap`: where its replies come from and go to.
pub fn probe_sources(snap: &Snapshot) -> Vec<(IpAddr, IpAddr)> {
    build_targets(snap).iter().map(|t| (t.src, t.dst)).collect()
}

/// An address of port `port` of `dst`'s family, preferring one whose
/// subnet holds `dst`.
pub fn port_address(snap: &Snapshot, port: u32, dst: IpAddr) -> Option<IpAddr> {
    let addrs = &snap.cfg.ports.get(port as usize)?.addresses;
    addrs
        .iter()
        .find(|n| n.contains(&dst))
        .or_else(|| addrs.iter().find(|n| n.addr().is_ipv6() == dst.is_ipv6()))
        .map(|n| n.addr())
}

fn conclude(
    host: &dyn Host,
    table: &HealthTable,
    t: &Target,
    p: &mut Progress,
    ok: bool,
    why: &str,
) {
    let Some(h) = table.server(t.group, t.server) else {
        return;
    };
    if ok {
        p.successes += 1;
        p.failures = 0;
    } else {
        p.failures += 1;
        p.successes = 0;
    }
    let was_up = h.up.load(Ordering::Relaxed);
    let first = !h.checked.swap(true, Ordering::Relaxed);
    // The first result decides at once; after that the thresholds apply.
    let now_up = if first {
        ok
    } else if was_up {
        p.failures < t.unhealthy_threshold
    } else {
        p.successes >= t.healthy_threshold
    };
    if now_up != was_up {
        h.up.store(now_up, Ordering::Relaxed);
        h.changes.fetch_add(1, Ordering::Relaxed);
        let (g, s, port) = &h.key;
        if now_up {
            tracing::info!(group = %g, server = %s, port, "server is up ({why})");
        } else {
            tracing::warn!(group = %g, server = %s, port, "server is down ({why})");
        }
    }
    let _ = host;
}

fn mac_for<S: ProbeSender>(
    host: &dyn Host,
    senders: &mut [S],
    t: &Target,
    now: Instant,
) -> Option<[u8; 6]> {
    if let Some(e) = host.neighbors().lookup(t.out_port, t.next_hop, now) {
        return Some(e.mac);
    }
    let sender = senders.get_mut(t.out_port as usize)?;
    let src = if t.next_hop.is_ipv6() == t.src.is_ipv6() {
        t.src
    } else {
        return None;
    };
    if !host.neighbors().resolving(t.out_port, t.next_hop, now) {
        return None;
    }
    let mut frame = crate::l2::solicit(sender.mac(), src, t.next_hop);
    crate::l2::set_vlan(&mut frame, vlan_of(host, t.out_port));
    let _ = sender.send(&frame);
    // Give the neighbour a moment; the workers learn its answer.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        if let Some(e) = host
            .neighbors()
            .lookup(t.out_port, t.next_hop, Instant::now())
        {
            return Some(e.mac);
        }
    }
    None
}

fn send_probe<S: ProbeSender>(
    host: &dyn Host,
    senders: &mut [S],
    t: &Target,
    probe: &Probe,
    now: Instant,
) -> bool {
    let Some(dst_mac) = mac_for(host, senders, t, now) else {
        return false;
    };
    let Some(sender) = senders.get_mut(t.out_port as usize) else {
        return false;
    };
    let (proto, flags, payload) = match t.proto {
        HealthProtocol::Udp => (17, 0, b"lbd health check\n".to_vec()),
        _ => (6, TCP_SYN, Vec::new()),
    };
    let mut frame = probe_frame(
        sender.mac(),
        dst_mac,
        t,
        probe,
        proto,
        flags,
        probe.isn,
        0,
        payload,
    );
    crate::l2::set_vlan(&mut frame, vlan_of(host, t.out_port));
    sender.send(&frame).is_ok()
}

/// The VLAN the probes of port `port` carry.
fn vlan_of(host: &dyn Host, port: u32) -> Option<u16> {
    crate::l2::port_vlan(&host.current().0, port)
}

/// The snapshot and health table the checker works with in one round.
struct Current<'a> {
    snap: &'a Snapshot,
    health: &'a HealthTable,
}

/// A frame of probe `probe` to target `t`.
#[allow(clippy::too_many_arguments)]
fn probe_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    t: &Target,
    probe: &Probe,
    proto: u8,
    tcp_flags: u8,
    tcp_seq: u32,
    tcp_ack: u32,
    payload: Vec<u8>,
) -> Vec<u8> {
    packet::build_frame(&FrameSpec {
        src_mac: MacAddr(src_mac),
        dst_mac: MacAddr(dst_mac),
        vlan: None,
        src: t.src,
        dst: t.dst,
        proto,
        sport: probe.sport,
        dport: t.port,
        tcp_flags,
        tcp_seq,
        tcp_ack,
        icmp: None,
        ttl: 64,
        payload,
    })
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

fn handle_reply<S: ProbeSender>(
    host: &dyn Host,
    rt: &Current<'_>,
    targets: &[Target],
    progress: &mut HashMap<(String, String, u16), Progress>,
    senders: &mut [S],
    frame: &[u8],
) {
    let Ok(p) = packet::parse(frame) else { return };
    let Some(key) = p.flow_key() else { return };
    // ICMP errors about a UDP probe: the embedded packet is the probe.
    let (probe_key, icmp_error) = match (key.proto, p.icmp) {
        (1, Some((3, _))) | (58, Some((1, _))) => match packet::parse_icmp_inner(frame, &p) {
            Ok(inner) => (inner.reversed(), true),
            Err(_) => return,
        },
        _ => (key, false),
    };
    // probe_key is as the server sends: server → local.
    let Some(t) = targets.iter().find(|t| {
        t.dst == probe_key.src
            && t.src == probe_key.dst
            && t.port == probe_key.sport
            && PROBE_PORTS.contains(&probe_key.dport)
    }) else {
        return;
    };
    let k = key_of(rt.snap, t);
    let Some(pr) = progress.get_mut(&k) else {
        return;
    };
    let Some(mut probe) = pr.probe else { return };
    if probe.sport != probe_key.dport {
        return;
    }
    if icmp_error {
        pr.probe = None;
        conclude(
            host,
            rt.health,
            t,
            pr,
            false,
            "ICMP destination unreachable",
        );
        return;
    }
    if key.proto != 6 {
        return;
    }
    let flags = p.tcp_flags;
    let Some(tcp) = frame
        .get(p.l4_offset..p.l3_end())
        .and_then(|b| packet::TcpPacket::new_checked(b).ok())
    else {
        return;
    };
    let seq = tcp.seq_number();
    let ack = tcp.ack_number();
    let payload = tcp.payload();
    match probe.state {
        ProbeState::SynAck
            if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
                && ack == probe.isn.wrapping_add(1) =>
        {
            if t.proto == HealthProtocol::Tcp {
                send_tcp(
                    host,
                    senders,
                    t,
                    &probe,
                    probe.isn.wrapping_add(1),
                    0,
                    TCP_RST,
                    Vec::new(),
                );
                pr.probe = None;
                conclude(host, rt.health, t, pr, true, "TCP handshake completed");
            } else {
                let req = format!(
                    "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: lbd-health-check\r\nConnection: close\r\n\r\n",
                    t.path,
                    host_header(t.dst, t.port)
                );
                send_tcp(
                    host,
                    senders,
                    t,
                    &probe,
                    probe.isn.wrapping_add(1),
                    seq.wrapping_add(1),
                    TCP_ACK | TCP_PSH,
                    req.into_bytes(),
                );
                probe.state = ProbeState::StatusLine { server_isn: seq };
                pr.probe = Some(probe);
            }
        }
        ProbeState::StatusLine { .. } if !payload.is_empty() => {
            let status = parse_status(payload);
            let ours = ack;
            send_tcp(host, senders, t, &probe, ours, 0, TCP_RST, Vec::new());
            pr.probe = None;
            match status {
                Some(code) if t.expected.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)) => {
                    conclude(host, rt.health, t, pr, true, &format!("HTTP {code}"))
                }
                Some(code) => conclude(
                    host,
                    rt.health,
                    t,
                    pr,
                    false,
                    &format!("HTTP {code} not expected"),
                ),
                None => conclude(host, rt.health, t, pr, false, "no HTTP status line"),
            }
        }
        _ if flags & TCP_RST != 0 => {
            pr.probe = None;
            conclude(host, rt.health, t, pr, false, "connection refused");
        }
        ProbeState::StatusLine { .. } if flags & TCP_FIN != 0 => {
            send_tcp(host, senders, t, &probe, ack, 0, TCP_RST, Vec::new());
            pr.probe = None;
            conclude(host, rt.health, t, pr, false, "closed without a reply");
        }
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn send_tcp<S: ProbeSender>(
    host: &dyn Host,
    senders: &mut [S],
    t: &Target,
    probe: &Probe,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: Vec<u8>,
) {
    let Some(dst_mac) = host
        .neighbors()
        .lookup(t.out_port, t.next_hop, Instant::now())
        .map(|e| e.mac)
    else {
        return;
    };
    let Some(sender) = senders.get_mut(t.out_port as usize) else {
        return;
    };
    let mut frame = probe_frame(sender.mac(), dst_mac, t, probe, 6, flags, seq, ack, payload);
    crate::l2::set_vlan(&mut frame, vlan_of(host, t.out_port));
    let _ = sender.send(&frame);
}

fn host_header(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(payload: &[u8]) -> Option<u16> {
    let line = payload.split(|&b| b == b'\r' || b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = words.next()?.parse().ok()?;
    (100..=599).contains(&code).then_some(code)
}

/// A group's servers and their health, for `lbctl stats`.
pub fn describe(group: &ServerGroup, table: &HealthTable, gi: usize) -> Vec<(String, bool, bool)> {
    group
        .servers
        .iter()
        .enumerate()
        .map(|(si, s)| {
            let h = table.server(gi, si);
            (
                s.name.clone(),
                h.is_none_or(|h| h.up.load(Ordering::Relaxed)),
                h.is_some_and(|h| h.checked.load(Ordering::Relaxed)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 999 Nope\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
