//! `bench gen`: a pktgen-style traffic generator for the load balancer.
//!
//! Frames are built in memory and sent through one port (AF_PACKET; any
//! [`PacketIo`] fits, so a DPDK port can stand in) for a bounded time,
//! flat out or paced by a token bucket on the monotonic clock (bursts of
//! up to 32). Three classes of TCP traffic go to the VIP:
//!
//! * **new**: a SYN of a flow never seen before (a fresh client address and
//!   port each time, from `--src-net`);
//! * **established**: packets (ACK|PSH) of a fixed set of `--flows` flows,
//!   each opened by a SYN during a warm-up before the measurement (SYNs the
//!   receiver did not see are sent again, so that established loss is not
//!   warm-up loss in disguise);
//! * **denied**: SYNs to `--deny-port`, which the load balancer must drop.
//!
//! Every frame carries a 10-byte stamp at the start of its TCP payload
//! (FULLNAT rewrites addresses and ports but leaves the payload alone):
//! a magic byte, a run nibble and the class, a 32-bit sequence number and
//! the low 32 bits of the send time in nanoseconds. A receiver on the
//! backend side (`--rx-iface`, e.g. the switch port facing the load
//! balancer) recognises its frames by the stamp and counts them per class,
//! with the send → receive latency in a histogram. Denied frames must not
//! arrive: any that do are reported as leaked.
//!
//! New flows start at a random point of the client tuple space (source
//! addresses x ports 1024-65535) in every run, so that a second run against
//! the same load balancer does not hit the first one's sessions.
//!
//! The generator answers ARP requests (and IPv6 neighbour solicitations)
//! for its source addresses on the TX interface, so that the load balancer
//! can resolve on-link clients when it sends replies back.
//!
//! Latency is measured in user space on both ends: it includes the TX
//! batching (a few µs) and the RX ring's block retire timeout (1 ms at
//! light load; the load balancer's own AF_PACKET ring adds the same).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use ipnet::IpNet;
use lb_core::packet::{self, checksum, FrameSpec, Kind, MacAddr};
use lb_dataplane::io::afpacket::{AfPacket, AfPacketOpts};
use lb_dataplane::io::{IoStats, PacketIo};

/// Bytes of the stamp at the start of the TCP payload.
pub const STAMP_LEN: usize = 10;
/// First byte of every stamp.
const MAGIC: u8 = 0x9e;
/// Most frames per burst (and per `sendmmsg`).
pub const BURST: usize = 32;
/// Longest run: the 32-bit nanosecond send stamp wraps after 4.29 s, which
/// bounds the measurable latency, not the run; the run is bounded for
/// safety.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Longest warm-up (opening the established flows).
const MAX_WARMUP: Duration = Duration::from_secs(10);
/// Rounds of warm-up SYNs: the first, and resends of those that did not
/// arrive.
const WARMUP_ROUNDS: usize = 4;
/// Most established flows (their index is the warm-up's sequence number).
const MAX_FLOWS: usize = 10_000_000;
/// Client ports of generated flows.
const PORT_BASE: u16 = 1024;
const PORTS: u64 = 65536 - PORT_BASE as u64;
/// Most source addresses taken from `--src-net`.
const MAX_SOURCES: usize = 65536;
/// Sequence numbers tracked for duplicate detection (a 32 MiB bitmap).
const DEDUP_LIMIT: u64 = 1 << 28;

const TCP_SYN: u8 = 0x02;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// The traffic classes; `Warmup` is the SYNs that open the established
/// flows before the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    New = 0,
    Established = 1,
    Denied = 2,
    Warmup = 3,
}

/// Number of classes (the length of the per-class counters).
pub const CLASSES: usize = 4;
/// Every class, in counter order.
pub const ALL: [Class; CLASSES] = [Class::New, Class::Established, Class::Denied, Class::Warmup];

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::New => "new",
            Class::Established => "established",
            Class::Denied => "denied",
            Class::Warmup => "warm-up",
        }
    }

    fn from_index(i: u8) -> Option<Class> {
        ALL.get(usize::from(i)).copied()
    }
}

/// Relative weights of the classes in the measured traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub new: u32,
    pub established: u32,
    pub denied: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            new: 60,
            established: 20,
            denied: 20,
        }
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;

    /// `new=60,established=20,denied=20`; classes left out weigh 0.
    fn from_str(s: &str) -> Result<Mix> {
        let mut m = Mix {
            new: 0,
            established: 0,
            denied: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| anyhow!("mix entry {part:?} is not CLASS=WEIGHT"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| anyhow!("mix weight {v:?} is not a whole number"))?;
            if v > 1_000_000 {
                bail!("mix weight {v} is too large (at most 1000000)");
            }
            match k.trim() {
                "new" => m.new = v,
                "established" | "est" => m.established = v,
                "denied" | "deny" => m.denied = v,
                other => bail!("unknown traffic class {other:?} (new, established, denied)"),
            }
        }
        if m.new + m.established + m.denied == 0 {
            bail!("the mix is empty: give at least one class a weight");
        }
        Ok(m)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "new={},established={},denied={}",
            self.new, self.established, self.denied
        )
    }
}

/// Where client addresses come from: a prefix or an inclusive range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrcNet {
    Net(IpNet),
    Range(IpAddr, IpAddr),
}

impl FromStr for SrcNet {
    type Err = anyhow::Error;

    /// `198.18.128.0/17`, or `198.18.0.100-198.18.0.200`.
    fn from_str(s: &str) -> Result<SrcNet> {
        if let Some((a, b)) = s.split_once('-') {
            let a: IpAddr = a.trim().parse().context("source range start")?;
            let b: IpAddr = b.trim().parse().context("source range end")?;
            if a.is_ipv4() != b.is_ipv4() {
                bail!("source range {s}: both ends must be of one family");
            }
            if ip_to_u128(a) > ip_to_u128(b) {
                bail!("source range {s}: the start is after the end");
            }
            return Ok(SrcNet::Range(a, b));
        }
        Ok(SrcNet::Net(s.parse().map_err(|_| {
            anyhow!("{s:?} is neither a prefix (198.18.128.0/17) nor a range (A-B)")
        })?))
    }
}

