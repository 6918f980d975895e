//! `[cluster]`: this node's place among the load balancers announcing
//! the same VIPs, and the BGP peers it announces them to.

use lb_core::model::{Cluster, ClusterPeer};
use lb_core::nat::{node_ports, port_owner, MAX_PROBES};

use super::*;

/// `cluster.nodes` upper bound.
pub const MAX_CLUSTER_NODES: i64 = 255;
/// The largest AS number (4294967295 is reserved, RFC 7300).
const MAX_ASN: i64 = 4_294_967_294;
/// AS_TRANS (RFC 6793): a placeholder, never a real AS.
const AS_TRANS: i64 = 23456;
/// `cluster.hold_time_s` bounds: RFC 4271 allows 0 (no keepalives, which
/// would never notice a dead peer) or at least 3.
const MIN_HOLD_TIME_S: i64 = 3;
const MAX_HOLD_TIME_S: i64 = 65535;
/// `cluster.bfd_interval_ms` bounds.
const MIN_BFD_INTERVAL_MS: i64 = 10;
const MAX_BFD_INTERVAL_MS: i64 = 10_000;

impl Compiler<'_, '_> {
    pub(super) fn cluster(
        &mut self,
        c: &S<ClusterConfig>,
        port_ids: &Ids<'_>,
        ports: &[Port],
        dataplane: &Dataplane,
        owners: &HashMap<IpAddr, Owner>,
    ) -> Option<Cluster> {
        let span = c.span();
        let c = c.get_ref();
        let nodes: u16 = self.int(&c.nodes, "nodes", 1, MAX_CLUSTER_NODES);
        let node_id: u16 = if nodes == 0 {
            0
        } else {
            self.int(&c.node_id, "node_id (1..=nodes)", 1, i64::from(nodes))
        };
        if nodes > 0 {
            self.port_slices(&c.nodes, nodes, dataplane.workers);
        }
        let asn = self.asn(&c.asn);
        let bird_config = self.path(
            c.bird_config.as_ref(),
            "bird_config",
            Cluster::DEFAULT_BIRD_CONFIG,
        );
        let bird_socket = self.path(
            c.bird_socket.as_ref(),
            "bird_socket",
            Cluster::DEFAULT_BIRD_SOCKET,
        );
        let hold_time_s: u16 = match &c.hold_time_s {
            Some(v) => self.int(v, "hold_time_s", MIN_HOLD_TIME_S, MAX_HOLD_TIME_S),
            None => Cluster::DEFAULT_HOLD_TIME_S,
        };
        let keepalive_s: u16 = match &c.keepalive_s {
            Some(v) => self.int(
                v,
                "keepalive_s (at most a third of hold_time_s)",
                1,
                i64::from(hold_time_s / 3).max(1),
            ),
            None => (hold_time_s / 3).max(1),
        };
        let bfd_interval_ms: u32 = match &c.bfd_interval_ms {
            Some(v) => self.int(
                v,
                "bfd_interval_ms",
                MIN_BFD_INTERVAL_MS,
                MAX_BFD_INTERVAL_MS,
            ),
            None => Cluster::DEFAULT_BFD_INTERVAL_MS,
        };
        let bfd_multiplier: u8 = match &c.bfd_multiplier {
            Some(v) => self.int(v, "bfd_multiplier", 1, 255),
            None => Cluster::DEFAULT_BFD_MULTIPLIER,
        };
        if c.peers.is_empty() {
            self.err(
                &span,
                "[cluster] needs at least one [[cluster.peer]] (the routers the VIPs are announced to)",
            );
        }
        let mut peers = Vec::new();
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for p in &c.peers {
            let p = p.get_ref();
            let asn = self.asn(&p.asn);
            let port = port_ids.get(p.port.get_ref());
            if port.is_none() {
                self.err(&p.port.span(), format!("unknown port {}", p.port.get_ref()));
            }
            let address = match parse::address(p.address.get_ref()) {
                Ok(a) => a,
                Err(e) => {
                    self.err(&p.address.span(), e);
                    continue;
                }
            };
            if let Some(line) = seen.insert(address, self.line(&p.address.span())) {
                self.err(
                    &p.address.span(),
                    format!("peer {address} is already defined on line {line}"),
                );
            }
            if let Some(o) = owners.get(&address) {
                self.err(
                    &p.address.span(),
                    format!(
                        "peer {address} is our own address ({} on line {}); a peer is an upstream router",
                        o.what, o.line
                    ),
                );
                continue;
            }
            let Some(pi) = port else { continue };
            if ports[pi].tap.is_none() {
                self.err(
                    &p.port.span(),
                    format!(
                        "port {} has no tap: BGP and BFD to a peer run over the port's TAP interface, so that they end when lbd does",
                        ports[pi].name
                    ),
                );
            }
            let Some(local) = self.peer_link(&p.address.span(), address, &ports[pi]) else {
                continue;
            };
            peers.push(ClusterPeer {
                address,
                asn,
                port: pi,
                local,
            });
        }
        Some(Cluster {
            node_id,
            nodes,
            asn,
            bird_config,
            bird_socket,
            hold_time_s,
            keepalive_s,
            bfd: c.bfd.unwrap_or(true),
            bfd_interval_ms,
            bfd_multiplier,
            peers,
        })
    }

