//! The control socket (`lbctl stats`, `lbctl reload`) and the Prometheus
//! text endpoint.
//!
//! Protocol: a client connects to the Unix socket, writes one command line
//! (`stats` or `reload`) and reads one JSON document until the server
//! closes the connection.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lb_core::pipeline::DropKind;
use serde_json::{json, Value};

use crate::daemon::Shared;

/// Where `lbd` listens and `lbctl` connects when `--control` is not given.
pub const DEFAULT_CONTROL: &str = "/run/lbd.sock";

/// Serves the control socket until `shared.stop` is set.
pub fn serve(shared: Arc<Shared>, path: &Path) -> Result<std::thread::JoinHandle<()>> {
    if path.exists() {
        // A stale socket of a previous run; a live one would answer.
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use by a running lbd", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let path = path.to_path_buf();
    let h = std::thread::Builder::new()
        .name("lbd-control".into())
        .spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = handle(&shared, stream) {
                            tracing::debug!("control client: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!("control socket: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })?;
    Ok(h)
}

fn handle(shared: &Arc<Shared>, stream: UnixStream) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let reply = respond(shared, &line);
    let mut stream = stream;
    stream.write_all(reply.to_string().as_bytes())?;
    stream.write_all(b"\n")?;
    Ok(())
}

/// The reply to one command line (its trailing newline included or not).
pub fn respond(shared: &Arc<Shared>, line: &str) -> Value {
    match line.trim() {
        "stats" => stats(shared),
        "reload" => match shared.reload() {
            Ok(generation) => json!({"ok": true, "generation": generation}),
            Err(errors) => json!({"ok": false, "errors": errors}),
        },
        other => json!({"ok": false, "errors": format!("unknown command {other:?}")}),
    }
}

/// Sends one command to a running `lbd` and returns its JSON reply.
pub fn request(path: &Path, command: &str) -> Result<Value> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to lbd at {} (is it running? --control sets the path)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(command.as_bytes())?;
    s.write_all(b"\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    serde_json::from_str(&text).context("reading lbd's reply")
}