impl fmt::Display for SrcNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SrcNet::Net(n) => write!(f, "{n}"),
            SrcNet::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

fn ip_to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from_bits(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from_bits(v))
    }
}

impl SrcNet {
    fn is_ipv4(&self) -> bool {
        match self {
            SrcNet::Net(n) => matches!(n, IpNet::V4(_)),
            SrcNet::Range(a, _) => a.is_ipv4(),
        }
    }

    /// Up to [`MAX_SOURCES`] usable addresses, without `exclude`. A prefix
    /// loses its network and broadcast addresses (IPv4 shorter than /31)
    /// or its subnet-router anycast address (IPv6 shorter than /127).
    pub fn addresses(&self, exclude: &[IpAddr]) -> Vec<IpAddr> {
        let v4 = self.is_ipv4();
        let (first, last) = match *self {
            SrcNet::Range(a, b) => (ip_to_u128(a), ip_to_u128(b)),
            SrcNet::Net(n) => {
                let (lo, hi) = (ip_to_u128(n.network()), ip_to_u128(n.broadcast()));
                let trim = hi - lo >= 3;
                match n {
                    IpNet::V4(_) if trim => (lo + 1, hi - 1),
                    IpNet::V6(_) if trim => (lo + 1, hi),
                    _ => (lo, hi),
                }
            }
        };
        let mut out = Vec::new();
        let mut v = first;
        while out.len() < MAX_SOURCES {
            let a = u128_to_ip(v, v4);
            if !exclude.contains(&a) {
                out.push(a);
            }
            if v == last {
                break;
            }
            v += 1;
        }
        out
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        bail!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| anyhow!("{s:?} is not a MAC address"))?;
    }
    Ok(mac)
}

/// Parses `5s`, `500ms`, `2.5s`, `1m`, `100us` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a duration (e.g. 5s, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        other => bail!("unknown duration unit {other:?} (us, ms, s, m)"),
    };
    if !secs.is_finite() || secs <= 0.0 {
        bail!("the duration {s:?} must be positive");
    }
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow!("the duration {s:?} is too long"))
}

/// Parses a rate in packets per second: `20000`, `20k`, `1.5M`, or
/// `flat` (as fast as the port takes them) as `None`.
pub fn parse_rate(s: &str) -> Result<Option<u64>> {
    let s = s.trim();
    if matches!(s, "flat" | "max" | "0") {
        return Ok(None);
    }
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a rate (e.g. 20000, 20k, 1.5M, flat)"))?;
    let pps = v * mult;
    if !(1.0..=1e9).contains(&pps) {
        bail!("the rate {s:?} must be between 1 pps and 1 Gpps");
    }
    Ok(Some(pps.round() as u64))
}

/// A rate in packets per second; `None` is flat out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

impl FromStr for Rate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Rate> {
        parse_rate(s).map(Rate)
    }
}

/// Arguments of `bench gen`.
#[derive(Debug, Clone, Args)]
pub struct GenArgs {
    /// The interface to send on (toward the load balancer's client side).
    #[arg(long, value_name = "IF")]
    pub tx_iface: String,
    /// Open the TX interface in this network namespace (a name under
    /// /run/netns or a path).
    #[arg(long, value_name = "NS")]
    pub tx_netns: Option<String>,
    /// Count what arrives on this interface (the backend-facing link).
    #[arg(long, value_name = "IF")]
    pub rx_iface: Option<String>,
    /// Open the RX interface in this network namespace.
    #[arg(long, value_name = "NS")]
    pub rx_netns: Option<String>,
    /// Destination MAC of every frame: the load balancer's client-side port.
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub dst_mac: [u8; 6],
    /// The VIP (default 198.18.0.10, or 2001:db8:18::10 with --ipv6).
    #[arg(long, value_name = "ADDR")]
    pub vip: Option<IpAddr>,
    /// The allowed listener port (new and established traffic).
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// The denied port (denied traffic).
    #[arg(long, default_value_t = 81)]
    pub deny_port: u16,
    /// Class weights of the measured traffic.
    #[arg(long, default_value = "new=60,established=20,denied=20")]
    pub mix: Mix,
    /// Established flows (opened by a warm-up of SYNs before the run).
    #[arg(long, default_value_t = 10_000)]
    pub flows: usize,
    /// Packets per second (20000, 20k, 1.5M); "flat" or absent: flat out.
    #[arg(long, value_name = "PPS")]
    pub rate: Option<Rate>,
    /// How long to send (the warm-up and a drain come on top).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Ethernet frame length without the FCS (at least 64 for IPv4, 84
    /// for IPv6: headers and the stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Client addresses: a prefix or a range A-B (default 198.18.128.0/17,
    /// or 2001:db8:18:1::/64 with --ipv6).
    #[arg(long, value_name = "NET")]
    pub src_net: Option<SrcNet>,
    /// IPv6 traffic (changes the VIP and source defaults).
    #[arg(long)]
    pub ipv6: bool,
    /// How long the receiver keeps counting after the last frame is sent.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub drain: Duration,
    /// Seed of the class order and the choice of established flows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What one run does; see [`GenArgs`] for the meaning of each field.
#[derive(Debug, Clone)]
pub struct Opts {
    pub tx_iface: String,
    pub tx_netns: Option<String>,
    pub rx_iface: Option<String>,
    pub rx_netns: Option<String>,
    pub dst_mac: [u8; 6],
    pub vip: IpAddr,
    pub port: u16,
    pub deny_port: u16,
    pub mix: Mix,
    pub flows: usize,
    /// `None`: flat out.
    pub rate: Option<u64>,
    pub duration: Duration,
    pub size: usize,
    pub src: SrcNet,
    pub drain: Duration,
    pub seed: u64,
}

impl GenArgs {
    /// The run these arguments describe, checked.
    pub fn opts(&self) -> Result<Opts> {
        let vip = self.vip.unwrap_or(if self.ipv6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x10))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10))
        });
        if self.ipv6 != vip.is_ipv6() {
            bail!("--ipv6 and the VIP {vip} disagree on the address family");
        }
        let src = self.src_net.clone().unwrap_or_else(|| {
            SrcNet::Net(if vip.is_ipv6() {
                "2001:db8:18:1::/64".parse().expect("prefix")
            } else {
                "198.18.128.0/17".parse().expect("prefix")
            })
        });
        let o = Opts {
            tx_iface: self.tx_iface.clone(),
            tx_netns: self.tx_netns.clone(),
            rx_iface: self.rx_iface.clone(),
            rx_netns: self.rx_netns.clone(),
            dst_mac: self.dst_mac,
            vip,
            port: self.port,
            deny_port: self.deny_port,
            mix: self.mix,
            flows: self.flows,
            rate: self.rate.and_then(|r| r.0),
            duration: self.duration,
            size: self.size,
            src,
            drain: self.drain,
            seed: self.seed,
        };
        o.check()?;
        Ok(o)
    }
}

