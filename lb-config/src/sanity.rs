//! Checks across fields that each look valid on their own: addresses that
//! cannot be a VIP, a server, a next hop or a port's address; our own
//! addresses that are also a neighbour's; the memory the session tables
//! would take; and the configuration file itself (a regular file, bounded,
//! not empty).

use std::collections::HashMap;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::Path;

use ipnet::IpNet;
use lb_core::model::Config;
use lb_core::pipeline::Worker;

use crate::error::Sink;
use crate::parse;
use crate::schema::{FileConfig, S};

/// The largest configuration file read, in bytes (64 MiB: some 400 k
/// rules). A larger file, or anything that is not a regular file (a
/// device such as `/dev/zero`, a pipe, a directory), is refused before it
/// is read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// `dataplane.max_memory_mib` when not given: the session tables of all
/// workers together may take at most 32 GiB (the defaults take 241 MiB per
/// worker, 15 GiB for 64 workers).
pub const DEFAULT_MAX_MEMORY_MIB: i64 = 32 << 10;

/// `dataplane.max_memory_mib` upper bound (16 TiB).
pub const MAX_MEMORY_MIB: i64 = 16 << 20;

/// Reads a configuration file: a regular file of at most
/// [`MAX_FILE_BYTES`], in UTF-8. The error is the message for `file:1:1`.
pub(crate) fn read_file(path: &Path) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read the configuration: {e}");
    // Looked at before opening: opening a FIFO would wait for a writer.
    check_metadata(&std::fs::metadata(path).map_err(cannot)?)?;
    let file = std::fs::File::open(path).map_err(cannot)?;
    // And again on what was opened, in case the path changed in between.
    check_metadata(&file.metadata().map_err(cannot)?)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}

fn check_metadata(m: &std::fs::Metadata) -> Result<(), String> {
    if !m.is_file() {
        return Err(format!(
            "the configuration must be a regular file, not {}",
            file_kind(&m.file_type())
        ));
    }
    if m.len() > MAX_FILE_BYTES {
        return Err(too_large(m.len()));
    }
    Ok(())
}

fn too_large(len: u64) -> String {
    format!(
        "the configuration file is {len} bytes; at most {MAX_FILE_BYTES} ({} MiB) are read",
        MAX_FILE_BYTES >> 20
    )
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// True when the text holds no TOML at all: every line blank or a comment.
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim_start_matches('\u{feff}').trim();
        l.is_empty() || l.starts_with('#')
    })
}

pub(crate) const BLANK_MESSAGE: &str = "the configuration is empty (only whitespace and comments); an empty file is refused rather than taken as a configuration with no ports, groups or load balancers";

/// Why `addr` cannot be a host's address (a VIP, a server, a next hop, a
/// port's address), or `None`.
pub(crate) fn not_a_host(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) => {
            if a.is_unspecified() {
                Some("the unspecified address")
            } else if a.octets()[0] == 0 {
                Some("in 0.0.0.0/8 (\"this network\")")
            } else if a.is_broadcast() {
                Some("the limited broadcast address")
            } else if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a.is_unspecified() {
                Some("the unspecified address")
            } else if a.is_loopback() {
                Some("the loopback address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if a.to_ipv4_mapped().is_some() {
                Some("an IPv4-mapped address (write the IPv4 address)")
            } else {
                None
            }
        }
    }
}

/// Why `addr` cannot be a host on `net`: it is the network's address
/// (IPv4 prefixes up to /30; in IPv6 the subnet-router anycast address,
/// prefixes up to /126) or its IPv4 broadcast address.
fn reserved_on(net: &IpNet, addr: IpAddr) -> Option<&'static str> {
    match net {
        IpNet::V4(_) if parse::is_v4_network_or_broadcast(net, addr) => {
            Some("network or broadcast")
        }
        IpNet::V6(n) if n.prefix_len() <= 126 && IpAddr::V6(n.network()) == addr => {
            Some("network (subnet-router anycast)")
        }
        _ => None,
    }
}

/// An address as configured, with what it is and where.
struct Use {
    addr: IpAddr,
    /// E.g. "VIP 198.18.0.10 of load balancer alb-1".
    what: String,
    span: Range<usize>,
}

/// A link: a port's network or a subnet, for the network and broadcast
/// address check.
struct Link {
    net: IpNet,
    /// E.g. "port ext" or "subnet vsw-be".
    what: String,
}

fn plain_addresses(list: &[S<String>]) -> impl Iterator<Item = (IpAddr, Range<usize>)> + '_ {
    list.iter()
        .filter_map(|a| parse::address(a.get_ref()).ok().map(|x| (x, a.span())))
}

/// The cross-field checks of a file whose fields were compiled into `cfg`
/// (values that failed their own check are skipped here: they were
/// reported already).
pub(crate) fn check(f: &FileConfig, cfg: &Config, sink: &mut Sink<'_>) {
    addresses(f, sink);
    memory(f, cfg, sink);
}