/// Every counter of the running daemon.
pub fn stats(shared: &Shared) -> Value {
    let rt = shared.runtime.load_full();
    let snap = &rt.snap;
    let cfg = &snap.cfg;
    let reports: Vec<_> = shared
        .workers
        .iter()
        .map(|w| w.report.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();

    let mut ports = Vec::new();
    for (pi, p) in cfg.ports.iter().enumerate() {
        let mut t = crate::io::IoStats::default();
        for r in &reports {
            if let Some(s) = r.ports.get(pi) {
                t.rx_packets += s.rx_packets;
                t.rx_bytes += s.rx_bytes;
                t.rx_dropped += s.rx_dropped;
                t.tx_packets += s.tx_packets;
                t.tx_bytes += s.tx_bytes;
                t.tx_dropped += s.tx_dropped;
            }
        }
        ports.push(json!({
            "name": p.name,
            "interface": shared.port_names.get(pi),
            "link": shared.link_status(pi),
            "rx_packets": t.rx_packets, "rx_bytes": t.rx_bytes, "rx_dropped": t.rx_dropped,
            "tx_packets": t.tx_packets, "tx_bytes": t.tx_bytes, "tx_dropped": t.tx_dropped,
        }));
    }

    let mut drops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut rules: BTreeMap<String, u64> = BTreeMap::new();
    let mut listeners: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut servers: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
    let mut workers = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let Some(core) = &r.core else { continue };
        for k in DropKind::ALL.iter().skip(1) {
            *drops.entry(k.as_str()).or_default() += core.drops[*k as usize];
        }
        *drops.entry("neighbor_unresolved").or_default() += r.neighbor_unresolved;
        *drops.entry("handoff_queue_full").or_default() += r.handoff_dropped;
        // Counters keyed by configuration indices are only read against the
        // generation they were counted under.
        if r.generation == snap.generation {
            for (origin, hits) in &core.rule_hits {
                let d = lb_core::acl::policy::Decision {
                    action: lb_core::model::Action::Allow,
                    origin: *origin,
                };
                let name = snap.describe(&lb_core::pipeline::Reason::Policy(d));
                // The action in the name is the rule's own.
                let name = name.replace(" (allow)", "");
                *rules.entry(name).or_default() += hits;
            }
            for ((lb, l), c) in core.listener_sessions.iter() {
                if let Some(lbc) = cfg.load_balancers.get(lb as usize) {
                    if let Some(lc) = lbc.listeners.get(l as usize) {
                        let e = listeners
                            .entry(format!("{}:{}", lbc.id, lc.port))
                            .or_default();
                        e.0 += c.active;
                        e.1 += c.total;
                    }
                }
            }
            for ((g, s), c) in core.server_sessions.iter() {
                let e = servers.entry((g as usize, s as usize)).or_default();
                e.0 += c.active;
                e.1 += c.total;
            }
        }
        workers.push(json!({
            "id": i,
            "rx": core.rx,
            "forwarded": core.forwarded,
            "local": core.local,
            "sessions": r.sessions,
            "sessions_created": core.sessions_created,
            "handoff_out": r.handoff_out,
        }));
    }

    let mut server_list = Vec::new();
    for (gi, g) in cfg.server_groups.iter().enumerate() {
        for (si, s) in g.servers.iter().enumerate() {
            let h = rt.health.server(gi, si);
            let (active, total) = servers.get(&(gi, si)).copied().unwrap_or_default();
            server_list.push(json!({
                "group": g.id,
                "server": s.name,
                "port": s.port,
                "weight": s.weight,
                "up": h.is_none_or(|h| h.up.load(Ordering::Relaxed)),
                "checked": h.is_some_and(|h| h.checked.load(Ordering::Relaxed)),
                "health_changes": h.map(|h| h.changes.load(Ordering::Relaxed)).unwrap_or(0),
                "active_sessions": active,
                "total_sessions": total,
            }));
        }
    }
    let mut listener_list = Vec::new();
    for lb in &cfg.load_balancers {
        for l in &lb.listeners {
            let name = format!("{}:{}", lb.id, l.port);
            let (active, total) = listeners.get(&name).copied().unwrap_or_default();
            listener_list.push(json!({
                "listener": name,
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "server_group": cfg.server_groups[l.server_group].id,
                "active_sessions": active,
                "total_sessions": total,
            }));
        }
    }
    let neighbors: Vec<Value> = shared
        .neigh
        .entries()
        .into_iter()
        .map(|((port, addr), e)| {
            json!({
                "port": cfg.ports.get(port as usize).map(|p| p.name.as_str()),
                "address": addr.to_string(),
                "mac": e.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "uptime_s": shared.started.elapsed().as_secs(),
        "reloads": shared.reloads.load(Ordering::Relaxed),
        "reload_failures": shared.reload_failures.load(Ordering::Relaxed),
        "classifiers": {
            "rule_sets": snap.rule_sets().count(),
            "staged": snap.rule_sets().filter(|r| r.needs_refinement()).count(),
        },
        "ports": ports,
        "workers": workers,
        "drops": drops,
        "rules": rules,
        "listeners": listener_list,
        "servers": server_list,
        "neighbors": neighbors,
    })
}

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
    out
}

/// Serves `GET /metrics` on `addr` until `shared.stop` is set.
pub fn serve_metrics(shared: Arc<Shared>, addr: &str) -> Result<std::thread::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    listener.set_nonblocking(true)?;
    let h = std::thread::Builder::new()
        .name("lbd-metrics".into())
        .spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let n = stream.read(&mut buf).unwrap_or(0);
                        let req = String::from_utf8_lossy(&buf[..n]);
                        let (status, body) = if req.starts_with("GET /metrics") || req.starts_with("GET / ") {
                            ("200 OK", prometheus(&shared))
                        } else {
                            ("404 Not Found", "not found: try /metrics\n".to_string())
                        };
                        let _ = write!(
                            stream,
                            "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok(h)
}
