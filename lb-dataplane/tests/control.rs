//! The control socket and the metrics server against local users and
//! misbehaving clients: the socket's mode and group, peer credentials and
//! command levels, bounds on commands and clients, what lbd does with the
//! path at start, a second lbd on the same socket, idle metrics clients,
//! and `stats` during a long reload. `lbd` runs in the namespace topology
//! (needs root, like e2e.rs; `setpriv` plays the other users).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{seed_config, Topo, SERIAL};

const V4_80: &str = "http://198.18.0.10:80/";

/// A gid no account uses: the control group of these tests (no change to
/// the group database is needed).
const GROUP: &str = "4242";

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `setpriv` is here; without it the test is skipped, or fails
/// under CI (see `common::skip`).
fn have_setpriv() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v setpriv"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip::skip("needs setpriv (util-linux)");
    }
    found
}

/// `lbctl ARGS --control PATH` as uid/gid 65534 (nobody), with `groups`
/// as its supplementary groups.
fn lbctl_as_nobody(t: &Topo, groups: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534"]);
    match groups {
        Some(g) => cmd.args(["--groups", g]),
        None => cmd.arg("--clear-groups"),
    };
    cmd.arg(env!("CARGO_BIN_EXE_lbctl"))
        .args(args)
        .arg("--control")
        .arg(&t.control)
        .output()
        .expect("run setpriv")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a second `lbd` in the load balancer's namespace that is expected
/// to refuse to start: its exit status (`None` if it was still running
/// after `secs` and was killed) and its standard error.
fn lbd_refusing(t: &Topo, extra: &[&str], secs: u64) -> (Option<std::process::ExitStatus>, String) {
    let log = t.run.join("lbd2.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.ns("lb")])
        .arg(env!("CARGO_BIN_EXE_lbd"))
        .arg("--config")
        .arg(&t.config)
        .arg("--control")
        .arg(&t.control)
        .args(extra)
        .env("LBD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start lbd");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut status = None;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// lbd's pid, from the control socket's peer credentials.
fn lbd_pid(t: &Topo) -> i32 {
    let s = UnixStream::connect(&t.control).expect("connect");
    lb_dataplane::access::peer(&s)
        .expect("peer credentials")
        .pid
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// One command over the socket from this process (root): the reply.
fn command(path: &Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    // A refusal may come before lbd reads the command.
    let _ = s.write_all(format!("{cmd}\n").as_bytes());
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        // A refusal may reset the connection after its reply.
        assert!(!out.is_empty(), "reading the reply: {e}");
    }
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)))
}

/// `lbctl stats` and `lbctl reload` as nobody (no groups) both fail,
/// saying `why`.
fn nobody_is_refused(t: &Topo, why: &str) {
    for cmd in ["stats", "reload"] {
        let out = lbctl_as_nobody(t, None, &[cmd]);
        assert!(
            !out.status.success(),
            "nobody may not {cmd}: {}",
            text(&out)
        );
        assert!(text(&out).contains(why), "{}", text(&out));
    }
}

