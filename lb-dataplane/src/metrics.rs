//! The Prometheus text endpoint (`lbd --metrics ADDR`): the counters of
//! [`crate::control::stats`] in the Prometheus text format, served over
//! plain HTTP by a bounded number of client threads.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::conn::{ReadError, Slots};
use crate::control::{stats, ControlError, WRITE_TIMEOUT};
use crate::daemon::Shared;

/// The `fragments` counters: name, help.
const FRAGMENT_HELP: &[(&str, &str)] = &[
    (
        "first",
        "First IP fragments forwarded whose verdict went into the fragment table.",
    ),
    (
        "forwarded",
        "Later IP fragments forwarded as their first fragment was.",
    ),
    (
        "held",
        "Later IP fragments held because their first fragment had not come yet.",
    ),
    (
        "released",
        "Held IP fragments sent on (or handed to their owner) once their first fragment came.",
    ),
    (
        "table_full",
        "First IP fragments whose verdict found no room in the fragment table.",
    ),
];

/// The `syn_flood` counters: name, Prometheus type, help.
const SYN_FLOOD_HELP: &[(&str, &str, &str)] = &[
    (
        "half_open",
        "gauge",
        "Half-open TCP sessions (handshake begun, not completed).",
    ),
    (
        "early_drops",
        "counter",
        "Half-open sessions dropped to make room for a new one (full session table or no local port left).",
    ),
    (
        "syn_cookies_sent",
        "counter",
        "SYN-ACKs with a SYN cookie sent by the SYN proxy.",
    ),
    (
        "syn_cookies_valid",
        "counter",
        "ACKs with a valid SYN cookie (connections the SYN proxy opened).",
    ),
    (
        "syn_cookies_invalid",
        "counter",
        "ACKs without a session to a SYN-proxy listener whose cookie was wrong or too old.",
    ),
    (
        "syn_proxy_engaged",
        "gauge",
        "Workers with an \"auto\" SYN proxy engaged on some listener.",
    ),
];

