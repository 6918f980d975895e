//! The arguments of `bench gen` and the checked options of a run.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ipnet::IpNet;

use super::{PORTS, STAMP_LEN};

/// Longest run: the 32-bit nanosecond send stamp wraps after 4.29 s, which
/// bounds the measurable latency, not the run; the run is bounded for
/// safety.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most established flows (their index is the warm-up's sequence number).
const MAX_FLOWS: usize = 10_000_000;
/// Most source addresses taken from `--src-net`.
const MAX_SOURCES: usize = 65536;

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
    pub(super) fn v6(&self) -> bool {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::gen) fn opts() -> Opts {
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
}
