//! RSS steering (see `nat::rss`): on ports whose NIC spreads frames over
//! the workers' RX queues with a Toeplitz hash, a FULLNAT session's client
//! flow belongs to the worker whose queue the NIC puts it on, and its local
//! port is chosen so that the backend's replies land on that queue too.
//! Neither direction then needs a handoff. Without RSS on a port, or when
//! no steered port is free, the local port still names its worker and the
//! data plane hands the frame over.

use std::sync::Arc;

use super::*;
use crate::nat::rss::RssSteering;
use crate::nat::LocalPort;

impl Worker {
    /// Sets how port `port` (index into `cfg.ports`) spreads frames over
    /// the workers (`None`: it does not). The data plane calls it once
    /// its ports are open, before the first burst.
    pub fn set_port_rss(&mut self, port: usize, rss: Option<Arc<RssSteering>>) {
        if port >= self.port_rss.len() {
            self.port_rss.resize(port + 1, None);
        }
        self.port_rss[port] = rss;
        if self.port_rss.iter().all(Option::is_none) {
            // No port steers: new sessions skip the look at the route.
            self.port_rss.clear();
        }
    }

    /// A local port on `local` for a session toward `backend:backend_port`:
    /// one whose reply lands on this worker's RX queue when the backend's
    /// port has RSS, else any free port of this worker's share.
    pub(super) fn allocate_local_port(
        &mut self,
        local: IpAddr,
        backend: IpAddr,
        backend_port: u16,
        ip_proto: u8,
        snap: &Snapshot,
    ) -> Option<LocalPort> {
        let sessions = &self.sessions;
        let is_free = |port| {
            !sessions.contains_key(&FlowKey {
                src: backend,
                dst: local,
                proto: ip_proto,
                sport: backend_port,
                dport: port,
            })
        };
        let steering = if self.port_rss.is_empty() {
            None
        } else {
            snap.route(backend)
                .and_then(|hop| self.port_rss.get(hop.port as usize))
                .and_then(Option::as_deref)
                .and_then(|rss| Some((rss, rss.reply_hash(backend, backend_port, local)?)))
        };
        if let Some((rss, reply)) = steering {
            let me = self.id;
            let steered =
                self.ports
                    .allocate_steered(local, |port| rss.lands_on(reply, port, me), is_free);
            if steered.is_some() {
                return steered;
            }
        }
        self.ports.allocate(local, is_free)
    }
}

/// [`owner`] of a packet that arrived on a port spreading frames with
/// `rss`: the client flow of a FULLNAT listener belongs to the worker the
/// NIC puts it on (its replies are steered there by their local port), and
/// so does a reply to a health probe (any worker passes it on to the
/// checker). Other flows, and every flow on a port without RSS, keep
/// [`owner`]: a NAT-mode reply shares no tuple with its request, so a hash
/// cannot put both on one queue.
pub fn owner_on(snap: &Snapshot, key: &FlowKey, workers: u16, rss: Option<&RssSteering>) -> u16 {
    if let Some(rss) = rss.filter(|_| workers > 1) {
        if is_fullnat_client_flow(snap, key) || is_probe_reply(snap, key) {
            if let Some(w) = rss.worker(key) {
                return w % workers;
            }
        }
    }
    owner(snap, key, workers)
}

/// A TCP or UDP packet from a client to a FULLNAT listener.
fn is_fullnat_client_flow(snap: &Snapshot, key: &FlowKey) -> bool {
    matches!(key.proto, proto::TCP | proto::UDP)
        && snap
            .listener_at(key.dst, key.proto, key.dport)
            .is_some_and(|(lb, l)| !snap.cfg.load_balancers[lb].listeners[l].transfer_client_ip)
}

/// A TCP or UDP reply to a health probe (sent from a local address, from a
/// port no session uses).
fn is_probe_reply(snap: &Snapshot, key: &FlowKey) -> bool {
    matches!(key.proto, proto::TCP | proto::UDP)
        && key.dport >= crate::nat::PROBE_FIRST_PORT
        && snap.local_addrs.contains_key(&key.dst)
}