/// The same counters in the Prometheus text format.
pub fn prometheus(shared: &Shared) -> String {
    let s = stats(shared);
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
        out.push_str(&format!(
            "# HELP lbd_{name} {help}\n# TYPE lbd_{name} {kind}\n"
        ));
        for (labels, v) in rows {
            out.push_str(&format!("lbd_{name}{labels} {v}\n"));
        }
    };
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    let esc = |v: &Value| {
        v.as_str()
            .unwrap_or("")
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    let ports = s["ports"].as_array().cloned().unwrap_or_default();
    for (field, help) in [
        ("rx_packets", "Frames received per port."),
        ("rx_bytes", "Bytes received per port."),
        (
            "rx_dropped",
            "Frames the kernel dropped before the data plane saw them.",
        ),
        ("tx_packets", "Frames sent per port."),
        ("tx_bytes", "Bytes sent per port."),
        ("tx_dropped", "Frames that could not be sent."),
        (
            "spoofed_source",
            "Packets dropped because their source fails the port's source_check.",
        ),
        (
            "vlan_mismatch",
            "Frames dropped because their VLAN tagging does not fit the port.",
        ),
        (
            "exception_to_kernel",
            "Frames handed to the kernel through the port's TAP (the exception path).",
        ),
        (
            "exception_from_kernel",
            "Frames the kernel sent through the port's TAP that left by the port.",
        ),
        (
            "exception_drops",
            "Frames of the exception path dropped either way (a full queue, no buffer, a failed write).",
        ),
    ] {
        metric(
            &format!("port_{field}_total"),
            help,
            "counter",
            ports
                .iter()
                .map(|p| (format!("{{port=\"{}\"}}", esc(&p["name"])), num(&p[field])))
                .collect(),
        );
    }
    metric(
        "port_mtu",
        "The MTU of each port's link, as last read (0: unknown).",
        "gauge",
        ports
            .iter()
            .map(|p| (format!("{{port=\"{}\"}}", esc(&p["name"])), num(&p["mtu"])))
            .collect(),
    );
    metric(
        "icmp_errors_sent_total",
        "ICMP errors sent for dropped packets (time exceeded, fragmentation needed, packet too big).",
        "counter",
        vec![(String::new(), num(&s["icmp_errors"]["sent"]))],
    );
    metric(
        "icmp_errors_rate_limited_total",
        "ICMP errors not sent because of the rate limit.",
        "counter",
        vec![(String::new(), num(&s["icmp_errors"]["rate_limited"]))],
    );
    let tables = s["neighbor_tables"].as_array().cloned().unwrap_or_default();
    for (field, help) in [
        (
            "entries",
            "Neighbour entries per port (resolved or being resolved).",
        ),
        (
            "limit",
            "The most neighbour entries per port (max_neighbors).",
        ),
    ] {
        metric(
            &format!("neighbor_{field}"),
            help,
            "gauge",
            tables
                .iter()
                .map(|t| (format!("{{port=\"{}\"}}", esc(&t["port"])), num(&t[field])))
                .collect(),
        );
    }
    let workers = s["workers"].as_array().cloned().unwrap_or_default();
    metric(
        "worker_handoffs_total",
        "Frames a worker received for a session another worker owns, and passed on (none when RSS steers every frame to its owner's queue).",
        "counter",
        workers
            .iter()
            .map(|w| (format!("{{worker=\"{}\"}}", num(&w["id"])), num(&w["handoff_out"])))
            .collect(),
    );
    let drops = s["drops"].as_object().cloned().unwrap_or_default();
    metric(
        "drops_total",
        "Dropped packets by reason.",
        "counter",
        drops
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), num(v)))
            .collect(),
    );
    let rules = s["rules"].as_object().cloned().unwrap_or_default();
    metric(
        "rule_hits_total",
        "Packets decided by each rule since the last reload.",
        "counter",
        rules
            .iter()
            .map(|(k, v)| (format!("{{rule=\"{}\"}}", k.replace('"', "'")), num(v)))
            .collect(),
    );
    let servers = s["servers"].as_array().cloned().unwrap_or_default();
    let slabel = |v: &Value| {
        format!(
            "{{group=\"{}\",server=\"{}\",port=\"{}\"}}",
            esc(&v["group"]),
            esc(&v["server"]),
            num(&v["port"])
        )
    };
    metric(
        "server_up",
        "1 when the server passes its health checks.",
        "gauge",
        servers
            .iter()
            .map(|v| (slabel(v), u64::from(v["up"].as_bool().unwrap_or(false))))
            .collect(),
    );
    metric(
        "server_active_sessions",
        "Sessions open to each server.",
        "gauge",
        servers
            .iter()
            .map(|v| (slabel(v), num(&v["active_sessions"])))
            .collect(),
    );
    metric(
        "server_sessions_total",
        "Sessions opened to each server since the last reload.",
        "counter",
        servers
            .iter()
            .map(|v| (slabel(v), num(&v["total_sessions"])))
            .collect(),
    );
    let listeners = s["listeners"].as_array().cloned().unwrap_or_default();
    metric(
        "listener_active_sessions",
        "Sessions open on each listener.",
        "gauge",
        listeners
            .iter()
            .map(|v| {
                (
                    format!("{{listener=\"{}\"}}", esc(&v["listener"])),
                    num(&v["active_sessions"]),
                )
            })
            .collect(),
    );
    metric(
        "listener_sessions_total",
        "Sessions opened on each listener since the last reload.",
        "counter",
        listeners
            .iter()
            .map(|v| {
                (
                    format!("{{listener=\"{}\"}}", esc(&v["listener"])),
                    num(&v["total_sessions"]),
                )
            })
            .collect(),
    );
    metric(
        "listener_limit_drops_total",
        "Packets that would have opened a session, refused by each listener's max_connections or max_new_connections_per_s since the last reload.",
        "counter",
        listeners
            .iter()
            .map(|v| {
                (
                    format!("{{listener=\"{}\"}}", esc(&v["listener"])),
                    num(&v["listener_limit"]),
                )
            })
            .collect(),
    );
    for &(name, kind, help) in SYN_FLOOD_HELP {
        let suffix = if kind == "counter" { "_total" } else { "" };
        metric(
            &format!("syn_flood_{name}{suffix}"),
            help,
            kind,
            vec![(String::new(), num(&s["syn_flood"][name]))],
        );
    }
    for &(name, help) in FRAGMENT_HELP {
        metric(
            &format!("fragments_{name}_total"),
            help,
            "counter",
            vec![(String::new(), num(&s["fragments"][name]))],
        );
    }
    for (name, help) in [
        ("access_log_records", "Access-log lines written."),
        (
            "access_log_dropped",
            "Access-log records lost: a worker's buffer or queue to the writer was full, or the file could not be written.",
        ),
    ] {
        metric(
            &format!("{name}_total"),
            help,
            "counter",
            vec![(String::new(), num(&s[name]))],
        );
    }
    metric(
        "reloads_total",
        "Configuration reloads applied.",
        "counter",
        vec![(String::new(), num(&s["reloads"]))],
    );
    metric(
        "reload_failures_total",
        "Reloads rejected (the running configuration stayed).",
        "counter",
        vec![(String::new(), num(&s["reload_failures"]))],
    );
    metric(
        "classifier_rule_sets",
        "Compiled rule sets, and those still classifying with their staged tables (final tables being computed).",
        "gauge",
        vec![
            (
                "{state=\"all\"}".to_owned(),
                num(&s["classifiers"]["rule_sets"]),
            ),
            (
                "{state=\"staged\"}".to_owned(),
                num(&s["classifiers"]["staged"]),
            ),
        ],
    );
    metric(
        "sessions",
        "Sessions in the workers' tables.",
        "gauge",
        vec![(String::new(), num(&s["sessions"]))],
    );
    let state = s["cluster_state"].as_str().unwrap_or("active");
    metric(
        "cluster_state",
        "1 for the node's state: active (announcing its VIPs) or draining (VIPs withdrawn, sessions forwarded).",
        "gauge",
        ["active", "draining"]
            .into_iter()
            .map(|st| (format!("{{state=\"{st}\"}}"), u64::from(st == state)))
            .collect(),
    );
    let c = &s["cluster"];
    if !c.is_null() {
        metric(
            "cluster_announced",
            "Prefixes BIRD was last configured to announce (VIPs and local addresses).",
            "gauge",
            vec![(String::new(), num(&c["cluster_announced"]))],
        );
        metric(
            "cluster_bird_reconfigs_total",
            "Times BIRD took a new include file (birdc configure succeeded).",
            "counter",
            vec![(String::new(), num(&c["cluster_bird_reconfigs"]))],
        );
        metric(
            "cluster_bird_errors_total",
            "Failed attempts to write the include file or run birdc configure (each retried).",
            "counter",
            vec![(String::new(), num(&c["cluster_bird_errors"]))],
        );
    }
    out.push_str(&crate::servers::prometheus(&s));
    out
}

