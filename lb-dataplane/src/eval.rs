//! `lbctl eval`: runs a packet trace through the pipeline the workers run,
//! with no network I/O.
//!
//! Trace lines (see CONFIG.md):
//!
//! ```text
//! # comment
//! <time_s> <proto> <src> > <dst> [<tcp_flags>] [icmp=<type>/<code>]
//! @health <server_group> <server> up|down
//! @reload <config.toml>
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use lb_core::flow::{proto_from_name, FlowKey};
use lb_core::model::proto;
use lb_core::packet::{build_frame, FrameSpec, MacAddr};
use lb_core::pipeline::{secs, LocalKind, RxInfo, Snapshot, Verdict, Worker};
use lb_core::Nanos;

/// One parsed line of a trace.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceLine {
    Packet(TracePacket),
    Health {
        group: String,
        server: String,
        up: bool,
    },
    Reload(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TracePacket {
    pub time: f64,
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp: Option<(u8, u8)>,
}

/// Parses one trace line; `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<TraceLine>> {
    let text = line.split('#').next().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if let Some(cmd) = words[0].strip_prefix('@') {
        return match (cmd, words.as_slice()) {
            ("health", [_, group, server, state]) => {
                let up = match *state {
                    "up" => true,
                    "down" => false,
                    other => bail!("health state must be up or down, not {other:?}"),
                };
                Ok(Some(TraceLine::Health {
                    group: group.to_string(),
                    server: server.to_string(),
                    up,
                }))
            }
            ("health", _) => bail!("expected: @health <server_group> <server> up|down"),
            ("reload", [_, path]) => Ok(Some(TraceLine::Reload(PathBuf::from(path)))),
            ("reload", _) => bail!("expected: @reload <config.toml>"),
            (other, _) => bail!("unknown directive @{other}"),
        };
    }
    if words.len() < 5 || words[3] != ">" {
        bail!("expected: <time_s> <proto> <src> > <dst> [<tcp_flags>] [icmp=<type>/<code>]");
    }
    let time: f64 = words[0]
        .parse()
        .map_err(|_| anyhow!("bad time {:?}: seconds expected", words[0]))?;
    if !time.is_finite() || time < 0.0 {
        bail!("bad time {:?}: non-negative seconds expected", words[0]);
    }
    let proto =
        proto_from_name(words[1]).ok_or_else(|| anyhow!("unknown protocol {:?}", words[1]))?;
    let has_ports = matches!(proto, proto::TCP | proto::UDP);
    let (src, sport) = parse_endpoint(words[2], has_ports)?;
    let (dst, dport) = parse_endpoint(words[4], has_ports)?;
    if src.is_ipv6() != dst.is_ipv6() {
        bail!("source and destination must be of one address family");
    }
    let mut tcp_flags = None;
    let mut icmp = None;
    for w in &words[5..] {
        if let Some(v) = w.strip_prefix("icmp=") {
            let (t, c) = v
                .split_once('/')
                .ok_or_else(|| anyhow!("icmp=<type>/<code> expected, got {w:?}"))?;
            let t: u8 = t.parse().map_err(|_| anyhow!("bad icmp type in {w:?}"))?;
            let c: u8 = c.parse().map_err(|_| anyhow!("bad icmp code in {w:?}"))?;
            icmp = Some((t, c));
        } else if proto == proto::TCP && tcp_flags.is_none() {
            tcp_flags = Some(parse_flags(w)?);
        } else {
            bail!("unexpected {w:?}");
        }
    }
    let is_icmp = matches!(proto, proto::ICMP | proto::ICMPV6);
    if icmp.is_some() && !is_icmp {
        bail!("icmp= is only for icmp and icmpv6 packets");
    }
    if is_icmp && (proto == proto::ICMPV6) != src.is_ipv6() {
        bail!("icmp is for IPv4 and icmpv6 for IPv6");
    }
    // ICMP defaults to an echo request, whose identifier stands in for the ports.
    let icmp = if is_icmp {
        Some(icmp.unwrap_or(if proto == proto::ICMP {
            (8, 0)
        } else {
            (128, 0)
        }))
    } else {
        None
    };
    let echo_id = 0x4c42;
    let (sport, dport) = match icmp {
        Some((8 | 0, _)) | Some((128 | 129, _)) => (echo_id, echo_id),
        _ => (sport, dport),
    };
    Ok(Some(TraceLine::Packet(TracePacket {
        time,
        key: FlowKey {
            src,
            dst,
            proto,
            sport,
            dport,
        },
        tcp_flags: tcp_flags.unwrap_or(TCP_ACK),
        icmp,
    })))
}

