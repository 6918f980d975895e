//! End to end, node drain: `lbctl drain --deadline` keeps forwarding an
//! established keep-alive connection until the deadline, then ends it
//! (the client's next request is reset), and the session count reaches
//! 0; `lbctl undrain` makes the node active again. Needs root, iproute2,
//! ethtool, curl, nginx and python3 (CI installs them).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lock, seed_config, wait_healthy, Topo};

/// Python: a keep-alive connection through the VIP; one request per
/// line read on stdin, each answered with `ok`, `reset` or `failed`.
const PY_CLIENT: &str = r#"
import socket, sys
def req(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise ConnectionError("closed")
        buf += d
    head, body = buf.split(b"\r\n\r\n", 1)
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    while len(body) < n:
        body += s.recv(4096)
    return body.decode()
s = socket.create_connection(('198.18.0.10', 80), timeout=5)
for _ in sys.stdin:
    try:
        print('ok' if 'Hello' in req(s) else 'failed', flush=True)
    except ConnectionResetError:
        print('reset', flush=True)
    except Exception as e:
        print('failed %r' % e, flush=True)
"#;

fn lbctl(t: &Topo, args: &[&str]) -> (bool, String) {
    let mut all = args.to_vec();
    let control = t.control.display().to_string();
    if !matches!(args.first(), Some(&"stats") | Some(&"reload")) {
        all.extend(["--control", &control]);
    }
    let out = t.lbctl(&all);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_drain_forwards_sessions_until_its_deadline_then_ends_them() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    wait_healthy(&t);
    let mut client = Command::new("ip")
        .args(["netns", "exec", &t.ns("client"), "python3", "-c", PY_CLIENT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut stdin = client.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(client.stdout.take().expect("stdout"));
    let mut request = |what: &str| {
        stdin.write_all(b"go\n").expect("write");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert!(!line.is_empty(), "{what}: the client ended");
        line.trim().to_string()
    };
    assert_eq!(request("before the drain"), "ok");
    // Workers publish their counts every 100 ms.
    t.wait_for(5, "the session to be counted", |t| {
        t.stats()["sessions"].as_u64() >= Some(1)
    });

    let (ok, out) = lbctl(&t, &["drain", "--deadline", "4"]);
    assert!(ok, "{out}");
    let line = out.trim();
    let sessions: u64 = line
        .strip_prefix("draining: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(sessions >= 1, "{line}");
    assert!(
        line.ends_with(" sessions, deadline 4 s (no [cluster]: nothing is announced)"),
        "{line}"
    );
    let s = t.stats();
    assert_eq!(s["cluster_state"], "draining", "{s}");
    assert!(s["sessions"].as_u64().unwrap_or(0) >= 1, "{s}");
    let text = lbctl(&t, &["stats"]).1;
    assert!(
        text.contains("cluster: none (a single node), draining, "),
        "{text}"
    );

    // Draining: the established connection is still forwarded.
    assert_eq!(request("during the drain"), "ok");

    // The deadline passes: the workers end the listener sessions.
    let t0 = Instant::now();
    t.wait_for(15, "the sessions to end at the deadline", |t| {
        t.stats()["sessions"].as_u64() == Some(0)
    });
    eprintln!(
        "sessions at 0 {:?} after the drain's 4 s deadline was set",
        t0.elapsed()
    );
    assert_eq!(request("after the deadline"), "reset");
    drop(stdin);
    let _ = client.wait();

    let (ok, out) = lbctl(&t, &["undrain"]);
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "active: 0 sessions (no [cluster]: nothing is announced)"
    );
    assert_eq!(t.stats()["cluster_state"], "active");

    // With nothing left to wait for, `--wait` ends at once.
    let started = Instant::now();
    let (ok, out) = lbctl(&t, &["drain", "--wait"]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "draining: 0 sessions, no deadline (no [cluster]: nothing is announced)\ndrained: 0 sessions\n"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let (ok, out) = lbctl(&t, &["drain", "--deadline", "soon"]);
    assert!(!ok, "{out}");
}