impl Opts {
    fn v6(&self) -> bool {
        self.vip.is_ipv6()
    }

    /// The smallest frame: headers and the stamp.
    pub fn min_size(&self) -> usize {
        14 + if self.v6() { 40 } else { 20 } + 20 + STAMP_LEN
    }

    /// Checks everything that can be checked before touching a port.
    pub fn check(&self) -> Result<()> {
        if self.ipv4_mismatch() {
            bail!(
                "the VIP {} and the sources {} are of different families",
                self.vip,
                self.src
            );
        }
        if self.dst_mac[0] & 1 != 0 {
            bail!("--dst-mac must be a unicast address (the load balancer's port)");
        }
        if self.dst_mac == [0; 6] {
            bail!("--dst-mac must not be 00:00:00:00:00:00");
        }
        if self.size < self.min_size() || self.size > 1514 {
            bail!(
                "--size {} is out of range: {}..=1514 bytes for {} (headers and the {STAMP_LEN}-byte stamp)",
                self.size,
                self.min_size(),
                if self.v6() { "IPv6" } else { "IPv4" }
            );
        }
        if self.duration > MAX_DURATION || self.drain > Duration::from_secs(10) {
            bail!("--duration is at most 1 h and --drain at most 10 s");
        }
        if self.port == self.deny_port && self.mix.denied > 0 {
            bail!("--port and --deny-port are the same ({})", self.port);
        }
        if self.mix.established > 0 && !(1..=MAX_FLOWS).contains(&self.flows) {
            bail!("established traffic needs --flows between 1 and {MAX_FLOWS}");
        }
        if self.port == 0 || self.deny_port == 0 {
            bail!("port 0 is not a listener port");
        }
        let sources = self.src.addresses(&[self.vip]).len() as u64;
        if sources == 0 {
            bail!("--src-net {} holds no usable address", self.src);
        }
        if sources * PORTS <= self.flows as u64 {
            bail!(
                "--src-net {} gives {} client tuples, not more than --flows {}",
                self.src,
                sources * PORTS,
                self.flows
            );
        }
        Ok(())
    }

    fn ipv4_mismatch(&self) -> bool {
        self.vip.is_ipv4() != self.src.is_ipv4()
    }
}

/// Enters network namespace `name` (a name under /run/netns, or a path)
/// on the calling thread.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = if name.contains('/') {
        name.to_string()
    } else {
        format!("/run/netns/{name}")
    };
    let f = File::open(&path).with_context(|| format!("network namespace {path}"))?;
    // SAFETY: setns has no memory-safety preconditions; the descriptor is
    // valid while `f` lives.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {path}"));
    }
    Ok(())
}

/// Opens an AF_PACKET port on `iface`, in namespace `netns` if given (from
/// a short-lived thread, so the caller stays where it is: the socket keeps
/// its namespace).
pub fn open_afpacket(
    iface: &str,
    netns: Option<&str>,
    opts: &AfPacketOpts,
) -> Result<Box<dyn PacketIo>> {
    let open = || -> Result<Box<dyn PacketIo>> {
        if let Some(ns) = netns {
            enter_netns(ns)?;
        }
        let port = AfPacket::open(iface, opts).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (needs CAP_NET_RAW: run as root)"
            } else {
                ""
            };
            anyhow!("AF_PACKET port on {iface}: {e}{hint}")
        })?;
        Ok(Box::new(port))
    };
    match netns {
        None => open(),
        Some(ns) => std::thread::scope(|s| {
            s.spawn(open)
                .join()
                .map_err(|_| anyhow!("opening {iface} in {ns}: the thread panicked"))?
        }),
    }
}

/// The ring of the receiving port: small blocks, so that a block fills and
/// is handed over quickly at high rates (at low rates the 1 ms retire
/// timeout bounds the wait).
pub fn rx_ring() -> AfPacketOpts {
    AfPacketOpts {
        block_size: 64 << 10,
        block_count: 128,
        ..AfPacketOpts::default()
    }
}

/// A tiny deterministic PRNG (xorshift64*).
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The stamp as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run: u8,
    pub class: Class,
    pub seq: u32,
    pub tx_ns: u32,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8; STAMP_LEN]) {
        out[0] = MAGIC;
        out[1] = (self.run << 4) | self.class as u8;
        out[2..6].copy_from_slice(&self.seq.to_be_bytes());
        out[6..10].copy_from_slice(&self.tx_ns.to_be_bytes());
    }

    pub fn read(b: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = b.get(..STAMP_LEN)?.try_into().ok()?;
        if b[0] != MAGIC {
            return None;
        }
        Some(Stamp {
            run: b[1] >> 4,
            class: Class::from_index(b[1] & 0x0f)?,
            seq: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
            tx_ns: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        })
    }

    /// The stamp in the TCP payload of `frame`, if it is one of ours.
    pub fn find(frame: &[u8]) -> Option<Stamp> {
        let p = packet::parse(frame).ok()?;
        if !matches!(p.kind, Kind::Ipv4 | Kind::Ipv6) || p.proto != 6 || p.is_fragment {
            return None;
        }
        let doff = usize::from(frame.get(p.l4_offset + 12)? >> 4) * 4;
        let start = p.l4_offset + doff;
        Stamp::read(frame.get(start..p.l3_end())?)
    }
}

