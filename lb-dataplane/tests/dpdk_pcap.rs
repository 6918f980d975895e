//! DPDK over `net_pcap`: frames read from a pcap file we write, rewritten,
//! sent, and read back from the pcap file the port wrote. One test: EAL
//! initialises once per process.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod dpdk_common;

use std::path::PathBuf;
use std::time::Duration;

use dpdk_common::{collect, read_pcap, seq_of, test_frame, write_pcap};
use lb_dataplane::io::dpdk::{DpdkPort, DpdkPortOpts, Mempool};
use lb_dataplane::io::PacketIo;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn net_pcap() {
    let _cleanup = dpdk_common::RuntimeDirGuard;
    let dir = TempDir(std::env::temp_dir().join(format!("lbtest-pcap-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let (rx_path, tx_path) = (dir.0.join("in.pcap"), dir.0.join("out.pcap"));

    let sizes = [60usize, 61, 128, 333, 1000, 1514, 64, 900];
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| test_frame([2, 0, 0, 0, 0, 0xb], [2, 0, 0, 0, 0, 0xa], i as u32, len))
        .collect();
    write_pcap(&rx_path, &frames);
    // Our writer and reader agree before DPDK is involved.
    assert_eq!(read_pcap(&rx_path), frames);

    {
        let vdev = format!(
            "net_pcap0,rx_pcap={},tx_pcap={}",
            rx_path.display(),
            tx_path.display()
        );
        let _eal = dpdk_common::init(&[vdev]);
        let pool =
            Mempool::new("pcap_pool", 1023, 32, Mempool::DEFAULT_DATA_ROOM, None).expect("mempool");
        let port = DpdkPort::open(0, 1, &pool, &DpdkPortOpts::default()).expect("open net_pcap0");
        let mut q = port.queue(0).expect("queue 0");

        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < frames.len() && std::time::Instant::now() < deadline {
            // Rewrite a byte in place, then send what we got.
            q.recv_burst(4, &mut |frame, _| {
                frame[20] ^= 0x5a;
                got.push(frame.to_vec());
            });
        }
        assert_eq!(got.len(), frames.len(), "every frame of in.pcap was read");
        for f in &got {
            assert!(q.send(f));
        }
        q.flush().expect("flush");
        // The file holds nothing more.
        assert!(collect(&mut q, 1, Duration::from_millis(50), &|f| seq_of(f)
            .is_some())
        .is_empty());
        let stats = q.stats();
        assert_eq!(stats.rx_packets, frames.len() as u64);
        assert_eq!(stats.tx_packets, frames.len() as u64);
        // Stopping and closing the port (its last handles) closes out.pcap.
        drop(q);
        drop(port);
    }
    dpdk_common::check_runtime_dir_removed();

    let written = read_pcap(&tx_path);
    assert_eq!(written.len(), frames.len());
    for (w, f) in written.iter().zip(&frames) {
        let mut want = f.clone();
        want[20] ^= 0x5a;
        assert_eq!(w, &want, "frame {:?}", seq_of(f));
    }
}
