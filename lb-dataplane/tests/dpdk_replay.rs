//! Replay through the running daemon over `net_pcap`: the client traffic
//! of the seed scenario, written to a pcap file, is read by `lbd`'s own
//! code (`Daemon::start` with `io = "dpdk"`, its worker loop, its ARP/ND
//! answers, its FULLNAT) from two `net_pcap` ports, with the step-6
//! configuration (a group denying port 81). What the ports wrote is then
//! checked frame by frame.
//!
//! Deterministic by design: one worker (net_pcap has no RSS), health
//! checks off (no probes), and the backends' addresses are learned before
//! the client's first SYN is read: the worker polls the outside port
//! first, and `ext_in.pcap` starts with one burst of filler frames, so the
//! worker reads the backends' ARP and neighbour advertisements from
//! `int_in.pcap` in its first round and the SYNs only in its second.
//!
//! No root needed. One test: EAL initialises once per process.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod common;
mod dpdk_common;

use dpdk_common::{read_pcap, write_pcap};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_core::packet::{self, ArpOp, FrameSpec, Kind, MacAddr, TcpFlags};
use lb_dataplane::daemon::{Daemon, BURST};

/// net_pcap gives its ports the address 02:70:63:61:70:<n> ("\x02pcap").
const EXT_MAC: [u8; 6] = [0x02, 0x70, 0x63, 0x61, 0x70, 0x00];
const INT_MAC: [u8; 6] = [0x02, 0x70, 0x63, 0x61, 0x70, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x18, 0x02];
const BE1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x19, 0x11];
const BE2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x19, 0x12];

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 250);
const BE1_4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 11);
const BE2_4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 12);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x10);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 1, 0, 0, 0, 0x250);
const BE1_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 1, 0, 0, 0, 0x11);
const BE2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 1, 0, 0, 0, 0x12);

fn syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    packet::build_frame(&FrameSpec {
        src_mac: MacAddr(CLIENT_MAC),
        dst_mac: MacAddr(EXT_MAC),
        vlan: None,
        src,
        dst,
        proto: 6,
        sport,
        dport,
        tcp_flags: TcpFlags::SYN,
        tcp_seq: 0x1000_0000 + u32::from(sport),
        tcp_ack: 0,
        icmp: None,
        ttl: 64,
        payload: Vec::new(),
    })
}

/// What the outside port reads: the client, then a burst of fillers (so
/// more than one burst). The client's SYNs come in the first burst: the
/// worker polls this port first, so it asks for the backends' addresses
/// before it reads their announcements on the other port (it learns only
/// addresses it is resolving).
fn ext_input() -> Vec<Vec<u8>> {
    let mut frames = vec![
        packet::build_arp_request(MacAddr(CLIENT_MAC), CLIENT4, VIP4, None),
        packet::build_neighbor_solicitation(MacAddr(CLIENT_MAC), CLIENT6, VIP6, None),
        syn(CLIENT4.into(), VIP4.into(), 40000, 80),
        syn(CLIENT4.into(), VIP4.into(), 40001, 81),
        syn(CLIENT6.into(), VIP6.into(), 40002, 80),
        syn(CLIENT6.into(), VIP6.into(), 40003, 81),
    ];
    // IEEE 802 local experimental EtherType: the data plane ignores it.
    frames.extend((0..BURST).map(|i| dpdk_common::test_frame(EXT_MAC, CLIENT_MAC, i as u32, 60)));
    frames
}

/// What the backend port reads: each backend announcing itself
/// (gratuitous ARP, unsolicited neighbour advertisement).
fn int_input() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for (mac, v4, v6) in [(BE1_MAC, BE1_4, BE1_6), (BE2_MAC, BE2_4, BE2_6)] {
        frames.push(packet::build_arp_request(MacAddr(mac), v4, v4, None));
        frames.push(packet::build_neighbor_advertisement(
            MacAddr(mac),
            v6,
            MacAddr::BROADCAST,
            Ipv6Addr::UNSPECIFIED,
            false,
            None,
        ));
    }
    frames
}

/// The seed's step 6 (deny 81) on two net_pcap ports, health checks off.
fn step6_config(eal_args: &[String]) -> String {
    let cfg = common::seed_config(
        "security_groups = [\"sg-alb\"]",
        &common::sg_alb(false),
        (100, 100),
    )
    .replace(
        "[server_group.health_check]\n",
        "[server_group.health_check]\nenabled = false\n",
    );
    common::dpdk_config(&cfg, eal_args)
}

