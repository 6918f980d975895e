//! DPDK over `net_pcap`: frames read from a pcap file we write, rewritten,
//! sent, and read back from the pcap file the port wrote. One test: EAL
//! initialises once per process.

// Built only with the `dpdk` feature (`cargo test --features dpdk`).
#![cfg(feature = "dpdk")]

mod dpdk_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dpdk_common::{collect, seq_of, test_frame};
use lb_dataplane::io::dpdk::{DpdkPort, DpdkPortOpts, Mempool};
use lb_dataplane::io::PacketIo;

const LINKTYPE_ETHERNET: u32 = 1;
const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;

/// A classic pcap file (microsecond timestamps, native byte order).
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC_US.to_ne_bytes());
    out.extend_from_slice(&2u16.to_ne_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_ne_bytes());
    out.extend_from_slice(&0i32.to_ne_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_ne_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_ne_bytes()); // snaplen
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    for (i, f) in frames.iter().enumerate() {
        let len = u32::try_from(f.len()).expect("small frame");
        out.extend_from_slice(&(1_700_000_000u32 + i as u32).to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&len.to_ne_bytes()); // captured
        out.extend_from_slice(&len.to_ne_bytes()); // on the wire
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The frames of a pcap file, in either byte order and timestamp precision.
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(data.len() >= 24, "pcap global header missing");
    let magic = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes"));
    let le = match magic {
        MAGIC_US | MAGIC_NS => true,
        m if m.swap_bytes() == MAGIC_US || m.swap_bytes() == MAGIC_NS => false,
        m => panic!("not a pcap file (magic {m:#x})"),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = data[at..at + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), LINKTYPE_ETHERNET);
    let mut frames = Vec::new();
    let mut at = 24;
    while at < data.len() {
        assert!(at + 16 <= data.len(), "truncated record header");
        let caplen = u32_at(at + 8) as usize;
        let wirelen = u32_at(at + 12) as usize;
        assert_eq!(caplen, wirelen, "frame was cut");
        at += 16;
        assert!(at + caplen <= data.len(), "truncated record");
        frames.push(data[at..at + caplen].to_vec());
        at += caplen;
    }
    frames
}

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
