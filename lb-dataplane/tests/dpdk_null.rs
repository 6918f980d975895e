//! DPDK over `net_null` (RX produces endless 64-byte frames, TX swallows
//! everything): counters and drops. One test: EAL initialises once per
//! process.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod dpdk_common;

use lb_dataplane::io::dpdk::{DpdkPort, DpdkPortOpts, Mempool};
use lb_dataplane::io::PacketIo;

#[test]
fn net_null() {
    let _cleanup = dpdk_common::RuntimeDirGuard;
    {
        let _eal = dpdk_common::init(&["net_null0".to_string()]);
        let pool =
            Mempool::new("null_pool", 2047, 32, Mempool::DEFAULT_DATA_ROOM, None).expect("mempool");
        let opts = DpdkPortOpts {
            tx_batch: 16,
            ..DpdkPortOpts::default()
        };
        let port = DpdkPort::open(0, 2, &pool, &opts).expect("open net_null0");
        eprintln!(
            "{port:?}: {} queue(s), link {}",
            port.queue_count(),
            port.link_status().expect("link")
        );
        let mut queues: Vec<_> = (0..port.queue_count())
            .map(|q| port.queue(q).expect("queue"))
            .collect();

        // RX: every burst is full, 64-byte frames, freed after the callback.
        let q = &mut queues[0];
        let mut seen = 0usize;
        for _ in 0..10 {
            let n = q.recv_burst(32, &mut |frame, meta| {
                assert_eq!(frame.len(), 64);
                assert!(!meta.truncated);
                frame[0] = 0xff; // writable in place
                seen += 1;
            });
            assert_eq!(n, 32);
        }
        // `max` is capped at MAX_BURST.
        assert!(q.recv_burst(1000, &mut |_, _| ()) <= lb_dataplane::io::dpdk::MAX_BURST);
        assert_eq!(seen, 320);
        let s = q.stats();
        assert!(s.rx_packets >= 320);
        assert_eq!(s.rx_bytes, s.rx_packets * 64);
        assert_eq!(pool.in_use() as usize, 0, "received mbufs were freed");

        // TX: batches of 16 go by themselves, the rest on flush.
        for i in 0..100u32 {
            assert!(q.send(&dpdk_common::test_frame(
                [0xff; 6],
                [2; 6],
                i,
                60 + i as usize
            )));
        }
        assert_eq!(
            q.stats().tx_packets,
            96,
            "six full batches of 16 went by themselves"
        );
        q.flush().expect("flush");
        let s = q.stats();
        assert_eq!(s.tx_packets, 100);
        assert_eq!(s.tx_bytes, (0..100u64).map(|i| 60 + i).sum::<u64>());
        assert_eq!(s.tx_dropped, 0);
        // rx_dropped is port-wide and comes from queue 0 only.
        assert!(queues.iter().skip(1).all(|q| q.stats().rx_dropped == 0));

        // Pool exhausted: send drops and counts.
        let q = &mut queues[0];
        let mut hoard = Vec::new();
        while let Some(m) = pool.alloc() {
            hoard.push(m);
        }
        assert!(!q.send(&[0u8; 60]));
        assert_eq!(q.stats().tx_dropped, 1);
        // Frames still batched when a queue is dropped are freed with it.
        drop(hoard.pop());
        assert!(q.send(&[0u8; 60]));
        drop(hoard);

        let eth = port.eth_stats().expect("eth stats");
        assert!(eth.opackets >= 100, "{eth:?}");
        assert!(eth.ipackets >= 320, "{eth:?}");
        drop(queues);
        assert_eq!(pool.in_use(), 0);
    }
    dpdk_common::check_runtime_dir_removed();
}