/// Frame templates, one per class: source address and port zero, stamp
/// zero; per packet the fields are written and the checksums updated.
#[derive(Debug)]
pub(crate) struct Templates {
    frames: [Vec<u8>; CLASSES],
    l4: usize,
    v6: bool,
}

impl Templates {
    pub(crate) fn new(o: &Opts, src_mac: [u8; 6]) -> Templates {
        let v6 = o.v6();
        let unspec = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let l4 = 14 + if v6 { 40 } else { 20 };
        let payload = o.size - l4 - 20;
        let build = |dport: u16, flags: u8, seq: u32, ack: u32| {
            packet::build_frame(&FrameSpec {
                src_mac: MacAddr(src_mac),
                dst_mac: MacAddr(o.dst_mac),
                src: unspec,
                dst: o.vip,
                proto: 6,
                sport: 0,
                dport,
                tcp_flags: flags,
                tcp_seq: seq,
                tcp_ack: ack,
                ttl: 64,
                payload: vec![0; payload],
                ..FrameSpec::default()
            })
        };
        let syn = build(o.port, TCP_SYN, 1, 0);
        Templates {
            frames: [
                syn.clone(),
                build(o.port, TCP_ACK | TCP_PSH, 2, 1),
                build(o.deny_port, TCP_SYN, 1, 0),
                syn,
            ],
            l4,
            v6,
        }
    }

    /// Writes the frame of `class` from `src`:`sport` with `stamp` into
    /// `out`; returns its length.
    pub(crate) fn fill(&self, out: &mut [u8], src: IpAddr, sport: u16, stamp: &Stamp) -> usize {
        let t = &self.frames[stamp.class as usize];
        let f = &mut out[..t.len()];
        f.copy_from_slice(t);
        let l4 = self.l4;
        let tcp_csum = l4 + 16;
        let mut tc = u16::from_be_bytes([f[tcp_csum], f[tcp_csum + 1]]);
        match src {
            IpAddr::V4(a) if !self.v6 => {
                f[26..30].copy_from_slice(&a.octets());
                let ip = u16::from_be_bytes([f[24], f[25]]);
                let ip = checksum::update_ipv4(ip, Ipv4Addr::UNSPECIFIED, a);
                f[24..26].copy_from_slice(&ip.to_be_bytes());
                tc = checksum::update_ipv4(tc, Ipv4Addr::UNSPECIFIED, a);
            }
            IpAddr::V6(a) if self.v6 => {
                f[22..38].copy_from_slice(&a.octets());
                tc = checksum::update_ipv6(tc, Ipv6Addr::UNSPECIFIED, a);
            }
            // Families are checked up front.
            _ => {}
        }
        f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        tc = checksum::update16(tc, 0, sport);
        let mut s = [0u8; STAMP_LEN];
        stamp.write(&mut s);
        f[l4 + 20..l4 + 20 + STAMP_LEN].copy_from_slice(&s);
        for w in s.chunks_exact(2) {
            tc = checksum::update16(tc, 0, u16::from_be_bytes([w[0], w[1]]));
        }
        f[tcp_csum..tcp_csum + 2].copy_from_slice(&tc.to_be_bytes());
        t.len()
    }
}

/// The answer to an ARP request or a neighbour solicitation for one of
/// `own` addresses, from `mac`.
pub(crate) fn answer_neighbor(
    frame: &[u8],
    own: &HashSet<IpAddr>,
    mac: [u8; 6],
) -> Option<Vec<u8>> {
    let p = packet::parse(frame).ok()?;
    match p.kind {
        Kind::Arp => {
            let arp = packet::parse_arp(frame).ok()?;
            (arp.op == packet::ArpOp::Request && own.contains(&IpAddr::V4(arp.target_ip)))
                .then(|| packet::build_arp_reply(&arp, MacAddr(mac), p.vlan))
        }
        Kind::Ipv6 if p.proto == 58 && p.icmp == Some((135, 0)) => {
            let icmp =
                packet::Icmpv6Packet::new_checked(frame.get(p.l4_offset..p.l3_end())?).ok()?;
            let target = icmp.nd_target();
            if !own.contains(&IpAddr::V6(target)) {
                return None;
            }
            let IpAddr::V6(src) = p.src else { return None };
            let mut eth_src = [0u8; 6];
            eth_src.copy_from_slice(frame.get(6..12)?);
            let to = icmp
                .source_lladdr()
                .ok()
                .flatten()
                .unwrap_or(MacAddr(eth_src));
            Some(packet::build_neighbor_advertisement(
                MacAddr(mac),
                target,
                to,
                src,
                true,
                p.vlan,
            ))
        }
        _ => None,
    }
}

/// Tokens the bucket holds: after a late wake-up (a busy machine) up to
/// this many frames go out back to back, in bursts of at most [`BURST`],
/// so the average rate holds; a longer stall is not made up for.
const BUCKET: f64 = (4 * BURST) as f64;

/// A token bucket of depth [`BUCKET`] on the monotonic clock, handing out
/// at most [`BURST`] tokens at a time.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub(crate) fn new(rate: Option<u64>, now: Instant) -> Pacer {
        Pacer {
            rate: rate.map(|r| r as f64),
            tokens: 1.0,
            last: now,
        }
    }

    /// How many frames may go now.
    pub(crate) fn grant(&mut self, now: Instant) -> usize {
        let Some(rate) = self.rate else {
            return BURST;
        };
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(BUCKET);
        let n = self.tokens.floor().min(BURST as f64);
        self.tokens -= n;
        n as usize
    }

    /// Time until the next token.
    fn until_next(&self) -> Duration {
        match self.rate {
            None => Duration::ZERO,
            Some(rate) => Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / rate),
        }
    }
}

/// Waits for the next token by sleeping, never spinning: the load
/// balancer may share the cores. Oversleeping (timer slack, ~50 µs) costs
/// no rate: the bucket has kept the tokens, and the next burst is larger.
fn pause(d: Duration) {
    std::thread::sleep(d.max(Duration::from_micros(1)));
}