/// Addresses: host addresses only where a host is meant; our own
/// addresses (VIPs, local addresses, port addresses) distinct from our
/// neighbours' (servers, next hops, the metadata address).
fn addresses(f: &FileConfig, sink: &mut Sink<'_>) {
    let mut links: Vec<Link> = Vec::new();
    // Ours: port addresses, VIPs, local addresses.
    let mut ports: Vec<Use> = Vec::new();
    let mut lb_addrs: Vec<Use> = Vec::new();
    // Neighbours.
    let mut servers: Vec<Use> = Vec::new();
    let mut hops: Vec<Use> = Vec::new();

    for p in &f.ports {
        let p = p.get_ref();
        let name = p.name.get_ref();
        for a in &p.addresses {
            let Ok(net) = parse::interface_address(a.get_ref()) else {
                continue;
            };
            if net.prefix_len() == 0 && not_a_host(net.addr()).is_none() {
                sink.error(
                    &a.span(),
                    format!(
                        "address {net} of port {name} has prefix length 0, which puts every address on its link; give the link's prefix (e.g. /24 or /64)"
                    ),
                );
            }
            links.push(Link {
                net: net.trunc(),
                what: format!("port {name}"),
            });
            ports.push(Use {
                addr: net.addr(),
                what: format!("address {} of port {name}", net.addr()),
                span: a.span(),
            });
        }
    }
    for s in &f.subnets {
        let s = s.get_ref();
        for c in std::iter::once(&s.cidr).chain(s.ipv6_cidr.as_ref()) {
            if let Ok(net) = parse::cidr(c.get_ref()) {
                links.push(Link {
                    net,
                    what: format!("subnet {}", s.id.get_ref()),
                });
            }
        }
    }
    for r in &f.routes {
        if let Some(v) = &r.get_ref().via {
            if let Ok(addr) = parse::address(v.get_ref()) {
                hops.push(Use {
                    addr,
                    what: format!("next hop {addr}"),
                    span: v.span(),
                });
            }
        }
    }
    // BGP peers (`[[cluster.peer]]`): neighbours whose other conflicts the
    // cluster's own checks report.
    let mut peers: Vec<Use> = Vec::new();
    for p in f.cluster.iter().flat_map(|c| &c.get_ref().peers) {
        let a = &p.get_ref().address;
        if let Ok(addr) = parse::address(a.get_ref()) {
            peers.push(Use {
                addr,
                what: format!("peer {addr}"),
                span: a.span(),
            });
        }
    }
    for lb in &f.load_balancers {
        let lb = lb.get_ref();
        let id = lb.id.get_ref();
        for (addr, span) in plain_addresses(lb.vips.get_ref()) {
            lb_addrs.push(Use {
                addr,
                what: format!("VIP {addr} of load balancer {id}"),
                span,
            });
        }
        if let Some(list) = &lb.local_addresses {
            for (addr, span) in plain_addresses(list.get_ref()) {
                lb_addrs.push(Use {
                    addr,
                    what: format!("local address {addr} of load balancer {id}"),
                    span,
                });
            }
        }
    }
    for g in &f.server_groups {
        let g = g.get_ref();
        for s in &g.servers {
            if let Some(a) = &s.get_ref().address {
                if let Ok(addr) = parse::address(a.get_ref()) {
                    servers.push(Use {
                        addr,
                        what: format!("server {addr} of server group {}", g.id.get_ref()),
                        span: a.span(),
                    });
                }
            }
        }
    }

    // Host addresses only, and not a link's network or broadcast address.
    for u in ports
        .iter()
        .chain(&lb_addrs)
        .chain(&servers)
        .chain(&hops)
        .chain(&peers)
    {
        if let Some(why) = not_a_host(u.addr) {
            sink.error(&u.span, format!("{} is {why}, not a host address", u.what));
            continue;
        }
        if let Some((link, why)) = links
            .iter()
            .find_map(|l| reserved_on(&l.net, u.addr).map(|w| (l, w)))
        {
            sink.error(
                &u.span,
                format!(
                    "{} is the {why} address of {} ({}), not a host address",
                    u.what, link.what, link.net
                ),
            );
        }
    }

    // Our addresses are not our neighbours'.
    let metadata = f
        .platform
        .as_ref()
        .and_then(|p| p.get_ref().metadata_address.as_ref())
        .and_then(|a| {
            parse::address(a.get_ref())
                .ok()
                .map(|addr| (addr, sink.line_of(&a.span())))
        });
    let metadata_addr = metadata.map_or(IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)), |(a, _)| a);
    let metadata_what = match metadata {
        Some((_, line)) => format!("the platform's metadata_address (line {line})"),
        None => "the platform's metadata address (the default)".to_string(),
    };
    let mut ours: HashMap<IpAddr, (&str, usize)> = HashMap::new();
    for u in ports.iter().chain(&lb_addrs) {
        ours.entry(u.addr)
            .or_insert((u.what.as_str(), sink.line_of(&u.span)));
    }
    let mut hop_lines: HashMap<IpAddr, usize> = HashMap::new();
    for h in &hops {
        hop_lines.entry(h.addr).or_insert(sink.line_of(&h.span));
    }
    for u in &lb_addrs {
        if u.addr == metadata_addr {
            sink.error(&u.span, format!("{} is {metadata_what}", u.what));
        } else if let Some(line) = hop_lines.get(&u.addr) {
            sink.error(
                &u.span,
                format!(
                    "{} is the next hop of the route on line {line}, a neighbour's address",
                    u.what
                ),
            );
        }
    }
    // (A next hop equal to a VIP or local address was reported there.)
    for h in &hops {
        if let Some(p) = ports.iter().find(|p| p.addr == h.addr) {
            let line = sink.line_of(&p.span);
            sink.error(
                &h.span,
                format!(
                    "next hop {} is our own {} (line {line}); a next hop is another host",
                    h.addr, p.what
                ),
            );
        }
    }
    for s in &servers {
        if let Some((what, line)) = ours.get(&s.addr) {
            sink.error(
                &s.span,
                format!(
                    "{} is also the {what} (line {line}); a server must be another host",
                    s.what
                ),
            );
        }
    }
}

