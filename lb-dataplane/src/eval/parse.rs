//! The trace's lines, parsed.

use super::*;

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

pub(super) const TCP_ACK: u8 = 0x10;

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
