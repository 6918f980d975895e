use super::ring::*;
use super::*;

/// A fake block body with one frame at block offset `off`.
fn fake_frame(off: usize, mac: usize, data: &[u8], status: u32, tci: u16, tpid: u16) -> Vec<u8> {
    let mut body = vec![0u8; 4096 - BODY_START];
    let at = off - BODY_START;
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_ne_bytes());
    put32(&mut body, at + TP_NEXT_OFFSET, 0);
    put32(&mut body, at + TP_SNAPLEN, data.len() as u32);
    put32(&mut body, at + TP_LEN, data.len() as u32);
    put32(&mut body, at + TP_STATUS, status);
    body[at + TP_MAC..at + TP_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
    put32(&mut body, at + TP_VLAN_TCI, u32::from(tci));
    body[at + TP_VLAN_TPID..at + TP_VLAN_TPID + 2].copy_from_slice(&tpid.to_ne_bytes());
    body[at + mac..at + mac + data.len()].copy_from_slice(data);
    body
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn layout_matches_the_kernel_headers() {
    // linux/if_packet.h, x86_64 and aarch64 alike.
    assert_eq!(BLOCK_STATUS, 8);
    assert_eq!(BLOCK_NUM_PKTS, 12);
    assert_eq!(BLOCK_FIRST_PKT, 16);
    assert_eq!(TP_MAC, 24);
    assert_eq!(TP_VLAN_TCI, 32);
    assert_eq!(TP_VLAN_TPID, 36);
    assert_eq!(TP_SLL, 48);
    assert_eq!(TP_META_END, libc::TPACKET3_HDRLEN);
}

#[test]
fn frame_header_is_bounds_checked() {
    let data = eth(0x0800, &[0xab; 50]);
    let body = fake_frame(48, 82, &data, libc::TP_STATUS_USER, 0, 0);
    let hdr = frame_hdr(&body, 48).expect("valid frame");
    assert_eq!((hdr.snaplen, hdr.mac), (data.len(), 82));
    assert!(frame_hdr(&body, 4).is_none(), "inside the block header");
    assert!(frame_hdr(&body, body.len()).is_none(), "past the end");
    let mut bad = body.clone();
    bad[48 - BODY_START + TP_SNAPLEN..][..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(frame_hdr(&bad, 48).is_none(), "data past the end");
}

#[test]
fn vlan_tag_is_put_back_in_place() {
    let inner = eth(0x0800, &[0x45; 46]);
    let data = inner.clone();
    let status =
        libc::TP_STATUS_USER | libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
    let mut body = fake_frame(48, 82, &data, status, 0x2064, 0x88a8);
    let hdr = frame_hdr(&body, 48).expect("valid frame");
    let tag = stripped_tag(&hdr).expect("tag");
    assert_eq!(tag, (0x88a8, 0x2064));
    let mut want = inner[..12].to_vec();
    want.extend_from_slice(&[0x88, 0xa8, 0x20, 0x64]);
    want.extend_from_slice(&inner[12..]);

    let (s, e) = reinsert_tag_in_place(&mut body, 48 - BODY_START, &hdr, tag).expect("room");
    assert_eq!(&body[s..e], &want[..]);

    // Without TP_STATUS_VLAN_TPID_VALID the tag is 802.1Q.
    let hdr = FrameHdr {
        status: libc::TP_STATUS_VLAN_VALID,
        ..hdr
    };
    assert_eq!(stripped_tag(&hdr), Some((0x8100, 0x2064)));
}

#[test]
fn options_are_checked() {
    assert!(ring_request(&AfPacketOpts::default()).is_ok());
    let bad = [
        AfPacketOpts {
            block_size: 1000,
            ..Default::default()
        },
        AfPacketOpts {
            block_count: 0,
            ..Default::default()
        },
        AfPacketOpts {
            frame_size: 100,
            ..Default::default()
        },
        AfPacketOpts {
            tx_batch: 0,
            ..Default::default()
        },
        AfPacketOpts {
            tx_batch: 5000,
            ..Default::default()
        },
    ];
    for opts in bad {
        assert_eq!(
            ring_request(&opts).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::InvalidInput),
            "{opts:?}"
        );
    }
}

#[test]
fn open_of_a_missing_interface_fails() {
    let err =
        AfPacket::open("lb-no-such-if0", &AfPacketOpts::default()).expect_err("no such interface");
    assert!(err.to_string().contains("lb-no-such-if0"), "{err}");
}