const TCP_ACK: u8 = 0x10;

fn parse_flags(w: &str) -> Result<u8> {
    let mut f = 0u8;
    for c in w.chars() {
        f |= match c.to_ascii_uppercase() {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            'A' => 0x10,
            'U' => 0x20,
            _ => bail!("bad tcp flags {w:?}: letters from SAFRPU expected"),
        };
    }
    Ok(f)
}

fn parse_endpoint(s: &str, with_port: bool) -> Result<(IpAddr, u16)> {
    if !with_port {
        let a = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| anyhow!("bad address {s:?}"))?;
        return Ok((a, 0));
    }
    let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest
            .split_once("]:")
            .ok_or_else(|| anyhow!("bad endpoint {s:?}: [addr]:port expected"))?;
        (a, p)
    } else {
        s.rsplit_once(':')
            .filter(|(a, _)| !a.contains(':'))
            .ok_or_else(|| anyhow!("bad endpoint {s:?}: addr:port expected"))?
    };
    let addr: IpAddr = addr.parse().map_err(|_| anyhow!("bad address in {s:?}"))?;
    let port: u16 = port.parse().map_err(|_| anyhow!("bad port in {s:?}"))?;
    Ok((addr, port))
}

/// Servers marked down by `@health` lines.
#[derive(Debug, Default)]
struct TraceHealth {
    down: HashSet<(String, String)>,
    /// Resolved against the current snapshot.
    down_idx: HashSet<(usize, usize)>,
}

impl TraceHealth {
    fn resolve(&mut self, snap: &Snapshot) -> Vec<String> {
        let mut unknown = Vec::new();
        self.down_idx.clear();
        for (g, s) in &self.down {
            match find_server(snap, g, s) {
                Some(found) => self.down_idx.extend(found),
                None => unknown.push(format!("{g} {s}")),
            }
        }
        unknown
    }
}

impl lb_core::pipeline::Health for TraceHealth {
    fn is_up(&self, group: usize, server: usize) -> bool {
        !self.down_idx.contains(&(group, server))
    }
}

/// The servers of group `group` named `server` (instance id or address,
/// optionally with `:port`).
fn find_server(snap: &Snapshot, group: &str, server: &str) -> Option<Vec<(usize, usize)>> {
    let gi = snap.cfg.server_groups.iter().position(|g| g.id == group)?;
    let (name, port) = match parse_endpoint(server, true) {
        Ok((a, p)) => (a.to_string(), Some(p)),
        Err(_) => (
            server
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            None,
        ),
    };
    let found: Vec<(usize, usize)> = snap.cfg.server_groups[gi]
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            let by_instance = s.instance.is_some_and(|i| snap.cfg.instances[i].id == name);
            let by_addr = s.addresses.iter().any(|a| a.to_string() == name);
            (by_instance || by_addr) && port.is_none_or(|p| p == s.port)
        })
        .map(|(si, _)| (gi, si))
        .collect();
    (!found.is_empty()).then_some(found)
}

/// Runs `trace` (read from `trace_path`, used for messages and to resolve
/// `@reload` paths) against the configuration at `config`, writing one JSON
/// line per packet to `out` and reload notes to `err`.
pub fn run(
    config: &Path,
    trace: &str,
    trace_path: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let cfg = lb_config::load(config).map_err(|e| anyhow!("{e}"))?;
    let mut snap = Snapshot::compile(cfg, 1);
    let mut worker = Worker::new(0, 1, 1 << 20, 1 << 20);
    let mut health = TraceHealth::default();
    let base = trace_path.parent().unwrap_or(Path::new("."));
    let mut last_time = 0.0f64;
    for (n, line) in trace.lines().enumerate() {
        let lineno = n + 1;
        let parsed =
            parse_line(line).with_context(|| format!("{}:{lineno}", trace_path.display()))?;
        match parsed {
            None => {}
            Some(TraceLine::Health { group, server, up }) => {
                if find_server(&snap, &group, &server).is_none() {
                    bail!(
                        "{}:{lineno}: no server {server} in server group {group}",
                        trace_path.display()
                    );
                }
                if up {
                    health.down.remove(&(group, server));
                } else {
                    health.down.insert((group, server));
                }
                health.resolve(&snap);
            }
            Some(TraceLine::Reload(path)) => {
                let path = base.join(path);
                match lb_config::load(&path) {
                    Ok(cfg) => {
                        snap = Snapshot::compile(cfg, snap.generation + 1);
                        for unknown in health.resolve(&snap) {
                            writeln!(
                                err,
                                "{}:{lineno}: note: @health server {unknown} is gone after reload",
                                trace_path.display()
                            )?;
                        }
                        writeln!(
                            err,
                            "{}:{lineno}: reloaded {} (generation {})",
                            trace_path.display(),
                            path.display(),
                            snap.generation
                        )?;
                    }
                    Err(e) => {
                        writeln!(
                            err,
                            "{}:{lineno}: reload rejected, the previous configuration stays:\n{e}",
                            trace_path.display()
                        )?;
                    }
                }
            }
            Some(TraceLine::Packet(p)) => {
                if p.time < last_time {
                    bail!(
                        "{}:{lineno}: time goes backwards ({} after {last_time})",
                        trace_path.display(),
                        p.time
                    );
                }
                last_time = p.time;
                let now: Nanos = secs(p.time);
                let mut frame = build_frame(&frame_spec(&p));
                worker.housekeep(now, &snap);
                let v = worker.process(&mut frame, RxInfo::default(), now, &snap, &health);
                let obj = verdict_json(lineno, &v, &snap);
                writeln!(out, "{obj}")?;
            }
        }
    }
    Ok(())
}

