//! `lbctl eval`: runs a packet trace through the pipeline the workers run,
//! with no network I/O.
//!
//! Trace lines (see CONFIG.md):
//!
//! ```text
//! # comment
//! <time_s> <proto> <src> > <dst> [<tcp_flags>] [icmp=<type>/<code>]
//!     [ttl=<n>] [len=<ip_bytes>] [nodf] [opt=lsrr|ssrr|rr|rh0|rh2]
//!     [quote=<proto>,<src>,<dst>]
//!     [seq=N] [ack=N] [win=N] [data=N] [wscale=N]
//!     [port=<name>] [vlan=<id>|none]
//! @health <server_group> <server> up|down
//! @drain <server_group> <server> [<deadline_s>]
//! @undrain <server_group> <server>
//! @reload <config.toml>
//! @mtu <port> <mtu>
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lb_core::flow::{proto_from_name, FlowKey};
use lb_core::model::proto;
use lb_core::packet::{self, build_frame, FrameSpec, MacAddr};
use lb_core::pipeline::{secs, LocalKind, Reason, Released, RxInfo, Snapshot, Verdict, Worker};
use lb_core::Nanos;

use crate::servers::find_server;

/// Why `lbctl eval` stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The configuration does not load.
    #[error("{0}")]
    Config(lb_config::ConfigErrors),
    /// A trace line does not parse, or its packet cannot be built; `at`
    /// is `file:line`.
    #[error("{at}")]
    Trace {
        at: String,
        #[source]
        source: TraceError,
    },
    #[error("{at}: no server {server} in server group {group}")]
    NoServer {
        at: String,
        group: String,
        server: String,
    },
    #[error("{at}: no port {port}")]
    NoPort { at: String, port: String },
    #[error("{at}: time goes backwards ({time} after {last})")]
    TimeBackwards { at: String, time: f64, last: f64 },
    /// Writing the verdicts or the notes.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What is wrong with a trace line (or the packet it describes), in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TraceError(String);

/// A [`TraceError`] from a format string.
macro_rules! trace_error {
    ($($t:tt)*) => { TraceError(format!($($t)*)) };
}

/// Returns a [`TraceError`] from a format string.
macro_rules! fail {
    ($($t:tt)*) => { return Err(trace_error!($($t)*)) };
}

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
    /// `@drain` (with its deadline, seconds from the last packet's time) or
    /// `@undrain`, as `lbctl server drain|undrain` would.
    Drain {
        group: String,
        server: String,
        drain: bool,
        deadline_s: Option<f64>,
    },
    /// The MTU of a port (by name) from now on; 0: unknown, not checked.
    Mtu {
        port: String,
        mtu: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TracePacket {
    pub time: f64,
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp: Option<(u8, u8)>,
    /// `port=`: the port the packet arrives on; by default the port its
    /// source routes through.
    pub port: Option<String>,
    /// `vlan=`: `Some(None)` untagged, `Some(Some(id))` tagged; by default
    /// the arrival port's own VLAN.
    pub vlan: Option<Option<u16>>,
    pub ip: IpExtras,
    /// TCP sequence fields (`seq=`, `ack=`, `win=`, `data=` payload bytes,
    /// `wscale=` option); defaults seq 1, ack 1 with ACK set, window 65535,
    /// no payload, no option.
    pub tcp: TraceTcp,
}

/// What a trace line may say about the IP header and size of its packet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IpExtras {
    /// TTL or hop limit (default 64).
    pub ttl: Option<u8>,
    /// IP total length in bytes (without options), reached with payload.
    pub len: Option<usize>,
    /// IPv4 without "don't fragment" (set by default).
    pub no_df: bool,
    /// An IPv4 option or IPv6 routing header.
    pub opt: Option<IpOpt>,
    /// For an ICMP error: the packet it quotes, as that packet was sent.
    pub quote: Option<FlowKey>,
    /// `frag=OFFSET[+]`: an IP fragment at this byte offset, `+` when more
    /// follow; `fragid=N` its identification (default 1).
    pub frag: Option<(u16, bool)>,
    pub frag_id: Option<u32>,
}

