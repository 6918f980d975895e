//! Where a worker's frames leave: the sending half of each port's queue
//! pair, and the frames waiting for a neighbour to answer.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use lb_core::pipeline::{Forward, Snapshot};

use super::worker::PENDING_MAX;
use super::BURST;
use crate::io::pool::BufPool;
use crate::io::{Buf, Slot, TxQueue};
use crate::l2::port_vlan;
use crate::neigh::REFRESH;

/// One frame waiting for its next hop.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) port: u32,
    pub(super) next_hop: IpAddr,
    pub(super) frame: Buf,
    pub(super) since: Instant,
}

/// Where frames leave: the sending half of each port's queue pair, and the
/// frames waiting for a neighbour.
pub(super) struct Egress {
    pub(super) tx: Vec<Box<dyn TxQueue>>,
    pub(super) macs: Vec<[u8; 6]>,
    /// Where a frame to copy is retagged for its egress port's VLAN.
    pub(super) scratch: Vec<u8>,
    /// Buffers for ring frames that must wait or move to another worker.
    pub(super) pool: Arc<BufPool>,
    pub(super) pending: VecDeque<Pending>,
    /// Next hops to ask for after the burst.
    pub(super) solicit: Vec<(u32, IpAddr)>,
    pub(super) neighbor_unresolved: u64,
}

impl Egress {
    /// Sends a copy of `frame` on `port`, tagged as the port is (see
    /// [`crate::l2::for_port`]): no tag it arrived with leaves.
    pub(super) fn send(&mut self, port: u32, frame: &[u8], snap: &Snapshot) {
        if let Some(io) = self.tx.get_mut(port as usize) {
            io.send(crate::l2::for_port(
                frame,
                port_vlan(snap, port),
                &mut self.scratch,
            ));
        }
    }

    /// Sends `frame` on `port` as it is: an owned buffer retagged in place
    /// and handed over (an mbuf without a copy), a ring frame copied.
    pub(super) fn send_slot(&mut self, port: u32, frame: Slot<'_>, snap: &Snapshot) {
        match frame {
            Slot::Owned(mut buf) => {
                let Some(io) = self.tx.get_mut(port as usize) else {
                    return;
                };
                if buf.retag(port_vlan(snap, port)) {
                    io.send_buf(buf);
                } else {
                    // No headroom for the tag: the copy path has room.
                    let vlan = port_vlan(snap, port);
                    io.send(crate::l2::for_port(buf.data(), vlan, &mut self.scratch));
                }
            }
            Slot::Lent(f) => self.send(port, f, snap),
            Slot::Empty => {}
        }
    }

    /// Parks a frame until its next hop is resolved; the oldest goes when
    /// the queue is full (counted).
    pub(super) fn park(&mut self, port: u32, next_hop: IpAddr, frame: Option<Buf>, now: Instant) {
        self.ask(port, next_hop);
        let Some(frame) = frame else {
            // No buffer free: as good as unresolved.
            self.neighbor_unresolved += 1;
            return;
        };
        if self.pending.len() >= PENDING_MAX {
            self.neighbor_unresolved += 1;
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            port,
            next_hop,
            frame,
            since: now,
        });
    }

    /// Asks for `next_hop` after the burst (at most once per burst).
    pub(super) fn ask(&mut self, port: u32, next_hop: IpAddr) {
        if !self.solicit.contains(&(port, next_hop)) && self.solicit.len() < BURST {
            self.solicit.push((port, next_hop));
        }
    }

    /// Forwards `frame` to `f`'s next hop: sent with the neighbour's
    /// address, or parked until it is known. `copy` is a frame the
    /// pipeline built in its own buffer, which `frame` then stands for.
    pub(super) fn forward(
        &mut self,
        f: &Forward,
        mut frame: Slot<'_>,
        neigh: &crate::neigh::Neighbors,
        snap: &Snapshot,
        now: Instant,
    ) {
        let src = self
            .macs
            .get(f.hop.port as usize)
            .copied()
            .unwrap_or_default();
        match neigh.lookup(f.hop.port, f.hop.next_hop, now) {
            Some(e) => {
                crate::l2::set_macs(frame.data_mut(), e.mac, src);
                self.send_slot(f.hop.port, frame, snap);
                if now.saturating_duration_since(e.learned) > REFRESH {
                    // Ask again while the entry still works.
                    self.ask(f.hop.port, f.hop.next_hop);
                }
            }
            None => {
                let buf = frame.into_buf(&self.pool);
                self.park(f.hop.port, f.hop.next_hop, buf, now);
            }
        }
    }
}