/// The sending side: templates, flows and counters.
struct Sender {
    port: Box<dyn PacketIo>,
    tpl: Templates,
    mac: [u8; 6],
    sources: Vec<IpAddr>,
    own: HashSet<IpAddr>,
    flows: u64,
    tuples: u64,
    pattern: Vec<Class>,
    next: usize,
    rng: Rng,
    run: u8,
    epoch: Instant,
    seq: u32,
    new_flows: u64,
    /// Where this run's new flows start in the tuple space.
    new_base: u64,
    denied_flows: u64,
    sent: [u64; CLASSES],
    tx_dropped: [u64; CLASSES],
    tx_bytes: u64,
    neighbor_replies: u64,
    last_dropped: u64,
    buf: Vec<u8>,
    burst: Vec<(Class, usize)>,
    replies: Vec<Vec<u8>>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Sender {
    fn tuple(&self, i: u64) -> (IpAddr, u16) {
        let n = self.sources.len() as u64;
        let a = self.sources[(i % n) as usize];
        (a, PORT_BASE + ((i / n) % PORTS) as u16)
    }

    fn next_class(&mut self) -> Class {
        let c = self.pattern[self.next];
        self.next += 1;
        if self.next == self.pattern.len() {
            self.next = 0;
        }
        c
    }

    /// Answers ARP / neighbour solicitations waiting on the TX port.
    fn service(&mut self) -> Result<()> {
        let (own, mac, replies) = (&self.own, self.mac, &mut self.replies);
        self.port.recv_burst(256, &mut |f, _| {
            if let Some(r) = answer_neighbor(f, own, mac) {
                replies.push(r);
            }
        });
        if self.replies.is_empty() {
            return Ok(());
        }
        for r in self.replies.drain(..) {
            self.port.send(&r);
            self.neighbor_replies += 1;
        }
        self.port.flush().context("sending a neighbour reply")?;
        self.last_dropped = self.port.stats().tx_dropped;
        Ok(())
    }

    /// Sends `n` frames of the mix, or with `warmup` = (flows, cursor) the
    /// SYNs of the established flows `flows[*cursor..]` (stamped with the
    /// flow's index as the sequence number).
    fn send_burst(&mut self, n: usize, warmup: Option<(&[u64], &mut usize)>) -> Result<()> {
        self.burst.clear();
        let mut warm = warmup;
        for _ in 0..n {
            let class = match warm {
                Some(_) => Class::Warmup,
                None => self.next_class(),
            };
            let mut seq = self.seq;
            let tuple = match class {
                Class::Warmup => {
                    let (flows, c) = warm.as_mut().expect("warm-up flows");
                    let flow = flows[**c];
                    **c += 1;
                    seq = flow as u32;
                    self.tuple(flow)
                }
                Class::Established => {
                    let i = self.rng.below(self.flows);
                    self.tuple(i)
                }
                Class::New => {
                    let i =
                        self.flows + (self.new_base + self.new_flows) % (self.tuples - self.flows);
                    self.new_flows += 1;
                    self.tuple(i)
                }
                Class::Denied => {
                    let i = self.denied_flows % self.tuples;
                    self.denied_flows += 1;
                    self.tuple(i)
                }
            };
            let stamp = Stamp {
                run: self.run,
                class,
                seq,
                tx_ns: self.epoch.elapsed().as_nanos() as u32,
            };
            if class != Class::Warmup {
                self.seq = self.seq.wrapping_add(1);
            }
            let len = self.tpl.fill(&mut self.buf, tuple.0, tuple.1, &stamp);
            self.port.send(&self.buf[..len]);
            self.burst.push((class, len));
        }
        self.port
            .flush()
            .context("sending on the TX interface failed")?;
        // Frames the port could not take are the last ones of the batch.
        let dropped = self.port.stats().tx_dropped;
        let mut d = dropped.saturating_sub(self.last_dropped);
        self.last_dropped = dropped;
        for &(class, len) in self.burst.iter().rev() {
            if d > 0 {
                self.tx_dropped[class as usize] += 1;
                d -= 1;
            } else {
                self.sent[class as usize] += 1;
                if class != Class::Warmup {
                    self.tx_bytes += len as u64;
                }
            }
        }
        Ok(())
    }
}

/// What the receiver counted.
#[derive(Debug, Clone)]
pub struct RxCounts {
    /// Stamped frames of this run, per class (duplicates not counted).
    pub received: [u64; CLASSES],
    /// Bytes of the measured classes (Ethernet frames without the FCS).
    pub bytes: u64,
    pub duplicates: u64,
    /// Frames that were not ours (health checks, ARP, other runs).
    pub other: u64,
    /// Latency of the measured classes, in nanoseconds.
    pub latency: Histogram<u64>,
    /// From the first to the last measured frame received.
    pub span: Duration,
    pub port: IoStats,
}

fn rx_loop(
    mut port: Box<dyn PacketIo>,
    run: u8,
    epoch: Instant,
    stop: &AtomicBool,
    opened: &[AtomicU64],
) -> Result<RxCounts> {
    let mut c = RxCounts {
        received: [0; CLASSES],
        bytes: 0,
        duplicates: 0,
        other: 0,
        latency: Histogram::new_with_bounds(1, 60 * 1_000_000_000, 3)
            .context("latency histogram")?,
        span: Duration::ZERO,
        port: IoStats::default(),
    };
    let mut seen: Vec<u64> = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let fd = port.poll_fd();
    // Once told to stop, read what is queued, but not for long if
    // frames keep coming.
    let mut stop_by = None;
    loop {
        let now = Instant::now();
        let now_ns = epoch.elapsed().as_nanos() as u32;
        let mut measured = false;
        let n = port.recv_burst(64, &mut |f, _| {
            let Some(s) = Stamp::find(f) else {
                c.other += 1;
                return;
            };
            if s.run != run {
                c.other += 1;
                return;
            }
            let seq = u64::from(s.seq);
            if s.class == Class::Warmup {
                // The sequence number is the flow's index.
                let Some(w) = opened.get((seq / 64) as usize) else {
                    c.other += 1;
                    return;
                };
                if w.fetch_or(1 << (seq % 64), Ordering::Relaxed) & (1 << (seq % 64)) != 0 {
                    c.duplicates += 1;
                    return;
                }
            } else if seq < DEDUP_LIMIT {
                let (w, b) = ((seq / 64) as usize, seq % 64);
                if seen.len() <= w {
                    seen.resize(w + 1024, 0);
                }
                if seen[w] & (1 << b) != 0 {
                    c.duplicates += 1;
                    return;
                }
                seen[w] |= 1 << b;
            }
            c.received[s.class as usize] += 1;
            if s.class != Class::Warmup {
                measured = true;
                c.bytes += f.len() as u64;
                c.latency
                    .saturating_record(u64::from(now_ns.wrapping_sub(s.tx_ns)).max(1));
            }
        });
        if measured {
            first.get_or_insert(now);
            last = Some(now);
        }
        if stop.load(Ordering::Acquire) {
            let by = *stop_by.get_or_insert(now + Duration::from_millis(100));
            if n == 0 || now > by {
                break;
            }
        }
        if n == 0 {
            match fd {
                Some(fd) => {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: `pfd` is one valid pollfd, exclusively
                    // borrowed for the call.
                    unsafe { libc::poll(&mut pfd, 1, 5) };
                }
                None => std::thread::sleep(Duration::from_micros(20)),
            }
        }
    }
    if let (Some(a), Some(b)) = (first, last) {
        c.span = b - a;
    }
    c.port = port.stats();
    Ok(c)
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub tx_iface: String,
    pub rx_iface: Option<String>,
    pub rate: Option<u64>,
    pub size: usize,
    pub flows: usize,
    pub sources: usize,
    /// Frames that left, per class (indexed by `Class as usize`).
    pub sent: [u64; CLASSES],
    /// Frames the TX port could not take (not counted as loss).
    pub tx_dropped: [u64; CLASSES],
    /// Bytes of the measured classes (Ethernet frames without the FCS).
    pub tx_bytes: u64,
    /// Length of the measured sending phase.
    pub tx_time: Duration,
    pub rx: Option<RxCounts>,
    pub neighbor_replies: u64,
    /// New flows outnumbered the client tuples, which were reused.
    pub tuples_reused: bool,
    /// Established flows whose SYN reached the receiver in the warm-up
    /// (`None` without a receiver or established traffic).
    pub flows_opened: Option<u64>,
}

impl Report {
    pub fn sent(&self, c: Class) -> u64 {
        self.sent[c as usize]
    }