/// The IPv4 options and IPv6 routing headers a trace can add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpOpt {
    /// IPv4 loose source route.
    Lsrr,
    /// IPv4 strict source route.
    Ssrr,
    /// IPv4 record route.
    RecordRoute,
    /// IPv6 routing header type 0 (source route).
    Rh0,
    /// IPv6 routing header type 2 (mobility).
    Rh2,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceTcp {
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub win: Option<u16>,
    /// Payload bytes.
    pub data: u16,
    pub wscale: Option<u8>,
}

impl TraceTcp {
    /// Takes a `name=value` word; false when it is not one of these.
    fn take(&mut self, w: &str) -> Result<bool, TraceError> {
        let Some((name, v)) = w.split_once('=') else {
            return Ok(false);
        };
        let bad = || trace_error!("bad number in {w:?}");
        match name {
            "seq" => self.seq = Some(v.parse().map_err(|_| bad())?),
            "ack" => self.ack = Some(v.parse().map_err(|_| bad())?),
            "win" => self.win = Some(v.parse().map_err(|_| bad())?),
            "data" => self.data = v.parse().map_err(|_| bad())?,
            "wscale" => self.wscale = Some(v.parse().map_err(|_| bad())?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Parses one trace line; `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<TraceLine>, TraceError> {
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
                    other => fail!("health state must be up or down, not {other:?}"),
                };
                Ok(Some(TraceLine::Health {
                    group: group.to_string(),
                    server: server.to_string(),
                    up,
                }))
            }
            ("health", _) => fail!("expected: @health <server_group> <server> up|down"),
            ("drain" | "undrain", _) => parse_drain(cmd, &words),
            ("reload", [_, path]) => Ok(Some(TraceLine::Reload(PathBuf::from(path)))),
            ("reload", _) => fail!("expected: @reload <config.toml>"),
            ("mtu", [_, port, mtu]) => Ok(Some(TraceLine::Mtu {
                port: port.to_string(),
                mtu: mtu
                    .parse()
                    .map_err(|_| trace_error!("bad mtu {mtu:?}: bytes expected"))?,
            })),
            ("mtu", _) => fail!("expected: @mtu <port> <mtu>"),
            (other, _) => fail!("unknown directive @{other}"),
        };
    }
    if words.len() < 5 || words[3] != ">" {
        fail!("expected: <time_s> <proto> <src> > <dst> [<tcp_flags>] [icmp=<type>/<code>] [port=<name>] [vlan=<id>|none]");
    }
    let time: f64 = words[0]
        .parse()
        .map_err(|_| trace_error!("bad time {:?}: seconds expected", words[0]))?;
    if !time.is_finite() || time < 0.0 {
        fail!("bad time {:?}: non-negative seconds expected", words[0]);
    }
    let proto =
        proto_from_name(words[1]).ok_or_else(|| trace_error!("unknown protocol {:?}", words[1]))?;
    let has_ports = matches!(proto, proto::TCP | proto::UDP);
    let (src, sport) = parse_endpoint(words[2], has_ports)?;
    let (dst, dport) = parse_endpoint(words[4], has_ports)?;
    if src.is_ipv6() != dst.is_ipv6() {
        fail!("source and destination must be of one address family");
    }
    let mut tcp_flags = None;
    let mut icmp = None;
    let mut ip = IpExtras::default();
    let mut tcp = TraceTcp::default();
    let mut port = None;
    let mut vlan = None;
    for w in &words[5..] {
        if parse_ip_extra(w, src.is_ipv6(), &mut ip)? || (proto == proto::TCP && tcp.take(w)?) {
            continue;
        }
        if let Some(v) = w.strip_prefix("port=") {
            if v.is_empty() {
                fail!("port=<name> expected, got {w:?}");
            }
            port = Some(v.to_string());
        } else if let Some(v) = w.strip_prefix("vlan=") {
            vlan = Some(match v {
                "none" => None,
                _ => Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|&id| id <= 4095)
                        .ok_or_else(|| {
                            trace_error!("bad vlan in {w:?}: 0..=4095 or none expected")
                        })?,
                ),
            });
        } else if let Some(v) = w.strip_prefix("icmp=") {
            let (t, c) = v
                .split_once('/')
                .ok_or_else(|| trace_error!("icmp=<type>/<code> expected, got {w:?}"))?;
            let t: u8 = t
                .parse()
                .map_err(|_| trace_error!("bad icmp type in {w:?}"))?;
            let c: u8 = c
                .parse()
                .map_err(|_| trace_error!("bad icmp code in {w:?}"))?;
            icmp = Some((t, c));
        } else if proto == proto::TCP && tcp_flags.is_none() {
            tcp_flags = Some(parse_flags(w)?);
        } else {
            fail!("unexpected {w:?}");
        }
    }
    let is_icmp = matches!(proto, proto::ICMP | proto::ICMPV6);
    if icmp.is_some() && !is_icmp {
        fail!("icmp= is only for icmp and icmpv6 packets");
    }
    if is_icmp && (proto == proto::ICMPV6) != src.is_ipv6() {
        fail!("icmp is for IPv4 and icmpv6 for IPv6");
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
        port,
        vlan,
        ip,
        tcp,
    })))
}

/// Reads one of the IP words of a packet line (`ttl=`, `len=`, `nodf`,
/// `opt=`, `quote=`) into `ip`; false when `w` is none of them.
fn parse_ip_extra(w: &str, v6: bool, ip: &mut IpExtras) -> Result<bool, TraceError> {
    if let Some(v) = w.strip_prefix("ttl=") {
        ip.ttl = Some(
            v.parse()
                .map_err(|_| trace_error!("bad ttl in {w:?}: 0-255"))?,
        );
    } else if let Some(v) = w.strip_prefix("len=") {
        ip.len = Some(
            v.parse()
                .map_err(|_| trace_error!("bad len in {w:?}: bytes"))?,
        );
    } else if let Some(v) = w.strip_prefix("frag=") {
        let (off, more) = v.strip_suffix('+').map_or((v, false), |o| (o, true));
        let off: u16 = off
            .parse()
            .ok()
            .filter(|o| o % 8 == 0)
            .ok_or_else(|| trace_error!("bad {w:?}: frag=<byte offset, a multiple of 8>[+]"))?;
        ip.frag = Some((off, more));
    } else if let Some(v) = w.strip_prefix("fragid=") {
        ip.frag_id = Some(v.parse().map_err(|_| trace_error!("bad fragid in {w:?}"))?);
    } else if w == "nodf" {
        if v6 {
            fail!("nodf is for IPv4 packets (IPv6 routers never fragment)");
        }
        ip.no_df = true;
    } else if let Some(v) = w.strip_prefix("opt=") {
        let opt = match v {
            "lsrr" => IpOpt::Lsrr,
            "ssrr" => IpOpt::Ssrr,
            "rr" => IpOpt::RecordRoute,
            "rh0" => IpOpt::Rh0,
            "rh2" => IpOpt::Rh2,
            _ => fail!("bad {w:?}: opt=lsrr, ssrr, rr (IPv4), rh0 or rh2 (IPv6) expected"),
        };
        if matches!(opt, IpOpt::Rh0 | IpOpt::Rh2) != v6 {
            fail!("{w:?} is for the other address family");
        }
        ip.opt = Some(opt);
    } else if let Some(v) = w.strip_prefix("quote=") {
        let parts: Vec<&str> = v.split(',').collect();
        let [p, s, d] = parts.as_slice() else {
            fail!("quote=<proto>,<src>,<dst> expected, got {w:?}");
        };
        let proto = proto_from_name(p).ok_or_else(|| trace_error!("unknown protocol {p:?}"))?;
        let ports = matches!(proto, proto::TCP | proto::UDP);
        let (src, sport) = parse_endpoint(s, ports)?;
        let (dst, dport) = parse_endpoint(d, ports)?;
        if src.is_ipv6() != v6 || dst.is_ipv6() != v6 {
            fail!("the quoted packet of {w:?} must be of the error's address family");
        }
        ip.quote = Some(FlowKey {
            src,
            dst,
            proto,
            sport,
            dport,
        });
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// Builds the frame of a trace packet: `frame_spec`, then what its IP
/// words say.
pub fn build_trace_frame(p: &TracePacket, vlan: Option<u16>) -> Result<Vec<u8>, TraceError> {
    let mut spec = frame_spec(p, vlan);
    if let Some(ttl) = p.ip.ttl {
        spec.ttl = ttl;
    }
    if let Some(q) = &p.ip.quote {
        // The quoted packet: its IP header and the first bytes of its L4.
        let quoted = build_frame(&FrameSpec {
            src: q.src,
            dst: q.dst,
            proto: q.proto,
            sport: q.sport,
            dport: q.dport,
            tcp_flags: 0x02,
            ..FrameSpec::default()
        });
        let qp = lb_core::packet::parse(&quoted).map_err(|e| trace_error!("quote: {e}"))?;
        spec.payload = quoted[qp.l3_offset..qp.l3_end()].to_vec();
    }
    if let Some(len) = p.ip.len {
        let f = build_frame(&spec);
        let base = f.len() - packet::parse(&f).map_or(14, |q| q.l3_offset);
        let extra = len
            .checked_sub(base)
            .ok_or_else(|| trace_error!("len={len} is shorter than the packet's {base} bytes"))?;
        spec.payload.resize(spec.payload.len() + extra, 0);
    }
    let mut frame = build_frame(&spec);
    if p.ip.no_df {
        let l3 = packet::parse(&frame).map_or(14, |q| q.l3_offset);
        frame[l3 + 6] &= !0x40;
        lb_core::packet::Ipv4Packet::new_unchecked(&mut frame[l3..]).fill_checksum();
    }
    match p.ip.opt {
        None => {}
        Some(IpOpt::Lsrr) => packet::add_ipv4_options(&mut frame, &[0x83, 7, 4, 198, 18, 0, 1]),
        Some(IpOpt::Ssrr) => packet::add_ipv4_options(&mut frame, &[0x89, 7, 4, 198, 18, 0, 1]),
        Some(IpOpt::RecordRoute) => packet::add_ipv4_options(&mut frame, &[7, 7, 4, 0, 0, 0, 0]),
        Some(IpOpt::Rh0 | IpOpt::Rh2) => {
            // One address, segments left 1.
            let kind = if p.ip.opt == Some(IpOpt::Rh0) { 0 } else { 2 };
            let mut body = vec![kind, 1, 0, 0, 0, 0];
            body.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            body.resize(6 + 16, 0);
            body[6 + 15] = 1;
            packet::add_ipv6_ext_header(&mut frame, 43, &body);
        }
    }
    set_tcp_window(&mut frame, p);
    if let Some((offset, more)) = p.ip.frag {
        mark_fragment(&mut frame, offset, more, p.ip.frag_id.unwrap_or(1));
    }
    Ok(frame)
}

/// Makes the packet of `frame` an IP fragment at `offset` (its bytes after
/// the IP header are the fragment's data): IPv4 flags and identification,
/// or an IPv6 fragment header.
fn mark_fragment(frame: &mut Vec<u8>, offset: u16, more: bool, id: u32) {
    let Ok(p) = packet::parse_general(frame) else {
        return;
    };
    if p.is_ipv6() {
        let mut body = ((offset & 0xfff8) | u16::from(more)).to_be_bytes().to_vec();
        body.extend_from_slice(&id.to_be_bytes());
        packet::add_ipv6_ext_header(frame, 44, &body);
    } else {
        let mut ip = lb_core::packet::Ipv4Packet::new_unchecked(&mut frame[p.l3_offset..]);
        ip.set_ident(id as u16);
        ip.set_frag(false, more, offset);
        ip.fill_checksum();
    }
}

/// The TCP window and window-scale option a trace line gives (the room for
/// the option is the first 4 bytes of the payload [`frame_spec`] made).
fn set_tcp_window(frame: &mut [u8], p: &TracePacket) {
    if p.key.proto != proto::TCP || (p.tcp.win.is_none() && p.tcp.wscale.is_none()) {
        return;
    }
    let Ok(parsed) = packet::parse(frame) else {
        return;
    };
    let l4 = parsed.l4_offset;
    if let Some(win) = p.tcp.win {
        frame[l4 + 14..l4 + 16].copy_from_slice(&win.to_be_bytes());
    }
    if let Some(ws) = p.tcp.wscale {
        frame[l4 + 12] = 6 << 4;
        frame[l4 + 20..l4 + 24].copy_from_slice(&[1, 3, 3, ws]);
    }
    packet::complete_l4_checksum(frame, &parsed, p.key.src, p.key.dst);
}

const TCP_ACK: u8 = 0x10;

fn parse_flags(w: &str) -> Result<u8, TraceError> {
    if w == "none" {
        return Ok(0);
    }
    let mut f = 0u8;
    for c in w.chars() {
        f |= match c.to_ascii_uppercase() {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            'A' => 0x10,
            'U' => 0x20,
            _ => fail!("bad tcp flags {w:?}: letters from SAFRPU expected"),
        };
    }
    Ok(f)
}

fn parse_endpoint(s: &str, with_port: bool) -> Result<(IpAddr, u16), TraceError> {
    if !with_port {
        let a = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| trace_error!("bad address {s:?}"))?;
        return Ok((a, 0));
    }
    let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest
            .split_once("]:")
            .ok_or_else(|| trace_error!("bad endpoint {s:?}: [addr]:port expected"))?;
        (a, p)
    } else {
        s.rsplit_once(':')
            .filter(|(a, _)| !a.contains(':'))
            .ok_or_else(|| trace_error!("bad endpoint {s:?}: addr:port expected"))?
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| trace_error!("bad address in {s:?}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| trace_error!("bad port in {s:?}"))?;
    Ok((addr, port))
}

/// `@drain <group> <server> [<deadline_s>]`, `@undrain <group> <server>`.
fn parse_drain(cmd: &str, words: &[&str]) -> Result<Option<TraceLine>, TraceError> {
    let (group, server, deadline_s) = match (cmd, words) {
        ("drain", [_, g, s]) | ("undrain", [_, g, s]) => (g, s, None),
        ("drain", [_, g, s, d]) => match d.parse::<f64>() {
            Ok(d) if d.is_finite() && d >= 0.0 => (g, s, Some(d)),
            _ => fail!("bad deadline {d:?}: non-negative seconds expected"),
        },
        ("drain", _) => fail!("expected: @drain <server_group> <server> [<deadline_s>]"),
        _ => fail!("expected: @undrain <server_group> <server>"),
    };
    Ok(Some(TraceLine::Drain {
        group: group.to_string(),
        server: server.to_string(),
        drain: cmd == "drain",
        deadline_s,
    }))
}

/// Servers marked down by `@health` lines, and drained by `@drain` lines
/// (with slow start: the trace's clock drives it, as lbd's does).
#[derive(Debug, Default)]
struct TraceHealth {
    down: HashSet<(String, String)>,
    /// Resolved against the current snapshot.
    down_idx: HashSet<(usize, usize)>,
    servers: Option<crate::servers::ServerTable>,
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

    fn servers_epoch(&self) -> u64 {
        self.servers.as_ref().map_or(0, |t| t.epoch())
    }

    fn weight(&self, group: usize, server: usize) -> Option<u32> {
        self.servers.as_ref()?.weight(group, server)
    }

    fn must_close(&self, group: usize, server: usize) -> bool {
        self.servers
            .as_ref()
            .is_some_and(|t| t.must_close(group, server))
    }
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
) -> Result<(), EvalError> {
    let cfg = lb_config::load(config).map_err(EvalError::Config)?;
    let mut snap = Snapshot::compile(cfg, 1);
    let mut log_names = vec![crate::access_log::Names::of(&snap)];
    let mut worker = Worker::new(0, 1, 1 << 20, 1 << 20);
    let mut health = TraceHealth {
        servers: Some(crate::servers::ServerTable::new(&snap, None)),
        ..TraceHealth::default()
    };
    let base = trace_path.parent().unwrap_or(Path::new("."));
    let mut last_time = 0.0f64;
    for (n, line) in trace.lines().enumerate() {
        let lineno = n + 1;
        let at = || format!("{}:{lineno}", trace_path.display());
        let parsed = parse_line(line).map_err(|source| EvalError::Trace { at: at(), source })?;
        match parsed {
            None => {}
            Some(TraceLine::Health { group, server, up }) => {
                if find_server(&snap, &group, &server).is_none() {
                    return Err(EvalError::NoServer {
                        at: at(),
                        group,
                        server,
                    });
                }
                if up {
                    health.down.remove(&(group, server));
                } else {
                    health.down.insert((group, server));
                }
                health.resolve(&snap);
            }
            Some(TraceLine::Drain {
                group,
                server,
                drain,
                deadline_s,
            }) => {
                let Some(table) = &health.servers else {
                    continue;
                };
                let done = if drain {
                    table.drain(&snap, &group, &server, deadline_s, secs(last_time))
                } else {
                    table.undrain(&snap, &group, &server)
                };
                if let Err(e) = done {
                    return Err(EvalError::Trace {
                        at: at(),
                        source: TraceError(e.to_string()),
                    });
                }
            }
            Some(TraceLine::Reload(path)) => {
                let path = base.join(path);
                match lb_config::load(&path) {
                    Ok(cfg) => {
                        snap = Snapshot::compile(cfg, snap.generation + 1);
                        let table =
                            crate::servers::ServerTable::new(&snap, health.servers.as_ref());
                        health.servers = Some(table);
                        log_names.push(crate::access_log::Names::of(&snap));
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
            Some(TraceLine::Mtu { port, mtu }) => {
                let Some(pi) = snap.cfg.ports.iter().position(|p| p.name == port) else {
                    return Err(EvalError::NoPort { at: at(), port });
                };
                worker.set_port_mtu(pi, mtu);
            }
            Some(TraceLine::Packet(p)) => {
                if p.time < last_time {
                    return Err(EvalError::TimeBackwards {
                        at: at(),
                        time: p.time,
                        last: last_time,
                    });
                }
                last_time = p.time;
                let now: Nanos = secs(p.time);
                let port = match &p.port {
                    Some(name) => Some(
                        snap.cfg
                            .ports
                            .iter()
                            .position(|q| &q.name == name)
                            .and_then(|i| u32::try_from(i).ok())
                            .ok_or_else(|| EvalError::NoPort {
                                at: at(),
                                port: name.clone(),
                            })?,
                    ),
                    // Where a well-behaved sender is: its source's route.
                    None => snap.route(p.key.src).map(|h| h.port),
                };
                let port_vlan = port
                    .and_then(|i| snap.cfg.ports.get(i as usize))
                    .and_then(|q| q.vlan);
                let mut frame = build_trace_frame(&p, p.vlan.unwrap_or(port_vlan))
                    .map_err(|source| EvalError::Trace { at: at(), source })?;
                let sent = frame.clone();
                worker.housekeep(now, &snap);
                if let Some(table) = &health.servers {
                    table.tick(&snap, &health, now);
                }
                let rx = RxInfo {
                    port,
                    ..RxInfo::default()
                };
                let v = worker.process(&mut frame, rx, now, &snap, &health);
                let mut obj = verdict_json(lineno, &v, &snap);
                add_answer(&mut obj, &v, &sent);
                add_access_log(&mut obj, &mut worker, &log_names);
                writeln!(out, "{obj}")?;
                // Fragments held for this line's first fragment go now.
                let mut released = Vec::new();
                worker.take_released(|_, _, r| {
                    if let Released::Forward(f) = r {
                        let mut o = verdict_json(lineno, &Verdict::Forward(f), &snap);
                        o["released"] = true.into();
                        released.push(o);
                    }
                });
                for o in released {
                    writeln!(out, "{o}")?;
                }
            }
        }
    }
    Ok(())
}

fn frame_spec(p: &TracePacket, vlan: Option<u16>) -> FrameSpec {
    FrameSpec {
        src_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
        dst_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
        vlan,
        src: p.key.src,
        dst: p.key.dst,
        proto: p.key.proto,
        sport: p.key.sport,
        dport: p.key.dport,
        tcp_flags: p.tcp_flags,
        tcp_seq: p.tcp.seq.unwrap_or(1),
        tcp_ack: p
            .tcp
            .ack
            .unwrap_or(if p.tcp_flags & TCP_ACK != 0 { 1 } else { 0 }),
        icmp: p.icmp,
        ttl: 64,
        payload: trace_payload(p),
    }
}

/// The bytes after the L4 header `build_frame` writes: for TCP, room for
/// the window-scale option, then the payload; for GRE, which `build_frame`
/// carries as is, a minimal header (RFC 2784: no checksum, key or
/// sequence number, version 0) announcing IPv4 or IPv6 inside.
fn trace_payload(p: &TracePacket) -> Vec<u8> {
    if p.key.proto == proto::GRE {
        let inner: u16 = if p.key.src.is_ipv6() { 0x86dd } else { 0x0800 };
        let [hi, lo] = inner.to_be_bytes();
        return vec![0, 0, hi, lo];
    }
    vec![0; usize::from(p.tcp.data) + if p.tcp.wscale.is_some() { 4 } else { 0 }]
}

/// The access-log lines the packet's line caused (sessions that started,
/// ended, or expired before it), as `"access_log"`: the objects `lbd`
/// writes, times counted from the trace's start as the Unix epoch.
fn add_access_log(
    obj: &mut serde_json::Value,
    worker: &mut Worker,
    names: &[crate::access_log::Names],
) {
    let mut lines = Vec::new();
    let mut text = String::new();
    worker.take_session_records(|r| {
        text.clear();
        let written = names
            .iter()
            .rev()
            .find(|n| n.generation() == r.generation)
            .is_some_and(|n| {
                crate::access_log::format_line(&mut text, &r, n, std::time::UNIX_EPOCH)
            });
        if let Some(v) = written
            .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
            .flatten()
        {
            lines.push(v);
        }
    });
    if !lines.is_empty() {
        obj["access_log"] = lines.into();
    }
}

/// The ICMP error `lbd` would send back for a dropped packet, as
/// `"answer"`.
fn add_answer(obj: &mut serde_json::Value, v: &Verdict, sent: &[u8]) {
    let Verdict::Drop(r) = v else { return };
    let Ok(p) = packet::parse(sent) else { return };
    if let Some(a) = r.icmp_answer(&p) {
        obj["answer"] = a.to_string().into();
    }
}

/// The JSON object `lbctl eval` prints for one packet.
pub fn verdict_json(line: usize, v: &Verdict, snap: &Snapshot) -> serde_json::Value {
    match v {
        Verdict::Forward(f) | Verdict::Send(f) => {
            let mut o = serde_json::json!({
                "line": line,
                "verdict": if matches!(v, Verdict::Send(_)) { "answer" } else { "forward" },
                "reason": snap.describe(&f.reason),
            });
            if let Some((g, s)) = f.backend {
                o["backend"] = snap.cfg.server_groups[g as usize].servers[s as usize]
                    .name
                    .clone()
                    .into();
            }
            o["out"] = match f.reason {
                // A fragment without the L4 header: no ports.
                Reason::FragmentFollows { .. } => {
                    let name = packet::protocol_name(f.out.proto).map(str::to_string);
                    let name = name.unwrap_or_else(|| f.out.proto.to_string());
                    format!("{name} {} > {}", f.out.src, f.out.dst)
                }
                _ => f.out.to_string(),
            }
            .into();
            o
        }
        Verdict::Drop(r) => serde_json::json!({
            "line": line,
            // A fragment waiting for its first fragment is not dropped yet.
            "verdict": if *r == Reason::FragmentHeld { "held" } else { "drop" },
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
        assert_eq!((p.port, p.vlan), (None, None));
        let Some(TraceLine::Packet(p)) =
            parse_line("0 tcp 198.19.1.12:40000 > 198.19.1.11:80 S port=ext vlan=100").expect("ok")
        else {
            panic!("packet expected")
        };
        assert_eq!((p.port.as_deref(), p.vlan), (Some("ext"), Some(Some(100))));
        let Some(TraceLine::Packet(p)) =
            parse_line("0 udp 198.18.0.2:1 > 198.18.0.10:53 vlan=none").expect("ok")
        else {
            panic!("packet expected")
        };
        assert_eq!(p.vlan, Some(None));
        assert_eq!(parse_line("   # only a comment").expect("ok"), None);
    }

    #[test]
    fn parses_ip_words() {
        let Some(TraceLine::Packet(p)) = parse_line(
            "1 icmp 198.19.1.12 > 198.19.2.21 icmp=3/3 ttl=1 len=600 nodf opt=lsrr quote=udp,198.19.1.11:5353,198.18.0.70:53",
        )
        .expect("ok") else {
            panic!("packet expected")
        };
        assert_eq!(p.ip.ttl, Some(1));
        assert_eq!(p.ip.len, Some(600));
        assert!(p.ip.no_df);
        assert_eq!(p.ip.opt, Some(IpOpt::Lsrr));
        let q = p.ip.quote.expect("quote");
        assert_eq!(q.to_string(), "udp 198.19.1.11:5353 > 198.18.0.70:53");
        let frame = build_trace_frame(&p, None).expect("frame");
        let parsed = packet::parse(&frame).expect("valid");
        assert_eq!((parsed.ttl, parsed.l3_len), (1, 600 + 8));
        assert!(packet::is_source_routed(&frame, &parsed));
        assert_eq!(
            packet::parse_icmp_inner(&frame, &parsed)
                .expect("quoted")
                .to_string(),
            q.to_string()
        );
        assert_eq!(
            parse_line("@mtu int 1280").expect("ok"),
            Some(TraceLine::Mtu {
                port: "int".into(),
                mtu: 1280
            })
        );
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
            "0 udp 1.2.3.4:1 > 1.2.3.5:2 port=",
            "0 udp 1.2.3.4:1 > 1.2.3.5:2 vlan=4096",
            "0 udp 1.2.3.4:1 > 1.2.3.5:2 vlan=x",
            "0 udp 1.2.3.4:1 > 1.2.3.5:2 ttl=300",
            "0 udp [2001:db8::1]:1 > [2001:db8::2]:2 nodf",
            "0 udp 1.2.3.4:1 > 1.2.3.5:2 opt=rh0",
            "0 udp 1.2.3.4:1 > 1.2.3.5:2 opt=bogus",
            "0 icmp 1.2.3.4 > 1.2.3.5 icmp=3/3 quote=udp,1.2.3.4:1",
            "0 icmp 1.2.3.4 > 1.2.3.5 icmp=3/3 quote=udp,[2001:db8::1]:1,1.2.3.4:2",
            "@mtu int",
            "@mtu int big",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn parses_drain_lines() {
        assert_eq!(
            parse_line("@drain sgp-web ecs02 2.5").expect("ok"),
            Some(TraceLine::Drain {
                group: "sgp-web".into(),
                server: "ecs02".into(),
                drain: true,
                deadline_s: Some(2.5),
            })
        );
        assert_eq!(
            parse_line("@undrain sgp-web 198.19.1.12:80").expect("ok"),
            Some(TraceLine::Drain {
                group: "sgp-web".into(),
                server: "198.19.1.12:80".into(),
                drain: false,
                deadline_s: None,
            })
        );
        for bad in [
            "@drain sgp-web",
            "@drain g s -1",
            "@drain g s x",
            "@undrain g s 5",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }
}
