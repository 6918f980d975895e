//! Shared by the DPDK integration tests. EAL initialises once per process,
//! so each `tests/dpdk_*.rs` binary holds one `#[test]` that runs its cases
//! in sequence.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb_dataplane::io::dpdk::Eal;
use lb_dataplane::io::PacketIo;

/// The file prefix of this process's EAL (its runtime directory's name).
pub fn file_prefix() -> String {
    format!("lbtest{}", std::process::id())
}

/// `/var/run/dpdk/<prefix>` (root) or `$XDG_RUNTIME_DIR/dpdk/<prefix>`.
pub fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let base = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/run")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    };
    base.join("dpdk").join(file_prefix())
}

/// The first CPU this thread may run on: EAL's main lcore.
fn first_cpu() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: see above; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if ret != 0 {
        return 0;
    }
    // SAFETY: `set` is initialised; CPU_ISSET only reads it.
    (0..libc::CPU_SETSIZE as usize)
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .unwrap_or(0)
}

/// EAL arguments for a NIC-less run with `vdevs`.
pub fn eal_args(vdevs: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "-m",
        "128",
        "-l",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(first_cpu().to_string());
    args.push("--file-prefix".into());
    args.push(file_prefix());
    args.extend(vdevs.iter().map(|v| format!("--vdev={v}")));
    args
}

/// Initialises EAL for this test binary.
pub fn init(vdevs: &[String]) -> Eal {
    Eal::init(&eal_args(vdevs)).unwrap_or_else(|e| panic!("EAL init: {e}"))
}

/// Checks that the runtime directory went with the last EAL handle (and
/// removes it anyway, so a failing test leaves nothing behind).
pub fn check_runtime_dir_removed() {
    let dir = runtime_dir();
    let existed = dir.exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!existed, "{} was left behind", dir.display());
}

/// Removes the runtime directory on drop, for panicking tests.
pub struct RuntimeDirGuard;

impl Drop for RuntimeDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(runtime_dir());
    }
}

/// A directory removed on drop, also when the test panics.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory for this process, named after `what`.
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// IEEE 802 local experimental EtherType: nothing answers it.
pub const TEST_TYPE: u16 = 0x88b5;

/// A test frame of `len` bytes carrying `seq`, filled with a pattern.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_TYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(2_654_435_761) | 1;
    while f.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        f.push((x >> 16) as u8);
    }
    f
}

/// The sequence number of a test frame, if it is one.
pub fn seq_of(frame: &[u8]) -> Option<u32> {
    if frame.get(12..14)? != TEST_TYPE.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes(frame.get(14..18)?.try_into().ok()?))
}

/// Receives until `want` frames passing `keep` arrived or `timeout` passed.
pub fn collect(
    port: &mut dyn PacketIo,
    want: usize,
    timeout: Duration,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        let n = port.recv_burst(32, &mut |frame, _| {
            if keep(frame) {
                out.push(frame.to_vec());
            }
        });
        assert!(n <= 32);
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

const LINKTYPE_ETHERNET: u32 = 1;
const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;

/// A classic pcap file (microsecond timestamps, native byte order).
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
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
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
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
