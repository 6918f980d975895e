//! Fuzz targets, one entry function each: the fuzzing binaries
//! (`src/bin/fuzz_*.rs`, built with `cargo afl build --features afl`) call
//! them on the fuzzer's inputs, and `tests/corpus.rs` calls them on every
//! file of `corpus/<target>/` as an ordinary test. None of them may panic,
//! whatever the bytes.
//!
//! - [`frame`]: frames from a client link through [`Worker::process`] (the
//!   packet parser, the pipeline, the rewrite) and through
//!   [`Worker::process_burst`], which must agree, with a fixed snapshot of
//!   `examples/alb-seed.toml` or `examples/vpc.toml`.
//! - [`config`]: configuration text through `lb_config::parse_str` and
//!   `Snapshot::compile`; every error has a valid `line:col`.
//! - [`trace`]: an `lbctl eval` trace run against `examples/alb-seed.toml`.
//! - [`control`]: one control-socket request line answered by
//!   `control::respond` from a daemon's state without ports.
//!
//! ```
//! lb_fuzz::frame(&[0, 0, 3, 1, 2, 3]);
//! lb_fuzz::config(b"[dataplane]\nworkers = 0\n");
//! lb_fuzz::trace(b"0.0 tcp 198.18.0.2:1 > 198.18.0.10:80 S\n");
//! lb_fuzz::control(b"stats\n");
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lb_core::conntrack::SessionTable;
use lb_core::packet::Ipv4Packet;
use lb_core::pipeline::{secs, AllUp, Frame, Reason, RxInfo, Snapshot, Verdict, Worker};
use lb_dataplane::daemon::Shared;

/// At most this many frames per input.
pub const MAX_FRAMES: usize = 8;

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn snapshot(name: &str) -> Snapshot {
    let path = examples().join(name);
    let cfg = lb_config::load(&path).expect("the examples are valid configurations");
    Snapshot::compile(cfg, 1)
}

/// The snapshots [`frame`] runs against: `alb-seed.toml` (listeners, no
/// security group) and `vpc.toml` (routing, security groups, network ACLs).
fn snapshots() -> &'static [Snapshot; 2] {
    static SNAPS: OnceLock<[Snapshot; 2]> = OnceLock::new();
    SNAPS.get_or_init(|| [snapshot("alb-seed.toml"), snapshot("vpc.toml")])
}

/// The frames of a [`frame`] input: after the first byte, each frame is a
/// big-endian 16-bit length and that many bytes (fewer at the end).
pub fn split_frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && frames.len() < MAX_FRAMES {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        frames.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    frames
}

/// A [`frame`] input: the first byte (bit 0: the snapshot, bit 1: the
/// checksum is partial, bit 2: correct the IPv4 header checksums first, so
/// that mutated headers get past the parser's check) and the frames.
pub fn frame_input(flags: u8, frames: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![flags];
    for f in frames {
        let len = u16::try_from(f.len()).expect("a frame shorter than 64 KiB");
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(f);
    }
    v
}