    pub fn received(&self, c: Class) -> Option<u64> {
        self.rx.as_ref().map(|r| r.received[c as usize])
    }

    /// Lost fraction of `c` (0..1), if there was a receiver and traffic.
    pub fn loss(&self, c: Class) -> Option<f64> {
        let sent = self.sent(c);
        let got = self.received(c)?;
        (sent > 0).then(|| sent.saturating_sub(got) as f64 / sent as f64)
    }

    pub fn latency(&self) -> Option<Latency> {
        let h = &self.rx.as_ref()?.latency;
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
            max_us: h.max() as f64 / 1e3,
        })
    }

    fn measured_sent(&self) -> u64 {
        self.sent[..3].iter().sum()
    }
}

fn rates(pkts: u64, bytes: u64, t: Duration) -> String {
    let s = t.as_secs_f64();
    if s <= 0.0 {
        return "-".into();
    }
    format!(
        "{:.4} Mpps  {:.4} Gbit/s",
        pkts as f64 / s / 1e6,
        bytes as f64 * 8.0 / s / 1e9
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.rate {
            Some(r) => format!("{r} pps"),
            None => "flat out".into(),
        };
        writeln!(
            f,
            "bench gen: {} -> {}, {rate}, {:.2} s, {}-byte frames, {} established flows, {} sources",
            self.tx_iface,
            self.rx_iface.as_deref().unwrap_or("(no receiver)"),
            self.tx_time.as_secs_f64(),
            self.size,
            self.flows,
            self.sources
        )?;
        writeln!(
            f,
            "  {:<12} {:>11} {:>11} {:>9}  tx drops",
            "class", "sent", "received", "loss"
        )?;
        for c in ALL {
            let sent = self.sent(c);
            if sent == 0 && self.tx_dropped[c as usize] == 0 {
                continue;
            }
            let got = self
                .received(c)
                .map_or_else(|| "-".to_string(), |g| g.to_string());
            let loss = match (c, self.received(c)) {
                (Class::Denied, Some(g)) => {
                    format!("{} {g}", if g > 0 { "LEAKED" } else { "leaked" })
                }
                _ => self
                    .loss(c)
                    .map_or_else(|| "-".into(), |l| format!("{:.3} %", l * 100.0)),
            };
            writeln!(
                f,
                "  {:<12} {:>11} {:>11} {:>9}  {}",
                c.name(),
                sent,
                got,
                loss,
                self.tx_dropped[c as usize]
            )?;
        }
        writeln!(
            f,
            "  tx  {}  ({} frames in the measured phase)",
            rates(self.measured_sent(), self.tx_bytes, self.tx_time),
            self.measured_sent()
        )?;
        if let Some(rx) = &self.rx {
            let got: u64 = rx.received[..3].iter().sum();
            writeln!(
                f,
                "  rx  {}  ({got} frames; {} duplicates, {} other frames, {} kernel drops)",
                rates(got, rx.bytes, rx.span),
                rx.duplicates,
                rx.other,
                rx.port.rx_dropped
            )?;
        }
        match self.latency() {
            Some(l) => writeln!(
                f,
                "  latency send -> receive (µs): p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} samples)",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
            )?,
            None => writeln!(f, "  latency: no samples")?,
        }
        if let Some(n) = self.flows_opened {
            writeln!(
                f,
                "  established flows opened by the warm-up: {n} of {}",
                self.flows
            )?;
        }
        write!(
            f,
            "  neighbour replies sent: {}{}",
            self.neighbor_replies,
            if self.tuples_reused {
                "; new flows outnumbered the client tuples: tuples were reused"
            } else {
                ""
            }
        )
    }
}