fn ipv4_header_ok(frame: &[u8], p: &packet::Parsed) -> bool {
    let ihl = usize::from(frame[p.l3_offset] & 0x0f) * 4;
    let mut sum = 0u32;
    for w in frame[p.l3_offset..p.l3_offset + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The summed counters of port `name` in the daemon's stats.
fn port_counts(stats: &serde_json::Value, name: &str) -> (u64, u64) {
    stats["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .map_or((0, 0), |p| {
            (
                p["rx_packets"].as_u64().unwrap_or(0),
                p["tx_packets"].as_u64().unwrap_or(0),
            )
        })
}

#[test]
fn seed_step6_replayed_through_lbd_on_net_pcap() {
    let _cleanup = dpdk_common::RuntimeDirGuard;
    let dir = TempDir(std::env::temp_dir().join(format!("lbreplay-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let path = |n: &str| dir.0.join(n);
    let (ext_in, int_in) = (ext_input(), int_input());
    write_pcap(&path("ext_in.pcap"), &ext_in);
    write_pcap(&path("int_in.pcap"), &int_in);
    assert_eq!(read_pcap(&path("ext_in.pcap")), ext_in);

    let vdevs = [("net_pcap0", "ext"), ("net_pcap1", "int")].map(|(dev, port)| {
        format!(
            "{dev},rx_pcap={},tx_pcap={}",
            path(&format!("{port}_in.pcap")).display(),
            path(&format!("{port}_out.pcap")).display()
        )
    });
    let config = path("lbd.toml");
    std::fs::write(&config, step6_config(&dpdk_common::eal_args(&vdevs))).expect("config");

    let daemon = Daemon::start(&config).unwrap_or_else(|e| panic!("lbd: {e:#}"));
    assert_eq!(
        daemon.shared.workers.len(),
        1,
        "net_pcap: one queue, one worker"
    );
    assert_eq!(daemon.shared.port_names, ["net_pcap0", "net_pcap1"]);
    assert!(daemon
        .shared
        .link_status(0)
        .is_some_and(|l| l.starts_with("up")));
    // Until both inputs are read and the answers (ARP, NA, two SYNs) sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        last = lb_dataplane::control::stats(&daemon.shared);
        let (ext_rx, ext_tx) = port_counts(&last, "ext");
        let (int_rx, int_tx) = port_counts(&last, "int");
        if ext_rx == ext_in.len() as u64
            && int_rx == int_in.len() as u64
            && ext_tx >= 2
            && int_tx >= 2
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A little longer: anything unexpected would show up now.
    std::thread::sleep(Duration::from_millis(300));
    // Stopping closes the ports, which closes out.pcap files, and EAL.
    daemon.stop();
    dpdk_common::check_runtime_dir_removed();

    let ext_out = read_pcap(&path("ext_out.pcap"));
    let int_out = read_pcap(&path("int_out.pcap"));
    let ctx = format!("stats {last}\next_out {ext_out:02x?}\nint_out {int_out:02x?}");

    // Outside: the ARP reply and the neighbour advertisement for the VIP.
    assert_eq!(ext_out.len(), 2, "{ctx}");
    let arp = packet::parse_arp(&ext_out[0]).unwrap_or_else(|e| panic!("{e:?}: {ctx}"));
    assert_eq!(arp.op, ArpOp::Reply);
    assert_eq!(
        (
            arp.sender_ip,
            arp.sender_mac.0,
            arp.target_ip,
            arp.target_mac.0
        ),
        (VIP4, EXT_MAC, CLIENT4, CLIENT_MAC),
        "{ctx}"
    );
    assert_eq!(&ext_out[0][..12], [CLIENT_MAC, EXT_MAC].concat(), "{ctx}");
    let na = packet::parse(&ext_out[1]).unwrap_or_else(|e| panic!("{e:?}: {ctx}"));
    assert_eq!(na.proto, 58, "{ctx}");
    assert_eq!(
        na.icmp.map(|i| i.0),
        Some(136),
        "neighbour advertisement: {ctx}"
    );
    assert_eq!((na.src, na.dst), (IpAddr::V6(VIP6), IpAddr::V6(CLIENT6)));
    assert_eq!(&ext_out[1][..12], [CLIENT_MAC, EXT_MAC].concat(), "{ctx}");
    assert!(packet::verify_l4_checksum(&ext_out[1], &na), "{ctx}");

    // Backends: an ARP request and a neighbour solicitation for the
    // backends the SYNs go to (their announcements are learned because
    // they are being resolved), then the two SYNs to :80, FULLNAT, and
    // nothing for :81.
    assert_eq!(int_out.len(), 4, "{ctx}");
    let arp = packet::parse_arp(&int_out[0]).unwrap_or_else(|e| panic!("{e:?}: {ctx}"));
    assert_eq!(arp.op, ArpOp::Request, "{ctx}");
    assert!([BE1_4, BE2_4].contains(&arp.target_ip), "{ctx}");
    let ns = packet::parse(&int_out[1]).unwrap_or_else(|e| panic!("{e:?}: {ctx}"));
    assert_eq!(
        ns.icmp.map(|i| i.0),
        Some(135),
        "neighbour solicitation: {ctx}"
    );
    for (frame, client, local) in [
        (&int_out[2], IpAddr::V4(CLIENT4), IpAddr::V4(LOCAL4)),
        (&int_out[3], IpAddr::V6(CLIENT6), IpAddr::V6(LOCAL6)),
    ] {
        let p = packet::parse(frame).unwrap_or_else(|e| panic!("{e:?}: {ctx}"));
        assert_eq!(p.proto, 6, "{ctx}");
        assert_eq!(p.tcp_flags, TcpFlags::SYN, "{ctx}");
        assert_eq!(p.src, local, "source is the local address: {ctx}");
        assert_ne!(p.src, client);
        assert_eq!(p.dport, 80, "{ctx}");
        let be_mac = match p.dst {
            IpAddr::V4(a) if a == BE1_4 => BE1_MAC,
            IpAddr::V4(a) if a == BE2_4 => BE2_MAC,
            IpAddr::V6(a) if a == BE1_6 => BE1_MAC,
            IpAddr::V6(a) if a == BE2_6 => BE2_MAC,
            other => panic!("not a backend: {other}: {ctx}"),
        };
        assert_eq!(&frame[..12], [be_mac, INT_MAC].concat(), "MACs: {ctx}");
        assert!(packet::verify_l4_checksum(frame, &p), "TCP checksum: {ctx}");
        if p.kind == Kind::Ipv4 {
            assert!(ipv4_header_ok(frame, &p), "IPv4 header checksum: {ctx}");
        }
    }
    // Every frame the daemon wrote is one of the above: nothing to :81.
    for f in ext_out.iter().chain(&int_out) {
        if let Ok(p) = packet::parse(f) {
            assert_ne!(p.dport, 81, "{ctx}");
        }
    }
}
