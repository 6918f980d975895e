//! Every file of `corpus/<target>/` through its fuzz target's entry
//! function: the fuzzers' minimized findings (and the inputs of fixed
//! panics) replayed as ordinary tests, without a fuzzer.
//!
//! `write_seeds` (ignored) writes the fuzzers' starting inputs from the
//! repository's examples to `$LB_FUZZ_SEEDS` (see the README's Tests
//! section).

use std::path::{Path, PathBuf};

use lb_dataplane::eval::{build_trace_frame, parse_line, TraceLine};
use lb_fuzz::{examples, Record};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The files of `corpus/<target>/`, sorted; never none.
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
}

fn replay(target: &str, entry: fn(&[u8])) {
    let mut failed = Vec::new();
    for f in &corpus_files(target) {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: panicked on {failed:#?}");
}

#[test]
fn frame_corpus() {
    replay("frame", lb_fuzz::frame);
}

/// The frame corpus keeps inputs that reach each of the pipeline's
/// defences against a hostile link, so that the replay in CI runs them.
#[test]
fn frame_corpus_reaches_every_defence() {
    let mut verdicts = Vec::new();
    for f in corpus_files("frame") {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        verdicts.extend(lb_fuzz::frame_verdicts(&data));
    }
    let missing: Vec<&str> = [
        "SynCookie",
        "SynProxyPending",
        "TcpOutOfWindow",
        "TcpInvalidFlags",
        "NoSessionReset",
        "SpoofedSource",
        "VlanMismatch",
        "OwnSource",
        "TtlExceeded",
        "TooBig",
        "SourceRoute",
        "IcmpErrorMismatch",
        "Malformed",
        "FragmentFollows",
        "FragmentHeld",
        "FragmentOverlap",
        "ListenerLimit",
    ]
    .into_iter()
    .filter(|want| !verdicts.iter().any(|v| v.contains(want)))
    .collect();
    assert!(missing.is_empty(), "no corpus input reaches {missing:?}");
}

#[test]
fn config_corpus() {
    replay("config", lb_fuzz::config);
}

#[test]
fn trace_corpus() {
    replay("trace", lb_fuzz::trace);
}

#[test]
fn control_corpus() {
    replay("control", lb_fuzz::control);
}

/// The hosts' answers reach what a fuzzer could not guess: a client
/// acknowledges the SYN proxy's cookie, the backend answers the SYN the
/// proxy then opens, and data passes both ways.
#[test]
fn replies_take_a_connection_through_the_syn_proxy() {
    let syn = trace_frames("0.0 tcp 198.18.0.2:40000 > 198.18.0.10:80 S")
        .pop()
        .expect("a SYN");
    let reply = |tcp_flags, payload| Record::Reply { tcp_flags, payload };
    let input = lb_fuzz::frame_input(
        2 << 2,
        &[
            Record::ArriveOn(Some(0)),
            Record::Frame(syn),
            reply(0x10, 0),
            reply(0x12, 0),
            reply(0x18, 20),
            reply(0x18, 40),
        ],
    );
    let v = lb_fuzz::frame_verdicts(&input);
    // The cookie SYN-ACK; on the cookie's ACK the proxy's SYN to the
    // backend; on its SYN-ACK the proxy's ACK; then data from the backend
    // to the client and from the client to the backend.
    let want = [
        ("Send", "SynCookie", "port: 0"),
        ("Send", "Listener", "port: 1"),
        ("Send", "Session", "port: 1"),
        ("Forward", "Session", "port: 0"),
        ("Forward", "Session", "port: 1"),
    ];
    assert_eq!(v.len(), want.len(), "{v:#?}");
    for (i, (v, (kind, reason, port))) in v.iter().zip(want).enumerate() {
        assert!(
            v.starts_with(kind) && v.contains(reason) && v.contains(port),
            "frame {i}: want {kind} {reason} {port}, got {v}"
        );
    }
}

/// The frames of a trace's packet lines (tagged when the line says
/// `vlan=`).
fn trace_frames(trace: &str) -> Vec<Vec<u8>> {
    trace
        .lines()
        .filter_map(|l| match parse_line(l) {
            Ok(Some(TraceLine::Packet(p))) => build_trace_frame(&p, p.vlan.flatten()).ok(),
            _ => None,
        })
        .collect()
}

/// The records of a trace's packet lines, each on the port its line names
/// (`ports`: the port names by index) or an unknown one.
fn trace_records(trace: &str, ports: &[&str]) -> Vec<Record> {
    let mut records = Vec::new();
    for l in trace.lines() {
        let Ok(Some(TraceLine::Packet(p))) = parse_line(l) else {
            continue;
        };
        let Ok(frame) = build_trace_frame(&p, p.vlan.flatten()) else {
            continue;
        };
        let port = p
            .port
            .as_deref()
            .and_then(|name| ports.iter().position(|&n| n == name))
            .and_then(|i| u32::try_from(i).ok());
        records.push(Record::ArriveOn(port));
        records.push(Record::Frame(frame));
    }
    records
}

#[test]
#[ignore = "writes the fuzzers' seed inputs to $LB_FUZZ_SEEDS"]
fn write_seeds() {
    let out = PathBuf::from(std::env::var("LB_FUZZ_SEEDS").expect("LB_FUZZ_SEEDS: a directory"));
    let read = |name: &str| std::fs::read(examples().join(name)).expect("an example");
    let text = |name: &str| String::from_utf8(read(name)).expect("UTF-8");
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    // The examples' traces against their configurations (snapshots 0 and
    // 1), one frame at a time and in bursts with partial checksums.
    for (flags, trace) in [(0u8, "alb-seed.trace"), (1, "vpc.trace")] {
        let frames = trace_frames(&text(trace));
        for (i, f) in frames.iter().enumerate() {
            let input = lb_fuzz::frame_input(flags, &[Record::Frame(f.clone())]);
            seeds.push(("frame", format!("{trace}-{i}"), input));
        }
        for (i, chunk) in frames.chunks(lb_fuzz::MAX_FRAMES).enumerate() {
            let records: Vec<Record> = chunk.iter().cloned().map(Record::Frame).collect();
            let input = lb_fuzz::frame_input(flags | 2, &records);
            seeds.push(("frame", format!("{trace}-burst{i}"), input));
        }
    }
    // The conformance suite's TCP, SYN proxy, source check, VLAN, ICMP
    // and TTL/MTU traces against fuzz/frame.toml (snapshot 2: flag 8, whose
    // ports are ext, int, vl and open), each packet on the port its line
    // names; the MTU traces with every port's MTU at 1280 too (flag 16).
    let suite = examples().join("../tests/conformance");
    for name in [
        "tcp-listener.trace",
        "tcp-routed.trace",
        "syn-proxy.trace",
        "source-check.trace",
        "icmp-errors.trace",
        "ttl-options-mtu.trace",
        "fragments.trace",
    ] {
        let trace = std::fs::read_to_string(suite.join(name)).expect("a conformance trace");
        let records = trace_records(&trace, &["ext", "int", "vl", "open"]);
        for (i, chunk) in records.chunks(lb_fuzz::MAX_FRAMES).enumerate() {
            seeds.push((
                "frame",
                format!("{name}-{i}"),
                lb_fuzz::frame_input(8 | 4, chunk),
            ));
            if name.starts_with("ttl") {
                let input = lb_fuzz::frame_input(8 | 4 | 16, chunk);
                seeds.push(("frame", format!("{name}-mtu-{i}"), input));
            }
        }
    }
    // Listener limits: 83 holds two sessions at once, 84 opens two a
    // second.
    let limits = "0.0 tcp 198.18.0.2:40000 > 198.18.0.10:83 S
        0.0 tcp 198.18.0.2:40001 > 198.18.0.10:83 S
        0.0 tcp 198.18.0.2:40002 > 198.18.0.10:83 S
        0.0 tcp [2001:db8:18::2]:40002 > [2001:db8:18::10]:83 S
        0.0 tcp 198.18.0.2:40000 > 198.18.0.10:83 A
        0.0 tcp 198.18.0.2:41000 > 198.18.0.10:84 S
        0.0 tcp 198.18.0.2:41001 > 198.18.0.10:84 S
        0.0 tcp 198.18.0.2:41002 > 198.18.0.10:84 S
        0.0 tcp [2001:db8:18::2]:41003 > [2001:db8:18::10]:84 S";
    let mut records = vec![Record::ArriveOn(Some(0))];
    records.extend(trace_frames(limits).into_iter().map(Record::Frame));
    seeds.push((
        "frame",
        "limits".into(),
        lb_fuzz::frame_input(8 | 4, &records),
    ));
    // Whole connections through the SYN proxy (listener 80: on, 81: off,
    // 82: auto) with the hosts' answers: the client's SYN, then the ACK
    // of the cookie, the backend's SYN-ACK, data both ways, FIN, and a
    // wait past the handshake timeout.
    for (vip, client) in [
        ("198.18.0.10", "198.18.0.2"),
        ("[2001:db8:18::10]", "[2001:db8:18::2]"),
    ] {
        for port in [80, 81, 82] {
            let syn = format!("0.0 tcp {client}:40000 > {vip}:{port} S");
            let syn = trace_frames(&syn).pop().expect("a SYN");
            let reply = |tcp_flags, payload| Record::Reply { tcp_flags, payload };
            let records = [
                Record::ArriveOn(Some(0)),
                Record::Frame(syn),
                reply(0x10, 0),
                reply(0x12, 0),
                reply(0x18, 20),
                reply(0x18, 40),
                reply(0x10, 0),
                reply(0x11, 0),
                reply(0x11, 0),
                reply(0x10, 0),
                Record::Wait(6),
                reply(0x04, 0),
            ];
            let name = format!("handshake-{port}-{}", if vip.contains(':') { 6 } else { 4 });
            seeds.push(("frame", name, lb_fuzz::frame_input(8 | 4, &records)));
        }
    }
    for name in [
        "alb-seed.toml",
        "vpc.toml",
        "bad.toml",
        "bare-metal-2port.toml",
    ] {
        seeds.push(("config", name.into(), read(name)));
    }
    for name in ["alb-seed.trace", "vpc.trace"] {
        seeds.push(("trace", name.into(), read(name)));
    }
    // The conformance suite's configurations (good and bad) and traces.
    let suite = examples().join("../tests/conformance");
    for dir in [suite.clone(), suite.join("bad")] {
        for f in std::fs::read_dir(&dir).expect("the conformance suite") {
            let path = f.expect("a directory entry").path();
            let name = path.file_name().expect("a file name").to_string_lossy();
            let target = match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => "config",
                Some("trace") => "trace",
                _ => continue,
            };
            let data = std::fs::read(&path).expect("a conformance file");
            seeds.push((target, format!("conformance-{name}"), data));
        }
    }
    for cmd in ["stats\n", "reload\n", "help\n"] {
        seeds.push(("control", cmd.trim().into(), cmd.as_bytes().to_vec()));
    }
    for (target, name, data) in seeds {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        std::fs::write(dir.join(name), data).expect("write a seed");
    }
}
