//! Fuzz targets, one entry function each: the fuzzing binaries
//! (`src/bin/fuzz_*.rs`, built with `cargo afl build --features afl`) call
//! them on the fuzzer's inputs, and `tests/corpus.rs` calls them on every
//! file of `corpus/<target>/` as an ordinary test. None of them may panic,
//! whatever the bytes.
//!
//! - [`frame`]: frames from any link, with the answers of the hosts they
//!   reach (SYN proxy handshakes, TCP windows) and time passing, through
//!   [`Worker::process`] (the packet parser, the pipeline, the rewrite) and
//!   through [`Worker::process_burst`], which must agree, against one of
//!   four fixed configurations (SYN proxies, source checks, VLAN ports,
//!   routing and security groups); with the ICMP errors that drops call
//!   for.
//! - [`config`]: configuration text through `lb_config::parse_str` and
//!   `Snapshot::compile`; every error has a valid `line:col`.
//! - [`trace`]: an `lbctl eval` trace run against `examples/alb-seed.toml`.
//! - [`control`]: a control-socket request read as the server reads it
//!   and answered by `control::answer` from a daemon's state without ports.
//!
//! ```
//! lb_fuzz::frame(&[0, 0, 3, 1, 2, 3]);
//! lb_fuzz::config(b"[dataplane]\nworkers = 0\n");
//! lb_fuzz::trace(b"0.0 tcp 198.18.0.2:1 > 198.18.0.10:80 S\n");
//! lb_fuzz::control(b"stats\n");
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lb_core::conntrack::SessionTable;
use lb_core::packet::{build_frame, FrameSpec, IpProtocol, Ipv4Packet, MacAddr};
use lb_core::pipeline::{AllUp, Frame, Reason, RxInfo, Snapshot, Verdict, Worker};
use lb_core::Nanos;
use lb_dataplane::access::{Level, Peer};
use lb_dataplane::conn::{self, ReadError};
use lb_dataplane::control::MAX_COMMAND;
use lb_dataplane::daemon::Shared;
use lb_dataplane::reloader::ReloadFailure;

/// At most this many frames (and replies) per input.
pub const MAX_FRAMES: usize = 16;

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn snapshot(path: &Path) -> Snapshot {
    let cfg = lb_config::load(path).expect("the examples are valid configurations");
    Snapshot::compile(cfg, 1)
}

/// The snapshots [`frame`] runs against: `examples/alb-seed.toml`
/// (listeners, no security group), `examples/vpc.toml` (routing, security
/// groups, network ACLs), `fuzz/frame.toml` (SYN proxies on, off and
/// auto, source checks, a VLAN port, UDP) and
/// `tests/conformance/source-check-loose.toml`.
fn snapshots() -> &'static [Snapshot; 4] {
    static SNAPS: OnceLock<[Snapshot; 4]> = OnceLock::new();
    SNAPS.get_or_init(|| {
        [
            snapshot(&examples().join("alb-seed.toml")),
            snapshot(&examples().join("vpc.toml")),
            snapshot(&examples().join("../fuzz/frame.toml")),
            snapshot(&examples().join("../tests/conformance/source-check-loose.toml")),
        ]
    })
}

/// A record of a [`frame`] input: a 16-bit big-endian length below this
/// is a frame of that many bytes (fewer at the end).
const CONTROL: u16 = 0xff00;
/// `CONTROL | port` (port < 15): the frames after it arrive on that port
/// (an index into the configuration's ports, in range or not); `| 15`:
/// on an unknown port (no VLAN or source check), as at the start.
const ARRIVE_ON: u16 = CONTROL;
/// Then two bytes, TCP flags and a payload length: the answer of the
/// host the last frame sent went to (a backend, a client), on the port it
/// left through: addresses and ports swapped, its sequence number the
/// sent frame's acknowledgement, acknowledging all it carried.
const REPLY: u16 = CONTROL | 0x10;
/// Then one byte: that many seconds pass.
const WAIT: u16 = CONTROL | 0x20;

/// What a [`frame`] input asks for, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Frame(Vec<u8>),
    ArriveOn(Option<u32>),
    Reply { tcp_flags: u8, payload: u8 },
    Wait(u8),
}

