//! DPDK over `net_ring` (a loopback: what is sent comes back on RX), plus
//! the EAL, mempool and mbuf basics. One test: EAL initialises once per
//! process.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod dpdk_common;

use std::time::Duration;

use dpdk_common::{collect, seq_of, test_frame};
use lb_dataplane::io::dpdk::{DpdkError, DpdkPort, DpdkPortOpts, DpdkRx, Eal, Mbuf, Mempool};
use lb_dataplane::io::{Buf, PacketIo, RxMeta, RxQueue, Slot, TxQueue};

#[test]
fn net_ring() {
    let _cleanup = dpdk_common::RuntimeDirGuard;
    {
        let eal = dpdk_common::init(&["net_ring0".to_string()]);
        eal_once(&eal);
        let pool =
            Mempool::new("ring_pool", 4095, 64, Mempool::DEFAULT_DATA_ROOM, None).expect("mempool");
        mbuf_api(&pool);
        let port = DpdkPort::open(0, 2, &pool, &DpdkPortOpts::default()).expect("open net_ring0");
        assert_eq!(port.name(), "net_ring0");
        // net_ring has no RSS: the port falls back to one queue.
        assert_eq!(port.queue_count(), 1);
        assert!(!port.rss());
        let link = port.link_status().expect("link");
        eprintln!("net_ring0: {link}, mac {:02x?}", port.mac());
        assert!(link.up);

        let mut q = port.queue(0).expect("queue 0");
        assert!(matches!(port.queue(0), Err(DpdkError::QueueTaken { .. })));
        assert!(matches!(port.queue(1), Err(DpdkError::NoSuchQueue { .. })));
        assert_eq!(q.mac(), port.mac());
        loopback(&mut q);
        zero_copy(&mut q, &pool);

        let stats = q.stats();
        assert_eq!(stats.tx_dropped, 1, "the one oversized frame");
        assert_eq!(stats.rx_dropped, 0);
        assert_eq!(stats.rx_packets, stats.tx_packets);
        assert_eq!(stats.rx_bytes, stats.tx_bytes);
        drop(q);
        // The queue is free again once its handle is gone.
        halves(&port);
        drop(port);
        assert_eq!(pool.in_use(), 0, "every mbuf went back to the pool");
    }
    // The last handle is gone: EAL cleaned up, runtime directory removed.
    dpdk_common::check_runtime_dir_removed();
    assert!(Eal::current().is_none());
    assert!(matches!(
        Eal::init(&dpdk_common::eal_args(&[])),
        Err(DpdkError::EalFinished)
    ));
}

fn eal_once(eal: &Eal) {
    let again = Eal::init(eal.args()).expect("same arguments give the live handle");
    assert_eq!(again.args(), eal.args());
    match Eal::init(&["--no-huge".to_string()]) {
        Err(DpdkError::EalAlreadyInitialized { first }) => assert_eq!(first, eal.args()),
        other => panic!("second init with other arguments: {other:?}"),
    }
    let reg = eal.register_thread().expect("register");
    assert!(Eal::lcore_id().is_some());
    drop(reg);
}

fn mbuf_api(pool: &Mempool) {
    let before = pool.in_use();
    let mut m = pool.alloc().expect("alloc");
    assert!(m.is_empty());
    assert_eq!(m.headroom(), usize::from(Mempool::HEADROOM));
    assert_eq!(m.tailroom(), pool.max_frame());
    m.append(4).expect("append").copy_from_slice(b"body");
    m.prepend(2).expect("prepend").copy_from_slice(b"hd");
    assert_eq!(m.data(), b"hdbody");
    m.data_mut()[0] = b'H';
    assert!(m.adj(1));
    assert!(m.trim(2));
    assert_eq!(m.data(), b"dbo");
    assert!(!m.trim(10), "trim beyond the data changes nothing");
    assert!(m.append(pool.max_frame()).is_none(), "no room");
    assert_eq!(m.data(), b"dbo");
    assert!(m.set_len(5));
    assert_eq!(m.len(), 5);
    assert_eq!(m.segments(), 1);
    assert_eq!(pool.in_use(), before + 1);
    let raw = m.into_raw();
    // SAFETY: `raw` came from into_raw just above and is owned by nobody.
    let m = unsafe { Mbuf::from_raw(raw) }.expect("non-null");
    drop(m);
    assert_eq!(pool.in_use(), before);
    // SAFETY: NULL is allowed and yields None.
    assert!(unsafe { Mbuf::from_raw(std::ptr::null_mut()) }.is_none());
}