/// Frames from the client link, one at a time and as one burst: neither
/// may panic, and both must give the same verdicts and the same bytes.
pub fn frame(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let snap = &snapshots()[usize::from(flags & 1)];
    #[allow(clippy::field_reassign_with_default)] // RxInfo may grow fields
    let rx = {
        let mut rx = RxInfo::default();
        rx.csum_partial = flags & 2 != 0;
        rx
    };
    let now = secs(1.0);
    let mut frames = split_frames(rest);
    if flags & 4 != 0 {
        frames.iter_mut().for_each(|f| fill_ipv4_checksum(f));
    }

    let mut one = worker();
    one.housekeep(now, snap);
    let mut singles = frames.clone();
    let v1: Vec<String> = singles
        .iter_mut()
        .map(|f| format!("{:?}", one.process(f, rx, now, snap, &AllUp)))
        .collect();

    let mut burst = worker();
    burst.housekeep(now, snap);
    let mut bursts = frames.clone();
    let mut views: Vec<Frame<'_>> = bursts.iter_mut().map(|f| Frame { data: f, rx }).collect();
    let mut verdicts = vec![Verdict::Drop(Reason::NotForUs); views.len()];
    let n = burst.process_burst(&mut views, now, snap, &AllUp, &mut verdicts);
    assert_eq!(n, frames.len(), "the whole burst is handled");
    let v2: Vec<String> = verdicts.iter().map(|v| format!("{v:?}")).collect();
    assert_eq!(v1, v2, "burst and one-by-one verdicts differ");
    assert_eq!(singles, bursts, "burst and one-by-one rewrites differ");

    // Later: every session expires, and the same frames come again.
    let later = now + secs(100_000.0);
    one.housekeep(later, snap);
    for f in &mut singles {
        one.process(f, rx, later, snap, &AllUp);
    }
}

/// A small worker whose session table hashes with fixed seeds, so that an
/// input takes the same path every time.
fn worker() -> Worker {
    let mut w = Worker::new(0, 1, 256, 256);
    w.sessions = SessionTable::with_capacities_and_seed(256, 256, 1);
    w
}

/// Writes the header checksum of the IPv4 packet in an Ethernet frame
/// (untagged or with one 802.1Q tag), if there is one.
fn fill_ipv4_checksum(frame: &mut [u8]) {
    let at = match frame.get(12..14) {
        Some([0x81, 0x00]) => 16,
        _ => 12,
    };
    if frame.get(at..at + 2) != Some(&[0x08, 0x00]) {
        return;
    }
    if let Ok(mut ip) = Ipv4Packet::new_checked(&mut frame[at + 2..]) {
        ip.fill_checksum();
    }
}

/// Configuration text: loading never panics, a valid file compiles, and
/// every error points inside the text (`line:col`, 1-based, at most one
/// past the end of its line).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match lb_config::parse_str(text, "fuzz.toml") {
        Ok(cfg) => {
            let snap = Snapshot::compile(cfg, 1);
            let _ = lb_config::summary(&snap.cfg);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error with no diagnostic");
            let lines: Vec<&str> = text.split('\n').collect();
            for d in &errors.0 {
                assert_eq!(d.path, "fuzz.toml");
                assert!(!d.message.is_empty(), "{d}: empty message");
                assert!(
                    (1..=lines.len()).contains(&d.line),
                    "{d}: line outside the text ({} lines)",
                    lines.len()
                );
                let width = lines[d.line - 1].chars().count();
                assert!(
                    (1..=width + 1).contains(&d.col),
                    "{d}: column outside line {} ({width} characters)",
                    d.line
                );
                let _ = errors.to_string();
            }
        }
    }
}

/// An `lbctl eval` trace against `examples/alb-seed.toml` (its `@reload`
/// lines name files beside it): an error is fine, a panic is not.
pub fn trace(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = examples();
    for line in text.lines() {
        let _ = lb_dataplane::eval::parse_line(line);
    }
    let _ = lb_dataplane::eval::run(
        &dir.join("alb-seed.toml"),
        text,
        &dir.join("fuzz.trace"),
        &mut io::sink(),
        &mut io::sink(),
    );
}

/// One control-socket request to a daemon that has just loaded
/// `examples/alb-seed.toml` (no ports, no threads): the bytes up to the
/// first newline, as the server reads them (a line that is not UTF-8 ends
/// the connection), and the reply it would write.
pub fn control(data: &[u8]) {
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..=end],
        None => data,
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    // A fresh daemon for each request: a reload in one input must not
    // change what the next one sees.
    let shared = Shared::offline(&examples().join("alb-seed.toml")).expect("the example loads");
    let reply = lb_dataplane::control::respond(&shared, line);
    assert!(reply.is_object(), "a reply is one JSON object");
    let _ = reply.to_string();
}
