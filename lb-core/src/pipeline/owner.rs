//! Flow ownership: which worker holds a flow's session, the same for
//! both directions, so that a data plane can hand a frame to its owner.

use super::*;
use crate::nat::rss::RssSteering;

/// The fixed-seed hasher of flow ownership: every worker must agree.
fn flow_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x6c62, 0x7370, 0x6f6c, 0x6e21)
}

/// A hash of the flow that is the same for both directions.
pub fn flow_hash(key: &FlowKey) -> u64 {
    let (a, b) = if (key.src, key.sport) <= (key.dst, key.dport) {
        ((key.src, key.sport), (key.dst, key.dport))
    } else {
        ((key.dst, key.dport), (key.src, key.sport))
    };
    flow_hasher().hash_one((a, b, key.proto))
}

/// The worker that owns the session of a packet. The local port names it
/// for FULLNAT replies. Otherwise the outside end of the flow does (the
/// client of a listener, the external peer of an instance), because it is
/// the one end a NAT-mode reply shares with its request; flows with both
/// ends inside or outside use a symmetric hash of both.
pub fn owner(snap: &Snapshot, key: &FlowKey, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    if snap.local_addrs.contains_key(&key.dst) && matches!(key.proto, proto::TCP | proto::UDP) {
        return crate::nat::port_owner(key.dport, workers);
    }
    let src_inside = snap.backend_addrs.contains(&key.src);
    let dst_inside = snap.is_vip(key.dst) || snap.backend_addrs.contains(&key.dst);
    let h = match (src_inside, dst_inside) {
        (false, true) => endpoint_hash(key.src, key.sport, key.proto),
        (true, false) => endpoint_hash(key.dst, key.dport, key.proto),
        _ => flow_hash(key),
    };
    u16::try_from(h % u64::from(workers)).expect("below workers")
}

/// The worker that owns the session a parsed frame belongs to: [`owner`]
/// of its 5-tuple, except for an ICMP error, which belongs with the
/// session of the packet it quotes (so that the worker holding that
/// session checks and translates it). `None` for a frame without a
/// 5-tuple.
pub fn frame_owner(snap: &Snapshot, frame: &[u8], p: &Parsed, workers: u16) -> Option<u16> {
    frame_owner_on(snap, frame, p, workers, None)
}

/// [`frame_owner`] for a frame that arrived on a port spreading frames
/// with `rss` (see [`owner_on`](super::owner_on)).
pub fn frame_owner_on(
    snap: &Snapshot,
    frame: &[u8],
    p: &Parsed,
    workers: u16,
    rss: Option<&RssSteering>,
) -> Option<u16> {
    let key = p.flow_key()?;
    if p.is_fragment {
        // A first fragment names the owner of its datagram's fragments;
        // a later one, without ports, finds it (see `fragment.rs`).
        let first = p
            .is_first_fragment
            .then(|| frame_owner_of(snap, frame, p, &key, workers, rss));
        return fragment::fragment_owner(snap, frame, p, first);
    }
    Some(frame_owner_of(snap, frame, p, &key, workers, rss))
}

/// [`frame_owner_on`] of a packet with its L4 header.
fn frame_owner_of(
    snap: &Snapshot,
    frame: &[u8],
    p: &Parsed,
    key: &FlowKey,
    workers: u16,
    rss: Option<&RssSteering>,
) -> u16 {
    if p.is_icmp_error() {
        if let Ok(quoted) = packet::parse_icmp_inner(frame, p) {
            return super::owner_on(snap, &quoted.reversed(), workers, rss);
        }
    }
    super::owner_on(snap, key, workers, rss)
}

fn endpoint_hash(addr: IpAddr, port: u16, proto: u8) -> u64 {
    flow_hasher().hash_one((addr, port, proto))
}