    /// An AS number: 1..=4294967294, not AS_TRANS.
    fn asn(&mut self, v: &S<i64>) -> u32 {
        if *v.get_ref() == AS_TRANS {
            self.err(
                &v.span(),
                "AS 23456 is AS_TRANS (RFC 6793), a placeholder; use the real AS number",
            );
            return 0;
        }
        self.int(v, "an AS number", 1, MAX_ASN)
    }

    /// An absolute path (the routing daemon's files), or `default`.
    fn path(&mut self, v: Option<&S<String>>, what: &str, default: &str) -> String {
        let Some(v) = v else {
            return default.to_string();
        };
        let s = v.get_ref();
        if !s.starts_with('/') || s.ends_with('/') || s.chars().any(|c| c.is_control() || c == '"')
        {
            self.err(
                &v.span(),
                format!("{what} must be an absolute file path without quotes or control characters, got {s:?}"),
            );
        }
        s.clone()
    }

    /// Each worker of each node keeps at least [`MAX_PROBES`] ports of
    /// every local address: `nodes` slices shared by `workers`.
    fn port_slices(&mut self, at: &S<i64>, nodes: u16, workers: u16) {
        let workers = workers.max(1);
        let fewest = (1..=nodes)
            .flat_map(|n| {
                let slice = node_ports(n, nodes);
                (0..workers).map(move |w| {
                    slice
                        .clone()
                        .filter(|&p| port_owner(p, workers) == w)
                        .count()
                })
            })
            .min()
            .unwrap_or(0);
        if fewest < MAX_PROBES {
            self.err(
                &at.span(),
                format!(
                    "nodes = {nodes} with workers = {workers} leaves a worker {fewest} ports of each local address; at least {MAX_PROBES} are needed (fewer nodes or workers)"
                ),
            );
        }
    }

    /// This node's address on the link of `port` where `peer` is: BGP and
    /// BFD speak to a directly connected router.
    fn peer_link(&mut self, span: &Range<usize>, peer: IpAddr, port: &Port) -> Option<IpAddr> {
        match port.addresses.iter().find(|n| n.contains(&peer)) {
            Some(net) => Some(net.addr()),
            None => {
                let links: Vec<String> = port.addresses.iter().map(ToString::to_string).collect();
                self.err(
                    span,
                    format!(
                        "peer {peer} is not on a link of port {} ({}); a peer must be directly connected",
                        port.name,
                        if links.is_empty() { "no addresses".to_string() } else { links.join(", ") }
                    ),
                );
                None
            }
        }
    }
}