/// The records of a [`frame`] input after its first byte (at most
/// [`MAX_FRAMES`] frames and replies).
pub fn split_records(data: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let mut rest = data;
    let mut frames = 0;
    while rest.len() >= 2 && frames < MAX_FRAMES {
        let word = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        if word < CONTROL {
            let len = usize::from(word).min(rest.len());
            records.push(Record::Frame(rest[..len].to_vec()));
            rest = &rest[len..];
            frames += 1;
        } else if word & 0xfff0 == ARRIVE_ON {
            let port = u32::from(word & 0xf);
            records.push(Record::ArriveOn((port != 15).then_some(port)));
        } else if word == REPLY && rest.len() >= 2 {
            records.push(Record::Reply {
                tcp_flags: rest[0],
                payload: rest[1],
            });
            rest = &rest[2..];
            frames += 1;
        } else if word == WAIT && !rest.is_empty() {
            records.push(Record::Wait(rest[0]));
            rest = &rest[1..];
        }
    }
    records
}

/// The bytes of a [`frame`] input: the first byte (bits 0 and 3: the
/// snapshot, see [`snapshots`]; bit 1: checksums are partial; bit 2:
/// correct the IPv4 header checksums first, so that mutated headers get
/// past the parser's check; bit 4: every port's MTU is 1280) and the
/// records.
pub fn frame_input(flags: u8, records: &[Record]) -> Vec<u8> {
    let mut v = vec![flags];
    for r in records {
        match r {
            Record::Frame(f) => {
                let len = u16::try_from(f.len())
                    .ok()
                    .filter(|&l| l < CONTROL)
                    .expect("a frame shorter than 65280 bytes");
                v.extend_from_slice(&len.to_be_bytes());
                v.extend_from_slice(f);
            }
            Record::ArriveOn(port) => {
                let port = port.map_or(15, |p| u16::try_from(p.min(14)).unwrap_or(14));
                v.extend_from_slice(&(ARRIVE_ON | port).to_be_bytes());
            }
            Record::Reply { tcp_flags, payload } => {
                v.extend_from_slice(&REPLY.to_be_bytes());
                v.extend_from_slice(&[*tcp_flags, *payload]);
            }
            Record::Wait(secs) => {
                v.extend_from_slice(&WAIT.to_be_bytes());
                v.push(*secs);
            }
        }
    }
    v
}

/// Two workers fed the same frames, one frame at a time and in bursts.
struct Pair<'a> {
    snap: &'a Snapshot,
    one: Worker,
    burst: Worker,
    now: Nanos,
    /// The last frame sent (forwarded or built in answer) and the port it
    /// left through.
    sent: Option<(Vec<u8>, u32)>,
    /// Every frame received, for a second pass later.
    received: Vec<(Vec<u8>, RxInfo)>,
    /// The verdicts, in order.
    verdicts: Vec<String>,
}

impl Pair<'_> {
    /// Frames from the links, one at a time and as one burst: neither may
    /// panic, and both must give the same verdicts, the same bytes and the
    /// same answers.
    fn run(&mut self, frames: &[(Vec<u8>, RxInfo)]) {
        if frames.is_empty() {
            return;
        }
        let (snap, now) = (self.snap, self.now);
        let mut singles: Vec<Vec<u8>> = frames.iter().map(|(f, _)| f.clone()).collect();
        let mut v1 = Vec::new();
        let mut built1 = Vec::new();
        for (f, (_, rx)) in singles.iter_mut().zip(frames) {
            let v = self.one.process(f, *rx, now, snap, &AllUp);
            built1.push(matches!(v, Verdict::Send(_)).then(|| self.one.built(0).to_vec()));
            v1.push(v);
        }

        let mut bursts: Vec<Vec<u8>> = frames.iter().map(|(f, _)| f.clone()).collect();
        let mut views: Vec<Frame<'_>> = bursts
            .iter_mut()
            .zip(frames)
            .map(|(f, (_, rx))| Frame { data: f, rx: *rx })
            .collect();
        let mut v2 = vec![Verdict::Drop(Reason::NotForUs); views.len()];
        let n = self
            .burst
            .process_burst(&mut views, now, snap, &AllUp, &mut v2);
        assert_eq!(n, frames.len(), "the whole burst is handled");
        let built2: Vec<Option<Vec<u8>>> = v2
            .iter()
            .enumerate()
            .map(|(i, v)| matches!(v, Verdict::Send(_)).then(|| self.burst.built(i).to_vec()))
            .collect();
        let show = |v: &[Verdict]| v.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>();
        assert_eq!(show(&v1), show(&v2), "burst and one-by-one verdicts differ");
        assert_eq!(singles, bursts, "burst and one-by-one rewrites differ");
        assert_eq!(built1, built2, "burst and one-by-one answers differ");
        self.verdicts.extend(show(&v1));

        for ((v, f), built) in v1.iter().zip(&singles).zip(built1) {
            match v {
                Verdict::Forward(fw) => self.sent = Some((f.clone(), fw.hop.port)),
                Verdict::Send(fw) => {
                    let built = built.expect("a Send verdict has a frame");
                    assert!(
                        lb_core::packet::parse(&built).is_ok(),
                        "a frame built in answer parses"
                    );
                    self.sent = Some((built, fw.hop.port));
                }
                Verdict::Drop(reason) => icmp_answer(f, reason),
                Verdict::Local(_) => {}
            }
        }
        self.received.extend(frames.iter().cloned());
    }

    fn wait(&mut self, secs: u8) {
        self.now += lb_core::pipeline::secs(f64::from(secs));
        self.one.housekeep(self.now, self.snap);
        self.burst.housekeep(self.now, self.snap);
    }
}

