//! The frames a trace's packet lines describe.

use super::parse::TCP_ACK;
use super::*;

/// Builds the frame of a trace packet: `frame_spec`, then what its IP
/// words say.
pub fn build_trace_frame(p: &TracePacket, vlan: Option<u16>) -> Result<Vec<u8>, TraceError> {
    let mut spec = frame_spec(p, vlan);
    if let Some(ttl) = p.ip.ttl {
        spec.ttl = ttl;
    }
    if let Some(q) = &p.ip.quote {
        // The quoted packet: its IP header and the first bytes of its L4.
        let quoted = build_frame(&FrameSpec {
            src: q.src,
            dst: q.dst,
            proto: q.proto,
            sport: q.sport,
            dport: q.dport,
            tcp_flags: 0x02,
            ..FrameSpec::default()
        });
        let qp = lb_core::packet::parse(&quoted).map_err(|e| trace_error!("quote: {e}"))?;
        spec.payload = quoted[qp.l3_offset..qp.l3_end()].to_vec();
    }
    if let Some(len) = p.ip.len {
        let f = build_frame(&spec);
        let base = f.len() - packet::parse(&f).map_or(14, |q| q.l3_offset);
        let extra = len
            .checked_sub(base)
            .ok_or_else(|| trace_error!("len={len} is shorter than the packet's {base} bytes"))?;
        spec.payload.resize(spec.payload.len() + extra, 0);
    }
    let mut frame = build_frame(&spec);
    if p.ip.no_df {
        let l3 = packet::parse(&frame).map_or(14, |q| q.l3_offset);
        frame[l3 + 6] &= !0x40;
        lb_core::packet::Ipv4Packet::new_unchecked(&mut frame[l3..]).fill_checksum();
    }
    match p.ip.opt {
        None => {}
        Some(IpOpt::Lsrr) => packet::add_ipv4_options(&mut frame, &[0x83, 7, 4, 198, 18, 0, 1]),
        Some(IpOpt::Ssrr) => packet::add_ipv4_options(&mut frame, &[0x89, 7, 4, 198, 18, 0, 1]),
        Some(IpOpt::RecordRoute) => packet::add_ipv4_options(&mut frame, &[7, 7, 4, 0, 0, 0, 0]),
        Some(IpOpt::Rh0 | IpOpt::Rh2) => {
            // One address, segments left 1.
            let kind = if p.ip.opt == Some(IpOpt::Rh0) { 0 } else { 2 };
            let mut body = vec![kind, 1, 0, 0, 0, 0];
            body.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            body.resize(6 + 16, 0);
            body[6 + 15] = 1;
            packet::add_ipv6_ext_header(&mut frame, 43, &body);
        }
    }
    set_tcp_window(&mut frame, p);
    if let Some((offset, more)) = p.ip.frag {
        mark_fragment(&mut frame, offset, more, p.ip.frag_id.unwrap_or(1));
    }
    Ok(frame)
}

/// Makes the packet of `frame` an IP fragment at `offset` (its bytes after
/// the IP header are the fragment's data): IPv4 flags and identification,
/// or an IPv6 fragment header.
fn mark_fragment(frame: &mut Vec<u8>, offset: u16, more: bool, id: u32) {
    let Ok(p) = packet::parse_general(frame) else {
        return;
    };
    if p.is_ipv6() {
        let mut body = ((offset & 0xfff8) | u16::from(more)).to_be_bytes().to_vec();
        body.extend_from_slice(&id.to_be_bytes());
        packet::add_ipv6_ext_header(frame, 44, &body);
    } else {
        let mut ip = lb_core::packet::Ipv4Packet::new_unchecked(&mut frame[p.l3_offset..]);
        ip.set_ident(id as u16);
        ip.set_frag(false, more, offset);
        ip.fill_checksum();
    }
}

/// The TCP window and window-scale option a trace line gives (the room for
/// the option is the first 4 bytes of the payload [`frame_spec`] made).
fn set_tcp_window(frame: &mut [u8], p: &TracePacket) {
    if p.key.proto != proto::TCP || (p.tcp.win.is_none() && p.tcp.wscale.is_none()) {
        return;
    }
    let Ok(parsed) = packet::parse(frame) else {
        return;
    };
    let l4 = parsed.l4_offset;
    if let Some(win) = p.tcp.win {
        frame[l4 + 14..l4 + 16].copy_from_slice(&win.to_be_bytes());
    }
    if let Some(ws) = p.tcp.wscale {
        frame[l4 + 12] = 6 << 4;
        frame[l4 + 20..l4 + 24].copy_from_slice(&[1, 3, 3, ws]);
    }
    packet::complete_l4_checksum(frame, &parsed, p.key.src, p.key.dst);
}

fn frame_spec(p: &TracePacket, vlan: Option<u16>) -> FrameSpec {
    FrameSpec {
        src_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
        dst_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
        vlan,
        src: p.key.src,
        dst: p.key.dst,
        proto: p.key.proto,
        sport: p.key.sport,
        dport: p.key.dport,
        tcp_flags: p.tcp_flags,
        tcp_seq: p.tcp.seq.unwrap_or(1),
        tcp_ack: p
            .tcp
            .ack
            .unwrap_or(if p.tcp_flags & TCP_ACK != 0 { 1 } else { 0 }),
        icmp: p.icmp,
        ttl: 64,
        payload: trace_payload(p),
    }
}

/// The bytes after the L4 header `build_frame` writes: for TCP, room for
/// the window-scale option, then the payload; for GRE, which `build_frame`
/// carries as is, a minimal header (RFC 2784: no checksum, key or
/// sequence number, version 0) announcing IPv4 or IPv6 inside.
fn trace_payload(p: &TracePacket) -> Vec<u8> {
    if p.key.proto == proto::GRE {
        let inner: u16 = if p.key.src.is_ipv6() { 0x86dd } else { 0x0800 };
        let [hi, lo] = inner.to_be_bytes();
        return vec![0, 0, hi, lo];
    }
    vec![0; usize::from(p.tcp.data) + if p.tcp.wscale.is_some() { 4 } else { 0 }]
}