/// Frames of every size from 60 to 1514 go round byte-exact and in order.
fn loopback(q: &mut lb_dataplane::io::dpdk::DpdkQueue) {
    let (dst, src) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let sizes: Vec<usize> = (60..=1514).step_by(7).chain([1514]).collect();
    let mut seq = 0u32;
    for chunk in sizes.chunks(40) {
        let sent: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&len| {
                seq += 1;
                test_frame(dst, src, seq, len)
            })
            .collect();
        for f in &sent {
            assert!(q.send(f));
        }
        q.flush().expect("flush");
        let got = collect(q, sent.len(), Duration::from_secs(5), &|f| {
            seq_of(f).is_some()
        });
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(g, s, "frame {:?} differs", seq_of(s));
        }
    }
    // A frame larger than a buffer is refused and counted.
    let before = q.stats().tx_dropped;
    assert!(!q.send(&vec![0u8; 4000]));
    assert_eq!(q.stats().tx_dropped, before + 1);
}

/// Receives one burst from `rx`, waiting up to 5 s for it.
fn rx_once(rx: &mut DpdkRx) -> Vec<(Vec<u8>, bool)> {
    for _ in 0..5000 {
        let mut slots: [Slot<'_>; 32] = std::array::from_fn(|_| Slot::Empty);
        let mut meta = [RxMeta::default(); 32];
        let n = rx.rx_burst(&mut slots, &mut meta);
        if n > 0 {
            return slots[..n]
                .iter()
                .map(|s| (s.data().to_vec(), matches!(s, Slot::Owned(Buf::Mbuf(_)))))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Vec::new()
}

/// The queue pair split for a worker: bursts of the mbufs themselves, sent
/// back out as they are, retagged in place; the queue stays taken until
/// both halves are gone.
fn halves(port: &DpdkPort) {
    let (mut rx, mut tx) = port.queue(0).expect("queue 0 again").split();
    let frame = test_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 7777, 100);
    assert!(tx.send(&frame));
    tx.flush().expect("flush");
    assert_eq!(
        rx_once(&mut rx),
        vec![(frame.clone(), true)],
        "an mbuf, as sent"
    );

    // A received mbuf goes out again, tagged for VLAN 7 in its headroom.
    assert!(tx.send(&frame));
    tx.flush().expect("flush");
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    tagged.extend_from_slice(&frame[12..]);
    for _ in 0..5000 {
        let mut slots: [Slot<'_>; 32] = std::array::from_fn(|_| Slot::Empty);
        let mut meta = [RxMeta::default(); 32];
        if rx.rx_burst(&mut slots, &mut meta) == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let Slot::Owned(mut buf) = std::mem::take(&mut slots[0]) else {
            panic!("DPDK frames come in buffers of their own");
        };
        assert!(buf.retag(Some(7)));
        assert_eq!(buf.data(), &tagged[..]);
        assert!(tx.send_buf(buf));
        break;
    }
    tx.flush().expect("flush");
    assert_eq!(rx_once(&mut rx), vec![(tagged, true)]);

    drop(tx);
    assert!(
        matches!(port.queue(0), Err(DpdkError::QueueTaken { .. })),
        "the RX half still holds the queue"
    );
    drop(rx);
    drop(port.queue(0).expect("free with both halves gone"));
}

/// The received mbuf itself goes back out (and round again).
fn zero_copy(q: &mut lb_dataplane::io::dpdk::DpdkQueue, pool: &Mempool) {
    let frame = test_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 9999, 200);
    assert!(q.send(&frame));
    q.flush().expect("flush");
    let mut held = Vec::new();
    for _ in 0..1000 {
        q.recv_burst_mbufs(32, &mut |m, meta| {
            assert!(!meta.truncated);
            held.push(m);
        });
        if !held.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(held.len(), 1);
    let mut m = held.pop().expect("one");
    assert_eq!(m.data(), &frame[..]);
    m.data_mut()[18] ^= 0xff;
    let in_use = pool.in_use();
    assert!(q.send_mbuf(m));
    q.flush().expect("flush");
    let got = collect(q, 1, Duration::from_secs(5), &|f| seq_of(f) == Some(9999));
    assert_eq!(got.len(), 1);
    let mut want = frame.clone();
    want[18] ^= 0xff;
    assert_eq!(got[0], want);
    assert!(
        pool.in_use() < in_use,
        "the mbuf was freed after its second trip"
    );
}