/// The ICMP error `lbd` sends for a frame dropped for `reason`, if any:
/// it must build and parse back as an ICMP error.
fn icmp_answer(frame: &[u8], reason: &Reason) {
    let Ok(p) = lb_core::packet::parse(frame) else {
        return;
    };
    let Some(a) = reason.icmp_answer(&p) else {
        return;
    };
    let src: IpAddr = if a.v6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1).into()
    } else {
        Ipv4Addr::new(198, 18, 0, 1).into()
    };
    let mac = MacAddr([2, 0, 0, 0, 0, 9]);
    let err =
        lb_core::packet::build_icmp_error(frame, &p, src, a.icmp_type, a.code, a.rest, mac, mac)
            .expect("an answerable drop builds its ICMP error");
    let q = lb_core::packet::parse(&err).expect("the ICMP error parses");
    assert!(q.is_icmp_error(), "the answer is an ICMP error: {q:?}");
}

/// The frame the host at the other end of `sent` answers with: addresses
/// and ports swapped, `tcp_flags`, `payload` bytes, acknowledging all
/// that `sent` carried; `None` unless `sent` is TCP or UDP.
pub fn reply_to(sent: &[u8], tcp_flags: u8, payload: u8) -> Option<Vec<u8>> {
    let p = lb_core::packet::parse(sent).ok()?;
    let l4 = sent.get(p.l4_offset..p.l3_end())?;
    let (seq, ack, len) = match p.proto {
        IpProtocol::TCP => {
            let word = |at: usize| Some(u32::from_be_bytes(l4.get(at..at + 4)?.try_into().ok()?));
            let data_offset = usize::from(l4.get(12)? >> 4) * 4;
            let len = l4.len().saturating_sub(data_offset) + usize::from(p.tcp_flags & 0x03 != 0);
            (word(4)?, word(8)?, u32::try_from(len).ok()?)
        }
        IpProtocol::UDP => (0, 0, 0),
        _ => return None,
    };
    let mac = |at: usize| MacAddr(sent[at..at + 6].try_into().expect("6 bytes"));
    Some(build_frame(&FrameSpec {
        src_mac: mac(0),
        dst_mac: mac(6),
        vlan: p.vlan,
        src: p.dst,
        dst: p.src,
        proto: p.proto,
        sport: p.dport,
        dport: p.sport,
        tcp_flags,
        tcp_seq: ack,
        tcp_ack: seq.wrapping_add(len),
        payload: vec![b'x'; usize::from(payload)],
        ..FrameSpec::default()
    }))
}

/// Frames from every link, with the answers of the hosts they reach and
/// time passing: see [`frame_input`] and [`split_records`]. Nothing may
/// panic; one-by-one and burst processing must agree; a frame built in
/// answer parses; an ICMP error `lbd` would send builds and parses.
pub fn frame(data: &[u8]) {
    let _ = frame_verdicts(data);
}