/// Opens the ports the options name and runs.
pub fn run(o: &Opts) -> Result<Report> {
    o.check()?;
    let tx = open_afpacket(&o.tx_iface, o.tx_netns.as_deref(), &AfPacketOpts::default())
        .context("TX port")?;
    let rx = match &o.rx_iface {
        Some(i) => Some(open_afpacket(i, o.rx_netns.as_deref(), &rx_ring()).context("RX port")?),
        None => None,
    };
    run_on(o, tx, rx)
}

/// Runs on ports the caller opened (any [`PacketIo`]).
pub fn run_on(o: &Opts, tx: Box<dyn PacketIo>, rx: Option<Box<dyn PacketIo>>) -> Result<Report> {
    o.check()?;
    let epoch = Instant::now();
    let mut rng = Rng::new(o.seed);
    // Each run its own stamp nibble and new-flow tuples: a second run
    // against the same load balancer must not hit the first one's sessions.
    let mut fresh = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let run = (fresh.next() & 0x0f) as u8;
    let sources = o.src.addresses(&[o.vip]);
    let mac = tx.mac();
    let mut pattern: Vec<Class> = [
        (Class::New, o.mix.new),
        (Class::Established, o.mix.established),
        (Class::Denied, o.mix.denied),
    ]
    .iter()
    .flat_map(|&(c, w)| std::iter::repeat_n(c, w as usize))
    .collect();
    for i in (1..pattern.len()).rev() {
        pattern.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let flows = if o.mix.established > 0 { o.flows } else { 0 };
    let mut s = Sender {
        port: tx,
        tpl: Templates::new(o, mac),
        mac,
        own: sources.iter().copied().collect(),
        tuples: sources.len() as u64 * PORTS,
        new_base: fresh.below(sources.len() as u64 * PORTS - flows as u64),
        sources,
        flows: flows as u64,
        pattern,
        next: 0,
        rng,
        run,
        epoch,
        seq: 0,
        new_flows: 0,
        denied_flows: 0,
        sent: [0; CLASSES],
        tx_dropped: [0; CLASSES],
        tx_bytes: 0,
        neighbor_replies: 0,
        last_dropped: 0,
        buf: vec![0; 2048],
        burst: Vec::with_capacity(BURST),
        replies: Vec::new(),
    };
    s.last_dropped = s.port.stats().tx_dropped;

    let stop = Arc::new(AtomicBool::new(false));
    let opened: Arc<Vec<AtomicU64>> =
        Arc::new((0..flows.div_ceil(64)).map(|_| AtomicU64::new(0)).collect());
    let has_rx = rx.is_some();
    let receiver = rx.map(|port| {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        std::thread::Builder::new()
            .name("gen-rx".into())
            .spawn(move || rx_loop(port, run, epoch, &stop, &opened))
    });
    let receiver = match receiver {
        Some(r) => Some(r.context("starting the receiver thread")?),
        None => None,
    };
    let result = send_all(o, &mut s, has_rx.then_some(&opened[..]));
    // Let the last frames arrive, answering neighbours meanwhile.
    let drain_end = Instant::now() + o.drain;
    while Instant::now() < drain_end {
        if s.service().is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Release);
    let rx = match receiver {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow!("the receiver thread panicked"))??,
        ),
        None => None,
    };
    let (tx_time, unopened) = result?;
    let sources = s.sources.len();
    Ok(Report {
        tx_iface: o.tx_iface.clone(),
        rx_iface: o.rx_iface.clone(),
        rate: o.rate,
        size: o.size,
        flows,
        sources,
        tuples_reused: s.new_flows > s.tuples - s.flows,
        sent: s.sent,
        tx_dropped: s.tx_dropped,
        tx_bytes: s.tx_bytes,
        tx_time,
        rx,
        neighbor_replies: s.neighbor_replies,
        flows_opened: unopened.map(|u| flows as u64 - u),
    })
}

/// Sends the SYNs of the established flows: one per flow, at the run's
/// rate but fast enough to finish within a few seconds; with a receiver
/// (`opened`: the flows whose SYN arrived), SYNs that did not arrive are
/// sent again, up to [`WARMUP_ROUNDS`] rounds in [`MAX_WARMUP`]. Returns
/// how many flows remain unopened (with a receiver).
fn warm_up(o: &Opts, s: &mut Sender, opened: Option<&[AtomicU64]>) -> Result<Option<u64>> {
    let deadline = Instant::now() + MAX_WARMUP;
    let mut todo: Vec<u64> = (0..s.flows).collect();
    for _ in 0..WARMUP_ROUNDS {
        let rate = o.rate.map(|r| r.max(todo.len() as u64 / 2 + 1));
        let mut pacer = Pacer::new(rate, Instant::now());
        let mut cursor = 0usize;
        while cursor < todo.len() {
            let now = Instant::now();
            if now > deadline {
                break;
            }
            s.service()?;
            let n = pacer.grant(now).min(todo.len() - cursor);
            if n == 0 {
                pause(pacer.until_next());
                continue;
            }
            s.send_burst(n, Some((&todo, &mut cursor)))?;
        }
        // Let the sessions settle (and the SYNs arrive).
        let settle = Instant::now() + Duration::from_millis(200);
        while Instant::now() < settle {
            s.service()?;
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(opened) = opened else {
            return Ok(None);
        };
        let is_open =
            |f: u64| opened[(f / 64) as usize].load(Ordering::Relaxed) & (1 << (f % 64)) != 0;
        todo.retain(|&f| !is_open(f));
        if todo.is_empty() || Instant::now() > deadline {
            break;
        }
    }
    Ok(opened.map(|_| todo.len() as u64))
}

/// The warm-up and the measured phase; returns the measured time and the
/// flows the warm-up could not open (with a receiver).
fn send_all(
    o: &Opts,
    s: &mut Sender,
    opened: Option<&[AtomicU64]>,
) -> Result<(Duration, Option<u64>)> {
    let unopened = if s.flows > 0 {
        warm_up(o, s, opened)?
    } else {
        None
    };

    let start = Instant::now();
    let end = start + o.duration;
    let mut pacer = Pacer::new(o.rate, start);
    let mut last = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        s.service()?;
        let n = pacer.grant(now);
        if n == 0 {
            pause(pacer.until_next().min(end - now));
            continue;
        }
        s.send_burst(n, None)?;
        last = Instant::now();
    }
    Ok((last - start, unopened))
}