#[test]
fn the_control_socket_is_0600_under_umask_000_and_other_users_are_refused() {
    require_netns!();
    if !have_setpriv() {
        return;
    }
    let _g = lock();
    let mut t = Topo::up();
    // SAFETY: umask has no preconditions; the old mask is put back below.
    let old = unsafe { libc::umask(0) };
    t.start_lbd(&seed_config("", "", (100, 100)));
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let m = std::fs::metadata(&t.control).expect("stat the socket");
    assert_eq!(m.mode() & 0o777, 0o600, "mode {:o}", m.mode() & 0o777);

    // The kernel keeps other users out...
    nobody_is_refused(&t, "Permission denied");
    // ...and so does lbd itself when the mode is loosened: every
    // connection's peer credentials are checked.
    std::fs::set_permissions(&t.control, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    nobody_is_refused(
        &t,
        "permission denied: uid 65534 may not use this control socket",
    );
    assert_eq!(t.stats()["generation"], 1, "nothing was reloaded");
    let out = t.lbctl(&["reload"]);
    assert!(out.status.success(), "root reloads: {}", text(&out));
}

/// A topology whose lbd lets the group `GROUP` use the control socket,
/// with `more` arguments.
fn with_control_group(more: &[&str]) -> Topo {
    let mut t = Topo::up();
    let args: Vec<&str> = ["--control-group", GROUP]
        .iter()
        .chain(more)
        .copied()
        .collect();
    t.start_lbd_with(&seed_config("", "", (100, 100)), &args);
    t
}

#[test]
fn control_group_members_read_stats_but_cannot_reload() {
    require_netns!();
    if !have_setpriv() {
        return;
    }
    let _g = lock();
    let t = with_control_group(&[]);
    let m = std::fs::metadata(&t.control).expect("stat the socket");
    assert_eq!(m.mode() & 0o777, 0o660, "mode {:o}", m.mode() & 0o777);
    assert_eq!(m.gid().to_string(), GROUP);

    let out = lbctl_as_nobody(&t, Some(GROUP), &["stats", "--json"]);
    assert!(out.status.success(), "a member reads stats: {}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert_eq!(s["generation"], 1);

    let out = lbctl_as_nobody(&t, Some(GROUP), &["reload"]);
    assert!(!out.status.success(), "a member may not reload");
    assert!(
        text(&out).contains("permission denied: reload needs the admin level; uid 65534 has the user level (read-only)"),
        "{}",
        text(&out)
    );
    let out = lbctl_as_nobody(&t, None, &["stats"]);
    assert!(
        !out.status.success(),
        "a non-member reads nothing: {}",
        text(&out)
    );

    assert_eq!(t.stats()["generation"], 1, "nothing was reloaded");
    let out = t.lbctl(&["reload"]);
    assert!(out.status.success(), "root reloads: {}", text(&out));
    assert_eq!(t.stats()["generation"], 2);
    assert!(
        t.log().contains("control command refused"),
        "the refusal is logged:\n{}",
        t.log()
    );
}

#[test]
fn control_group_members_reload_at_the_admin_level() {
    require_netns!();
    if !have_setpriv() {
        return;
    }
    let _g = lock();
    let t = with_control_group(&["--control-group-level", "admin"]);
    let out = lbctl_as_nobody(&t, Some(GROUP), &["reload"]);
    assert!(
        out.status.success(),
        "an admin member reloads: {}",
        text(&out)
    );
    assert_eq!(t.stats()["generation"], 2);
}

#[test]
fn an_oversized_command_is_refused_and_memory_stays_bounded() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    let pid = lbd_pid(&t);
    let before = rss_kib(pid);

    // 256 MiB without a newline, as fast as lbd takes it.
    let mut s = UnixStream::connect(&t.control).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    while sent < 256 << 20 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent < 16 << 20, "lbd kept reading: {} MiB", sent >> 20);
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(
        reply.contains("command too long: at most 65536 bytes"),
        "{reply:?}"
    );
    let after = rss_kib(pid);
    eprintln!(
        "{} KiB sent before lbd closed; RSS {before} -> {after} KiB",
        sent >> 10
    );
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // And lbd still answers.
    assert_eq!(t.stats()["generation"], 1);
    assert!(t.backend_of(V4_80).is_some());
}

#[test]
fn idle_control_clients_are_bounded_in_number_and_time() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    // Eight idle clients (as root: the admin level) take every place.
    let idle: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&t.control).expect("connect"))
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let v = command(&t.control, "stats");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many control clients at the admin level")),
        "{v}"
    );
    // Each idle client is told off and let go after 5 s.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        assert!(reply.contains("no command within 5 s"), "{reply:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(12),
        "idle clients held for {waited:?}"
    );
    // Places are free again.
    assert_eq!(command(&t.control, "stats")["generation"], 1);
    // A slow client is held to the same deadline, however it paces its
    // bytes.
    let mut slow = UnixStream::connect(&t.control).expect("connect");
    let started = Instant::now();
    for _ in 0..40 {
        if slow.write_all(b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        if started.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reply = String::new();
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.contains("no command within 5 s"), "{reply:?}");
    // The unknown and the empty get an answer too.
    let v = command(&t.control, "shutdown");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown command \"shutdown\"")),
        "{v}"
    );
}

#[test]
fn a_file_at_the_control_path_is_kept_and_lbd_refuses_to_start() {
    require_netns!();
    let _g = lock();
    let t = Topo::up();
    t.write_config(&seed_config("", "", (100, 100)));
    std::fs::write(&t.control, "precious\n").expect("write");
    let (status, log) = lbd_refusing(&t, &[], 10);
    assert!(
        status.is_some_and(|s| !s.success()),
        "lbd must refuse to start ({status:?}):\n{log}"
    );
    assert!(
        log.contains("exists and is a regular file, not a socket"),
        "{log}"
    );
    assert!(!log.contains("lbd running"), "no port opened:\n{log}");
    assert_eq!(
        std::fs::read_to_string(&t.control).expect("the file is still there"),
        "precious\n"
    );
}

#[test]
fn a_second_lbd_on_the_same_control_socket_refuses_before_opening_ports() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    t.wait_for(15, "a backend answers", |t| t.backend_of(V4_80).is_some());
    let pid = lbd_pid(&t);
    let (status, log) = lbd_refusing(&t, &[], 10);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second lbd must refuse to start ({status:?}):\n{log}"
    );
    assert!(
        log.contains(&format!("is in use by a running lbd (pid {pid})")),
        "{log}"
    );
    // It stopped before the ports: no worker, no AF_PACKET socket.
    assert!(!log.contains("lbd running"), "it opened the ports:\n{log}");
    // The first keeps forwarding and keeps its socket.
    for _ in 0..5 {
        assert!(t.backend_of(V4_80).is_some(), "the first lbd forwards");
    }
    assert_eq!(lbd_pid(&t), pid);
    assert_eq!(t.stats()["generation"], 1);
}

#[test]
fn idle_metrics_connections_do_not_delay_a_scrape() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd_with(
        &seed_config("", "", (100, 100)),
        &["--metrics", "127.0.0.1:9464"],
    );
    // In the load balancer's namespace: 10 idle connections, then a
    // timed scrape; an oversized request head; more idle connections
    // than places; a scrape once the idle ones have timed out.
    let py = r#"