/// [`frame`], returning the verdicts of its frames in order (`Debug`).
pub fn frame_verdicts(data: &[u8]) -> Vec<String> {
    let Some((&flags, rest)) = data.split_first() else {
        return Vec::new();
    };
    let snap = &snapshots()[usize::from(flags & 1 | (flags >> 2) & 2)];
    let csum_partial = flags & 2 != 0;
    let mut pair = Pair {
        snap,
        one: worker(),
        burst: worker(),
        now: lb_core::pipeline::secs(1.0),
        sent: None,
        received: Vec::new(),
        verdicts: Vec::new(),
    };
    for w in [&mut pair.one, &mut pair.burst] {
        w.housekeep(pair.now, snap);
        if flags & 16 != 0 {
            for pi in 0..snap.cfg.ports.len() {
                w.set_port_mtu(pi, 1280);
            }
        }
    }
    let rx = |port: Option<u32>| {
        #[allow(clippy::field_reassign_with_default)] // RxInfo may grow fields
        let rx = {
            let mut rx = RxInfo::default();
            rx.csum_partial = csum_partial;
            rx.port = port;
            rx
        };
        rx
    };

    let mut port = None;
    let mut pending: Vec<(Vec<u8>, RxInfo)> = Vec::new();
    for record in split_records(rest) {
        match record {
            Record::Frame(mut f) => {
                if flags & 4 != 0 {
                    fill_ipv4_checksum(&mut f);
                }
                pending.push((f, rx(port)));
            }
            Record::ArriveOn(p) => port = p,
            Record::Reply { tcp_flags, payload } => {
                pair.run(&std::mem::take(&mut pending));
                if let Some((sent, out)) = &pair.sent {
                    if let Some(f) = reply_to(sent, tcp_flags, payload) {
                        pending.push((f, rx(Some(*out))));
                    }
                }
            }
            Record::Wait(secs) => {
                pair.run(&std::mem::take(&mut pending));
                pair.wait(secs);
            }
        }
    }
    pair.run(&pending);

    // Later: every session expires, and the same frames come again.
    let later = pair.now + lb_core::pipeline::secs(100_000.0);
    pair.one.housekeep(later, snap);
    for (mut f, rx) in std::mem::take(&mut pair.received) {
        pair.one.process(&mut f, rx, later, snap, &AllUp);
    }
    pair.verdicts
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
/// `examples/alb-seed.toml` (no ports, no threads): the bytes as a client
/// sends them, read as the server reads them (up to the first newline, in
/// small pieces), then answered at the read-only and at the admin level.
pub fn control(data: &[u8]) {
    let line = read_control_request(data);
    // A fresh daemon for each request: a reload in one input must not
    // change what the next one sees.
    let shared = Shared::offline(&examples().join("alb-seed.toml")).expect("the example loads");
    let peer = Peer {
        pid: 1,
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };
    for level in [Level::User, Level::Admin] {
        let reply = lb_dataplane::control::answer(
            &shared,
            &|| {
                shared
                    .reload()
                    .map_err(|e| ReloadFailure::Refused(e.to_string()))
            },
            &line,
            &peer,
            level,
        );
        assert!(reply.is_object(), "a reply is one JSON object");
        let _ = reply.to_string();
    }
}

/// The request the control socket reads from a client sending `data` and
/// closing: [`conn::read_request`] through a stream that hands out 1, 2,
/// 3, ... bytes a read, which must find the end a whole-buffer search
/// finds. The same for the metrics server's HTTP head.
fn read_control_request(data: &[u8]) -> Vec<u8> {
    let far = Instant::now() + Duration::from_secs(3600);
    for (end, max) in [
        (conn::line_end as fn(&[u8]) -> Option<usize>, MAX_COMMAND),
        (conn::http_head_end, 8192),
    ] {
        let got = conn::read_request(&mut Pieces::new(data), far, max, end);
        let want = match end(data) {
            Some(len) if len > max => Err(ReadError::TooLong),
            Some(len) => Ok(data[..len].to_vec()),
            None if data.len() > max => Err(ReadError::TooLong),
            None => Err(ReadError::Closed(data.to_vec())),
        };
        assert_eq!(got, want, "read in pieces and whole differ");
    }
    match conn::read_request(&mut Pieces::new(data), far, MAX_COMMAND, conn::line_end) {
        Ok(line) => line,
        Err(ReadError::Closed(partial)) => partial,
        Err(_) => Vec::new(),
    }
}

/// A client's bytes, read 1, 2, 3, ... at a time.
struct Pieces<'a> {
    data: &'a [u8],
    next: usize,
}

impl<'a> Pieces<'a> {
    fn new(data: &'a [u8]) -> Pieces<'a> {
        Pieces { data, next: 1 }
    }
}

impl io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.next.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.next = self.next % 7 + 1;
        Ok(n)
    }
}

impl io::Write for Pieces<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl conn::Timed for Pieces<'_> {
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}