/// `bench gen`: runs and prints the summary; on a setup error, prints
/// the error chain on one line and exits with status 1.
pub fn main(args: &GenArgs) -> Result<()> {
    match args.opts().and_then(|o| run(&o)) {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(e) => {
            eprintln!("bench gen: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Opts {
        GenArgs {
            tx_iface: "lo".into(),
            tx_netns: None,
            rx_iface: None,
            rx_netns: None,
            dst_mac: [2, 0, 0, 0, 0, 2],
            vip: None,
            port: 80,
            deny_port: 81,
            mix: Mix::default(),
            flows: 100,
            rate: None,
            duration: Duration::from_secs(1),
            size: 64,
            src_net: Some("198.18.0.100-198.18.0.200".parse().expect("range")),
            ipv6: false,
            drain: Duration::from_millis(10),
            seed: 1,
        }
        .opts()
        .expect("valid")
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_duration("5s").ok(), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("2").ok(), Some(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err() && parse_duration("5h").is_err());
        assert_eq!(parse_rate("20k").ok(), Some(Some(20_000)));
        assert_eq!(parse_rate("1.5M").ok(), Some(Some(1_500_000)));
        assert_eq!(parse_rate("flat").ok(), Some(None));
        assert!(parse_rate("fast").is_err());
        assert_eq!(
            parse_mac("02:00:00:00:00:0a").ok(),
            Some([2, 0, 0, 0, 0, 10])
        );
        assert!(parse_mac("02:00:00:00:00").is_err());
        let m: Mix = "new=1,denied=3".parse().expect("mix");
        assert_eq!((m.new, m.established, m.denied), (1, 0, 3));
        assert!("new=0".parse::<Mix>().is_err());
        assert!("old=1".parse::<Mix>().is_err());
    }

    #[test]
    fn sources() {
        let r: SrcNet = "198.18.0.100-198.18.0.200".parse().expect("range");
        let vip: IpAddr = "198.18.0.150".parse().expect("ip");
        let a = r.addresses(&[vip]);
        assert_eq!(a.len(), 100);
        assert_eq!(a[0], "198.18.0.100".parse::<IpAddr>().expect("ip"));
        let n: SrcNet = "198.18.128.0/30".parse().expect("net");
        assert_eq!(n.addresses(&[]).len(), 2);
        let big: SrcNet = "2001:db8:18:1::/64".parse().expect("net");
        assert_eq!(big.addresses(&[]).len(), MAX_SOURCES);
        assert!("198.18.0.9-198.18.0.1".parse::<SrcNet>().is_err());
    }

    #[test]
    fn options_are_checked() {
        let o = opts();
        assert_eq!(o.min_size(), 64);
        let bad = [
            Opts {
                size: 63,
                ..o.clone()
            },
            Opts {
                dst_mac: [0xff; 6],
                ..o.clone()
            },
            Opts {
                vip: "2001:db8:18::10".parse().expect("ip"),
                ..o.clone()
            },
            Opts {
                deny_port: 80,
                ..o.clone()
            },
            Opts {
                src: "198.18.0.10/32".parse().expect("net"),
                ..o.clone()
            },
        ];
        for b in bad {
            assert!(b.check().is_err(), "{b:?}");
        }
    }

    /// Frames carry valid checksums and a stamp the receiver finds.
    #[test]
    fn frames_are_valid_and_stamped() {
        for v6 in [false, true] {
            let mut o = opts();
            if v6 {
                o.vip = "2001:db8:18::10".parse().expect("ip");
                o.src = "2001:db8:18::100-2001:db8:18::1ff".parse().expect("range");
                o.size = 90;
            }
            let t = Templates::new(&o, [2, 0, 0, 0, 0, 1]);
            let mut buf = vec![0u8; 2048];
            for (i, class) in ALL.into_iter().enumerate() {
                let stamp = Stamp {
                    run: 5,
                    class,
                    seq: 0xdead_0000 + i as u32,
                    tx_ns: 0x1234_5678,
                };
                let src = o.src.addresses(&[])[i];
                let len = t.fill(&mut buf, src, 40_000 + i as u16, &stamp);
                assert_eq!(len, o.size);
                let f = &buf[..len];
                let p = packet::parse(f).expect("parses");
                assert_eq!((p.src, p.sport), (src, 40_000 + i as u16));
                assert!(packet::verify_l4_checksum(f, &p), "TCP checksum, {class:?}");
                if !v6 {
                    assert_eq!(checksum::checksum(&f[14..34]), 0, "IPv4 header checksum");
                }
                assert_eq!(Stamp::find(f), Some(stamp));
            }
        }
    }

    #[test]
    fn neighbours_are_answered_for_our_addresses_only() {
        let own: HashSet<IpAddr> = ["198.18.0.100".parse().expect("ip")].into();
        let mac = [2, 0, 0, 0, 0, 1];
        let ask = |t: &str| {
            packet::build_arp_request(
                MacAddr([2, 0, 0, 0, 0, 9]),
                "198.18.0.1".parse().expect("ip"),
                t.parse().expect("ip"),
                None,
            )
        };
        let r = answer_neighbor(&ask("198.18.0.100"), &own, mac).expect("answered");
        let arp = packet::parse_arp(&r).expect("arp");
        assert_eq!(arp.sender_mac, MacAddr(mac));
        assert!(answer_neighbor(&ask("198.18.0.101"), &own, mac).is_none());
    }

    #[test]
    fn pacer_keeps_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(1000), t0);
        let mut sent = 0;
        for ms in 1..=1000u64 {
            sent += p.grant(t0 + Duration::from_millis(ms));
        }
        assert!((999..=1001).contains(&sent), "{sent}");
        // A long stall does not turn into a flood: the bucket holds four
        // bursts, handed out one burst at a time.
        let t1 = t0 + Duration::from_secs(10);
        let caught_up: Vec<usize> = (0..6).map(|_| p.grant(t1)).collect();
        assert_eq!(caught_up, [BURST, BURST, BURST, BURST, 0, 0]);
    }
}