/// The frame `lbctl eval` builds for a packet line.
pub fn frame_spec(p: &TracePacket) -> FrameSpec {
    FrameSpec {
        src_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
        dst_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
        vlan: None,
        src: p.key.src,
        dst: p.key.dst,
        proto: p.key.proto,
        sport: p.key.sport,
        dport: p.key.dport,
        tcp_flags: p.tcp_flags,
        tcp_seq: 1,
        tcp_ack: if p.tcp_flags & TCP_ACK != 0 { 1 } else { 0 },
        icmp: p.icmp,
        ttl: 64,
        payload: Vec::new(),
    }
}

/// The JSON object `lbctl eval` prints for one packet.
pub fn verdict_json(line: usize, v: &Verdict, snap: &Snapshot) -> serde_json::Value {
    match v {
        Verdict::Forward(f) => {
            let mut o = serde_json::json!({
                "line": line,
                "verdict": "forward",
                "reason": snap.describe(&f.reason),
            });
            if let Some((g, s)) = f.backend {
                o["backend"] = snap.cfg.server_groups[g as usize].servers[s as usize]
                    .name
                    .clone()
                    .into();
            }
            o["out"] = f.out.to_string().into();
            o
        }
        Verdict::Drop(r) => serde_json::json!({
            "line": line,
            "verdict": "drop",
            "reason": snap.describe(r),
        }),
        Verdict::Local(kind) => serde_json::json!({
            "line": line,
            "verdict": "local",
            "reason": match kind {
                LocalKind::Arp => "arp",
                LocalKind::Neighbor => "neighbor discovery",
                LocalKind::EchoRequest => "echo request to own address",
                LocalKind::ToSelf => "to own address",
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packet_lines() {
        let Some(TraceLine::Packet(p)) =
            parse_line("0.5 tcp 198.18.0.2:40000 > 198.18.0.10:80 S # c").expect("ok")
        else {
            panic!("packet expected")
        };
        assert_eq!(p.time, 0.5);
        assert_eq!(p.key.dport, 80);
        assert_eq!(p.tcp_flags, 0x02);
        let Some(TraceLine::Packet(p)) =
            parse_line("1 tcp [2001:db8::2]:40000 > [2001:db8::10]:81").expect("ok")
        else {
            panic!("packet expected")
        };
        assert_eq!(p.tcp_flags, TCP_ACK);
        assert!(p.key.src.is_ipv6());
        let Some(TraceLine::Packet(p)) =
            parse_line("2 icmp 198.18.0.2 > 198.19.1.11 icmp=3/4").expect("ok")
        else {
            panic!("packet expected")
        };
        assert_eq!(p.icmp, Some((3, 4)));
        assert_eq!(parse_line("   # only a comment").expect("ok"), None);
    }

    #[test]
    fn rejects_bad_lines() {
        for bad in [
            "x tcp 1.2.3.4:1 > 1.2.3.5:2",
            "0 tcp 1.2.3.4 > 1.2.3.5:2",
            "0 tcp 1.2.3.4:1 > 2001:db8::1:2",
            "0 tcp 1.2.3.4:1 1.2.3.5:2 S",
            "0 tcp 1.2.3.4:1 > 1.2.3.5:2 SX",
            "0 sctpx 1.2.3.4 > 1.2.3.5",
            "0 icmpv6 1.2.3.4 > 1.2.3.5",
            "0 udp 1.2.3.4:1 > 1.2.3.5:2 icmp=3/4",
            "@health g s sideways",
            "@frobnicate",
            "-1 udp 1.2.3.4:1 > 1.2.3.5:2",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} should be rejected");
        }
    }
}
