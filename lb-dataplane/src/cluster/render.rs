//! The BIRD 2 configuration `lbd` writes for the node's routing daemon
//! to include: BFD, one BGP protocol per peer, and the announced routes.
//!
//! ```text
//! protocol static lbd_routes4_0 {            # per port with peers and family
//!   ipv4;
//!   route 198.18.20.10/32 via "lbd-ext";     # device routes: gone with the interface
//! }
//! protocol bgp lbd_peer1 {
//!   local 198.18.10.11 as 65011;
//!   neighbor 198.18.10.1 as 65000;
//!   ...
//!   ipv4 { import none; export where proto = "lbd_routes4_0" && net ~ [ 198.18.20.10/32 ]; };
//! }
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;

use ipnet::IpNet;
use lb_core::model::{Cluster, Port};

use super::{route_device, Announced};

/// The name of the static protocol holding the routes of `family`
/// (4 or 6) through port `port`.
fn routes_name(family: u8, port: usize) -> String {
    format!("lbd_routes{family}_{port}")
}

/// A BIRD string literal (the configuration refuses quotes and control
/// characters in what it passes here; anything else is kept out).
fn quoted(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect();
    format!("\"{clean}\"")
}

/// The include file for `cluster` on `ports`, announcing `set`.
pub fn render(cluster: &Cluster, ports: &[Port], set: &Announced) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by lbd for node {} of {} (AS {}). Do not edit: lbd rewrites\n\
         # it whenever what the node announces changes, then runs `birdc configure`.\n\
         # Announced: {}.",
        cluster.node_id,
        cluster.nodes,
        cluster.asn,
        if set.is_empty() {
            "nothing".to_string()
        } else {
            set.prefixes()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    // The ports the peers are behind, in order.
    let peer_ports: BTreeSet<usize> = cluster.peers.iter().map(|p| p.port).collect();
    if cluster.bfd {
        let _ = writeln!(s, "\nprotocol bfd lbd_bfd {{");
        for &pi in &peer_ports {
            if let Some(dev) = route_device_of(ports, pi) {
                let _ = writeln!(
                    s,
                    "  interface {} {{\n    interval {} ms;\n    multiplier {};\n  }};",
                    quoted(dev),
                    cluster.bfd_interval_ms,
                    cluster.bfd_multiplier
                );
            }
        }
        let _ = writeln!(s, "}}");
    }
    for &pi in &peer_ports {
        let dev = route_device_of(ports, pi);
        for (family, v6) in [(4u8, false), (6, true)] {
            let _ = writeln!(
                s,
                "\nprotocol static {} {{\n  ipv{family};",
                routes_name(family, pi)
            );
            match dev {
                Some(dev) => {
                    for net in set.prefixes().filter(|n| is_v6(n) == v6) {
                        let _ = writeln!(s, "  route {net} via {};", quoted(dev));
                    }
                }
                None => {
                    let _ = writeln!(s, "  # port {pi} has no tap: no routes");
                }
            }
            let _ = writeln!(s, "}}");
        }
    }
    for (i, peer) in cluster.peers.iter().enumerate() {
        let v6 = peer.address.is_ipv6();
        let family = if v6 { 6 } else { 4 };
        let port_name = ports.get(peer.port).map_or("?", |p| p.name.as_str());
        let mine: Vec<String> = if route_device_of(ports, peer.port).is_some() {
            set.prefixes()
                .filter(|n| is_v6(n) == v6)
                .map(ToString::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let export = if mine.is_empty() {
            "export none;".to_string()
        } else {
            format!(
                "export where proto = \"{}\" && net ~ [ {} ];",
                routes_name(family, peer.port),
                mine.join(", ")
            )
        };
        let _ = writeln!(
            s,
            "\nprotocol bgp lbd_peer{n} {{\n\
             \x20 description {desc};\n\
             \x20 local {local} as {asn};\n\
             \x20 neighbor {addr} as {peer_asn};\n\
             \x20 direct;\n\
             \x20 hold time {hold};\n\
             \x20 keepalive time {keepalive};\n\
             \x20 connect retry time 5;\n\
             \x20 error wait time 1, 10;\n\
             \x20 graceful restart off;\n\
             \x20 bfd {bfd};\n\
             \x20 ipv{family} {{\n\
             \x20   import none;\n\
             \x20   {export}\n\
             \x20   next hop self;\n\
             \x20 }};\n\
             }}",
            n = i + 1,
            desc = quoted(&format!("{} behind port {port_name}", peer.address)),
            local = peer.local,
            asn = cluster.asn,
            addr = peer.address,
            peer_asn = peer.asn,
            hold = cluster.hold_time_s,
            keepalive = cluster.keepalive_s,
            bfd = if cluster.bfd { "on" } else { "off" },
        );
    }
    s
}

fn route_device_of(ports: &[Port], pi: usize) -> Option<&str> {
    ports.get(pi).and_then(route_device)
}

fn is_v6(n: &IpNet) -> bool {
    matches!(n, IpNet::V6(_))
}
