//! Every file of `corpus/<target>/` through its fuzz target's entry
//! function: the fuzzers' minimized findings (and the inputs of fixed
//! panics) replayed as ordinary tests, without a fuzzer.
//!
//! `write_seeds` (ignored) writes the fuzzers' starting inputs from the
//! repository's examples to `$LB_FUZZ_SEEDS` (see the README's Tests
//! section).

use std::path::{Path, PathBuf};

use lb_core::packet::{build_frame, FrameSpec};
use lb_dataplane::eval::{frame_spec, parse_line, TraceLine};
use lb_fuzz::examples;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    let mut failed = Vec::new();
    for f in &files {
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

/// The frames of a trace's packet lines.
fn trace_frames(trace: &str) -> Vec<Vec<u8>> {
    trace
        .lines()
        .filter_map(|l| match parse_line(l) {
            Ok(Some(TraceLine::Packet(p))) => Some(build_frame(&FrameSpec {
                payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                ..frame_spec(&p)
            })),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "writes the fuzzers' seed inputs to $LB_FUZZ_SEEDS"]
fn write_seeds() {
    let out = PathBuf::from(std::env::var("LB_FUZZ_SEEDS").expect("LB_FUZZ_SEEDS: a directory"));
    let read = |name: &str| std::fs::read(examples().join(name)).expect("an example");
    let text = |name: &str| String::from_utf8(read(name)).expect("UTF-8");
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for (flags, trace) in [(0u8, "alb-seed.trace"), (1, "vpc.trace")] {
        let frames = trace_frames(&text(trace));
        for (i, f) in frames.iter().enumerate() {
            let input = lb_fuzz::frame_input(flags, &[f]);
            seeds.push(("frame", format!("{trace}-{i}"), input));
        }
        for (i, chunk) in frames.chunks(lb_fuzz::MAX_FRAMES).enumerate() {
            let chunk: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let input = lb_fuzz::frame_input(flags | 2, &chunk);
            seeds.push(("frame", format!("{trace}-burst{i}"), input));
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