/// Metrics clients served at once.
pub const METRICS_MAX_CLIENTS: usize = 32;

/// How long a metrics client has to send its request head.
pub const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest request head the metrics server reads.
pub const METRICS_MAX_REQUEST: usize = 8 * 1024;

/// Binds the metrics endpoint (before the ports are opened, so a busy
/// address fails the start cleanly).
pub fn bind_metrics(addr: &str) -> Result<TcpListener, ControlError> {
    let bind_error = |source| ControlError::BindMetrics {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}

/// Serves `GET /metrics` until `shared.stop` is set: each client on a
/// thread of its own (at most [`METRICS_MAX_CLIENTS`]), with
/// [`METRICS_REQUEST_TIMEOUT`] to send at most [`METRICS_MAX_REQUEST`]
/// bytes of request head, so that idle or slow clients never hold up a
/// scrape.
pub fn serve_metrics(
    shared: Arc<Shared>,
    listener: TcpListener,
) -> Result<std::thread::JoinHandle<()>, ControlError> {
    let h = std::thread::Builder::new()
        .name("lbd-metrics".into())
        .spawn(move || {
            let slots = Slots::new(METRICS_MAX_CLIENTS);
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(false).is_err() {
                            continue;
                        }
                        let Some(slot) = slots.take() else {
                            http_reply(
                                stream,
                                "503 Service Unavailable",
                                "too many metrics clients: try again\n",
                                Duration::from_millis(100),
                            );
                            continue;
                        };
                        let shared = shared.clone();
                        let spawned = std::thread::Builder::new()
                            .name("lbd-metrics-client".into())
                            .spawn(move || {
                                let _slot = slot;
                                metrics_client(&shared, stream);
                            });
                        if let Err(e) = spawned {
                            tracing::warn!("metrics client dropped: no thread for it ({e})");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .map_err(ControlError::Thread)?;
    Ok(h)
}

fn metrics_client(shared: &Shared, mut stream: TcpStream) {
    let deadline = Instant::now() + METRICS_REQUEST_TIMEOUT;
    let head = crate::conn::read_request(
        &mut stream,
        deadline,
        METRICS_MAX_REQUEST,
        crate::conn::http_head_end,
    );
    let (status, body) = match head {
        Ok(head) => {
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let mut words = line.split(|&b| b == b' ');
            let (method, target) = (words.next(), words.next().unwrap_or_default());
            let path = target.split(|&b| b == b'?').next().unwrap_or_default();
            if method == Some(&b"GET"[..]) && (path == b"/metrics" || path == b"/") {
                ("200 OK", prometheus(shared))
            } else {
                ("404 Not Found", "not found: try /metrics\n".to_string())
            }
        }
        Err(ReadError::TooLong) => (
            "431 Request Header Fields Too Large",
            format!("request head over {METRICS_MAX_REQUEST} bytes\n"),
        ),
        Err(ReadError::TimedOut) => ("408 Request Timeout", "no request in time\n".to_string()),
        Err(_) => return,
    };
    let refused = !status.starts_with("200");
    if let Some(mut stream) = http_reply(stream, status, &body, WRITE_TIMEOUT) {
        if refused {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            crate::conn::linger(&mut stream, Duration::from_millis(200), METRICS_MAX_REQUEST);
        }
    }
}

/// Writes a whole HTTP/1.0 response within `wait`; the stream back if it
/// went out.
fn http_reply(
    mut stream: TcpStream,
    status: &str,
    body: &str,
    wait: Duration,
) -> Option<TcpStream> {
    let text = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    crate::conn::write_by(&mut stream, text.as_bytes(), Instant::now() + wait)
        .ok()
        .map(|()| stream)
}