import json, socket, time
A = ("127.0.0.1", 9464)
def conn():
    s = socket.create_connection(A, timeout=10)
    return s
def fetch(req):
    s = conn()
    s.sendall(req)
    out = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        out += d
    s.close()
    return out.decode(errors="replace")
res = {}
def step(name, f):
    try:
        res[name] = f()
    except Exception as e:
        res[name] = "error: %r" % e
idle = [conn() for _ in range(10)]
t0 = time.monotonic()
step("scrape", lambda: fetch(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
res["scrape_s"] = time.monotonic() - t0
body = res.pop("scrape")
res["scrape_ok"] = body.startswith("HTTP/1.0 200") and "lbd_port_rx_packets_total" in body
step("too_long", lambda: fetch(b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 20000).split("\r\n")[0])
idle += [conn() for _ in range(30)]
time.sleep(0.3)
step("over_limit", lambda: fetch(b"GET /metrics HTTP/1.1\r\n\r\n").split("\r\n")[0])
t0 = time.monotonic()
step("idle_reply", lambda: idle[0].recv(4096).decode(errors="replace").split("\r\n")[0])
res["idle_held_s"] = time.monotonic() - t0
for s in idle:
    s.close()
time.sleep(0.3)
step("after", lambda: fetch(b"GET /metrics HTTP/1.1\r\n\r\n").split("\r\n")[0])
print(json.dumps(res))
"#;
    let out = t.exec("lb", &["python3", "-c", py]);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    eprintln!("metrics: {r}");
    assert!(
        r["scrape_s"].as_f64().is_some_and(|s| s < 1.0),
        "a scrape behind 10 idle connections: {r}"
    );
    assert_eq!(r["scrape_ok"], true, "{r}");
    assert_eq!(
        r["too_long"],
        "HTTP/1.0 431 Request Header Fields Too Large"
    );
    assert_eq!(r["over_limit"], "HTTP/1.0 503 Service Unavailable");
    assert_eq!(r["idle_reply"], "HTTP/1.0 408 Request Timeout");
    assert!(
        r["idle_held_s"].as_f64().is_some_and(|s| s < 4.0),
        "idle connections are let go after 2 s: {r}"
    );
    assert_eq!(r["after"], "HTTP/1.0 200 OK");
}

/// The seed configuration plus an unattached network ACL of `rules`
/// distinct rules: a reload that takes a while to check and compile.
fn big_config(rules: u32) -> String {
    let mut extra = String::from("\n[[network_acl]]\nid = \"nacl-big\"\n");
    for i in 0..rules {
        let lo = 1000 + (i % 8000) * 7;
        extra.push_str(&format!(
            "\n[[network_acl.rule]]\ndirection = \"ingress\"\naction = \"deny\"\npriority = {}\nprotocol = \"tcp\"\nport_range = \"{lo}/{}\"\nsource = \"198.{}.{}.{}/32\"\n",
            1 + i / 60_000,
            lo + i % 5,
            18 + ((i >> 16) & 1),
            (i >> 8) & 255,
            i & 255
        ));
    }
    seed_config("", &extra, (100, 100))
}

#[test]
fn stats_answers_while_a_large_reload_compiles() {
    require_netns!();
    let _g = lock();
    let mut t = Topo::up();
    t.start_lbd(&seed_config("", "", (100, 100)));
    t.write_config(&big_config(12_000));
    // The reload is sent before any `stats`.
    let started = Instant::now();
    let mut s = UnixStream::connect(&t.control).expect("connect");
    s.write_all(b"reload\n").expect("send reload");
    let big = std::thread::spawn(move || {
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        s.read_to_string(&mut out).expect("the reload's reply");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        (v, Instant::now())
    });
    // `stats` meanwhile: each answered at once.
    let mut during = 0;
    let mut slowest = Duration::ZERO;
    while !big.is_finished() && started.elapsed() < Duration::from_secs(60) {
        let t0 = Instant::now();
        let v = command(&t.control, "stats");
        let took = t0.elapsed();
        assert!(v["generation"].as_u64().is_some(), "{v}");
        if !big.is_finished() {
            during += 1;
            slowest = slowest.max(took);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (v, done) = big.join().expect("reload thread");
    let reload_took = done - started;
    eprintln!(
        "reload of 12000 rules: {reload_took:?}; {during} stats answered meanwhile, the slowest in {slowest:?}"
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["generation"], 2, "{v}");
    assert!(
        during >= 1,
        "stats must answer while the reload compiles ({during} did in {reload_took:?})"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "stats took {slowest:?} during the reload"
    );
    assert_eq!(t.stats()["generation"], 2);
    assert!(t.backend_of(V4_80).is_some());
    // An invalid file, through the same reload thread, changes nothing.
    let out = t.reload("[[port]]\nname = \n");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("lbd.toml:2:"), "{}", text(&out));
    assert_eq!(t.stats()["generation"], 2);
    assert!(t.backend_of(V4_80).is_some());
}