/// The session tables of every worker, allocated and touched at start-up,
/// must fit in `dataplane.max_memory_mib`.
fn memory(f: &FileConfig, cfg: &Config, sink: &mut Sink<'_>) {
    let d = &cfg.dataplane;
    let dc = f.dataplane.as_ref();
    let limit_field = dc.and_then(|d| d.get_ref().max_memory_mib.as_ref());
    let limit_mib = match limit_field {
        Some(m) => {
            let n = *m.get_ref();
            if !(1..=MAX_MEMORY_MIB).contains(&n) {
                sink.error(
                    &m.span(),
                    format!("max_memory_mib must be 1..={MAX_MEMORY_MIB}, got {n}"),
                );
                return;
            }
            n
        }
        None => DEFAULT_MAX_MEMORY_MIB,
    };
    let per_worker = Worker::session_table_bytes(d.max_sessions, d.max_sessions_v6);
    let total = per_worker.saturating_mul(u64::from(d.workers.max(1)));
    let limit = u64::try_from(limit_mib).unwrap_or(0) << 20;
    if total <= limit {
        return;
    }
    // Point at the value that makes the tables big: the sessions, else the
    // workers, else the limit, else the [dataplane] table.
    let span = dc.map_or(0..0, |d| {
        let dr = d.get_ref();
        dr.max_sessions
            .as_ref()
            .or(dr.max_sessions_v6.as_ref())
            .or(dr.workers.as_ref())
            .or(limit_field)
            .map_or_else(|| d.span(), S::span)
    });
    let limit_is = if limit_field.is_some() {
        format!("max_memory_mib = {limit_mib}")
    } else {
        format!("the default max_memory_mib of {limit_mib}")
    };
    sink.error(
        &span,
        format!(
            "the session tables would take {} ({} × ({} IPv4 sessions × {} B + {} IPv6 sessions × {} B)), more than {limit_is} MiB; lower workers, max_sessions or max_sessions_v6, or raise max_memory_mib",
            human_bytes(total),
            plural_workers(d.workers),
            d.max_sessions,
            lb_core::pipeline::Worker::session_table_bytes(1, 0),
            d.max_sessions_v6,
            lb_core::pipeline::Worker::session_table_bytes(0, 1),
        ),
    );
}

fn plural_workers(n: u16) -> String {
    if n == 1 {
        "1 worker".to_string()
    } else {
        format!("{n} workers")
    }
}

/// The session tables' memory estimate of a compiled configuration, in
/// bytes: workers × (IPv4 sessions × bytes per IPv4 session + IPv6
/// sessions × bytes per IPv6 session).
pub fn session_memory(cfg: &Config) -> u64 {
    let d = &cfg.dataplane;
    Worker::session_table_bytes(d.max_sessions, d.max_sessions_v6)
        .saturating_mul(u64::from(d.workers.max(1)))
}

/// `136 MiB`, `8.5 GiB`, `1.1 TiB`.
pub fn human_bytes(b: u64) -> String {
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;
    // Display only: two decimals of a ratio.
    let ratio = |unit: u64| b as f64 / unit as f64;
    if b >= TIB {
        format!("{:.1} TiB", ratio(TIB))
    } else if b >= 10 * GIB {
        format!("{:.0} GiB", ratio(GIB))
    } else if b >= GIB {
        format!("{:.1} GiB", ratio(GIB))
    } else {
        format!("{} MiB", b.div_ceil(1 << 20))
    }
}
