//! End to end, TCP validity: a blind RST injected on the client link does
//! not end a keep-alive connection through the VIP, and after `lbd` is
//! killed and restarted, clients' established connections are reset at
//! once instead of hanging. Needs root, iproute2, ethtool, curl, nginx and
//! python3 (CI installs them).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lock, seed_config, wait_healthy, Topo};

/// Python: `req(s)` sends one keep-alive request on socket `s` and returns
/// the response body.
const PY_HTTP: &str = r#"
import socket, struct, random, time, sys

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
        d = s.recv(4096)
        if not d:
            raise ConnectionError("closed")
        body += d
    return body.decode()
"#;

/// Python: `rst(src, sport, dst, dport, seq)` sends a raw IPv4 TCP RST.
const PY_RST: &str = r#"
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def rst(src, sport, dst, dport, seq):
    sa, da = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x04, 0, 0, 0)
    c = csum(sa + da + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, sa, da)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    r.sendto(ip + tcp, (dst, 0))
    r.close()
"#;

#[test]
fn blind_rst_does_not_end_a_keepalive_connection() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    wait_healthy(&t);
    // One keep-alive connection through the VIP; 50 RSTs with its 4-tuple
    // and random sequence numbers from the client link; then, after the
    // closed timeout (10 s) would have ended a closed session, the next
    // request on the same connection.
    let py = format!(
        "{PY_HTTP}{PY_RST}
s = socket.create_connection(('198.18.0.10', 80), timeout=5)
assert 'Hello' in req(s)
sport = s.getsockname()[1]
random.seed(12)
for _ in range(50):
    rst('198.18.0.2', sport, '198.18.0.10', 80, random.getrandbits(32))
time.sleep(12)
body = req(s)
assert 'Hello' in body, body
print('second request ok')
"
    );
    let started = Instant::now();
    let out = t.exec("client", &["python3", "-c", &py]);
    assert!(
        out.status.success(),
        "the connection must survive blind RSTs ({:?}): {}{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = t.stats();
    let dropped = s["drops"]["tcp_out_of_window"].as_u64().unwrap_or(0);
    // A guessed number may land inside the receive window (then the
    // backend answers it with a challenge ACK): nearly all are dropped.
    assert!(dropped >= 45, "out-of-window RSTs counted: {s}");
}

#[test]
fn after_kill_and_restart_established_clients_are_reset() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    let config = seed_config("", "", (100, 100));
    t.start_lbd(&config);
    wait_healthy(&t);
    // The client holds a keep-alive connection, waits for a line on stdin,
    // then sends its next request: it must fail with ECONNRESET within a
    // few seconds (a hang ends in a timeout after 8 s).
    let py = format!(
        "{PY_HTTP}
s = socket.create_connection(('198.18.0.10', 80), timeout=5)
assert 'Hello' in req(s)
print('ready', flush=True)
sys.stdin.readline()
s.settimeout(8)
t0 = time.monotonic()
try:
    req(s)
    print('answered')
    sys.exit(1)
except ConnectionResetError:
    print('reset after %.2f s' % (time.monotonic() - t0))
except (socket.timeout, TimeoutError):
    print('hang')
    sys.exit(1)
"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.ns("client"), "python3", "-c", &py])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready", "the first request must work");

    t.kill_lbd();
    t.start_lbd(&config);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("write");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    assert!(
        status.success() && rest.contains("reset after"),
        "the client's connection must be reset, got: {rest}"
    );
    let s = t.stats();
    assert!(
        s["drops"]["no_session_reset"].as_u64().unwrap_or(0) >= 1,
        "the RST counted: {s}"
    );
}
