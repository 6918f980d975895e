//! `stats`: the counters of the workers, ports, listeners, servers and
//! cluster, as one JSON document (`lbctl stats`, and `/metrics` through
//! [`crate::metrics`]).

use super::*;

/// A port's exception path: its TAP and its counters (0 without one).
fn exception_counters(
    shared: &Shared,
    pi: usize,
    tap: Option<&str>,
    out: &mut serde_json::Map<String, Value>,
) {
    let c = shared.exception.port(pi).map(|ep| &ep.counters);
    let n = |f: fn(&crate::exception::Counters) -> &std::sync::atomic::AtomicU64| {
        c.map_or(0, |c| f(c).load(Ordering::Relaxed))
    };
    out.insert("tap".into(), json!(tap));
    out.insert("exception_to_kernel".into(), json!(n(|c| &c.to_kernel)));
    out.insert("exception_from_kernel".into(), json!(n(|c| &c.from_kernel)));
    out.insert("exception_drops".into(), json!(n(|c| &c.drops)));
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
        let mut d = lb_core::pipeline::PortDrops::default();
        for r in &reports {
            if let Some(c) = r.core.as_ref().and_then(|c| c.port_drops.get(pi)) {
                d.spoofed_source += c.spoofed_source;
                d.vlan_mismatch += c.vlan_mismatch;
            }
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
            "mtu": shared.port_mtu.get(pi).map_or(0, |m| m.load(Ordering::Relaxed)),
            // FULLNAT replies arriving here are steered to their worker's queue.
            "rss_steering": shared.port_rss.get(pi).is_some_and(Option::is_some),
            "rx_packets": t.rx_packets, "rx_bytes": t.rx_bytes, "rx_dropped": t.rx_dropped,
            "tx_packets": t.tx_packets, "tx_bytes": t.tx_bytes, "tx_dropped": t.tx_dropped,
            "source_check": p.source_check.as_str(),
            "vlan": p.vlan,
            "spoofed_source": d.spoofed_source,
            "vlan_mismatch": d.vlan_mismatch,
        }));
        if let Some(o) = ports.last_mut().and_then(Value::as_object_mut) {
            exception_counters(shared, pi, p.tap.as_deref(), o);
        }
    }

    let mut drops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut rules: BTreeMap<String, u64> = BTreeMap::new();
    let mut listeners: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut servers: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
    let mut limited: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut workers = Vec::new();
    let (mut icmp_sent, mut icmp_limited) = (0u64, 0u64);
    let mut syn_flood: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fragments: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (i, r) in reports.iter().enumerate() {
        icmp_sent += r.icmp_errors_sent;
        icmp_limited += r.icmp_errors_rate_limited;
        let Some(core) = &r.core else { continue };
        for (k, v) in syn_flood_counters(core, r) {
            *syn_flood.entry(k).or_default() += v;
        }
        for (k, v) in fragment_counters(&core.fragments) {
            *fragments.entry(k).or_default() += v;
        }
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
            for ((lb, l), c) in core.listener_limited.iter() {
                *limited.entry((lb, l)).or_default() += c.total;
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

    let nc = &shared.neigh.counters;
    for (name, c) in [
        ("neighbor_own_address_claim", &nc.own_address_claims),
        ("neighbor_off_link", &nc.off_link),
        ("neighbor_unsolicited", &nc.unsolicited),
        ("neighbor_table_full", &nc.table_full),
    ] {
        *drops.entry(name).or_default() += c.load(Ordering::Relaxed);
    }
    let neighbor_tables: Vec<Value> = shared
        .neigh
        .sizes()
        .into_iter()
        .enumerate()
        .map(|(pi, (entries, limit))| {
            json!({
                "port": cfg.ports.get(pi).map(|p| p.name.as_str()),
                "entries": entries,
                "limit": limit,
            })
        })
        .collect();

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
            crate::servers::describe(
                server_list.last_mut(),
                &rt.health.servers,
                (gi, si),
                shared.now_ns(),
            );
        }
    }
    let mut listener_list = Vec::new();
    for (lbi, lb) in cfg.load_balancers.iter().enumerate() {
        for (li, l) in lb.listeners.iter().enumerate() {
            let name = format!("{}:{}", lb.id, l.port);
            let (active, total) = listeners.get(&name).copied().unwrap_or_default();
            listener_list.push(json!({
                "listener": name,
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "server_group": cfg.server_groups[l.server_group].id,
                "active_sessions": active,
                "total_sessions": total,
                // Opening packets its limits refused since the last reload.
                "listener_limit": u32::try_from(lbi)
                    .ok()
                    .zip(u32::try_from(li).ok())
                    .and_then(|k| limited.get(&k).copied())
                    .unwrap_or(0),
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
        "icmp_errors": {"sent": icmp_sent, "rate_limited": icmp_limited},
        "rules": rules,
        "listeners": listener_list,
        "servers": server_list,
        "neighbors": neighbors,
        "neighbor_tables": neighbor_tables,
        "syn_flood": syn_flood,
        "fragments": fragments,
        "drain_closed": reports.iter().filter_map(|r| r.core.as_ref()).map(|c| c.drain_closed).sum::<u64>(),
        "cluster_state": shared.cluster.state_name(),
        "sessions": reports.iter().map(|r| r.sessions).sum::<usize>(),
        "cluster": cluster_stats(shared, cfg),
        "access_log_records": shared.access_log.records.load(Ordering::Relaxed),
        "access_log_dropped": shared.access_log.dropped.load(Ordering::Relaxed)
            + reports.iter().map(|r| r.access_log_dropped).sum::<u64>(),
    })
}

/// The cluster part of the stats: the node, the drain, what BIRD was
/// last configured to announce and its counters (`null` without
/// `[cluster]`).
fn cluster_stats(shared: &Shared, cfg: &lb_core::model::Config) -> Value {
    let Some(c) = &cfg.cluster else {
        return Value::Null;
    };
    let state = &shared.cluster;
    let announced = state
        .announced
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let drain = state.status(shared.now_ns());
    let slice = lb_core::nat::node_ports(c.node_id, c.nodes);
    let peers: Vec<Value> = c
        .peers
        .iter()
        .map(|p| {
            json!({
                "address": p.address.to_string(),
                "asn": p.asn,
                "port": cfg.ports.get(p.port).map(|p| p.name.as_str()),
            })
        })
        .collect();
    let last_error = state
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    json!({
        "node_id": c.node_id,
        "nodes": c.nodes,
        "asn": c.asn,
        "local_ports": format!("{}-{}", slice.start(), slice.end()),
        "peers": peers,
        "drain_deadline_s": drain.deadline_in_s,
        "drain_deadline_passed": drain.deadline_passed,
        "cluster_announced": announced.len(),
        "announced": announced,
        "cluster_bird_reconfigs": state.bird_reconfigs.load(Ordering::Relaxed),
        "cluster_bird_errors": state.bird_errors.load(Ordering::Relaxed),
        "bird_last_error": last_error,
    })
}

/// A worker's IP fragment counters (`fragments` in the stats), each with
/// its help text in [`crate::metrics`]. Their drops are under `drops`
/// (`fragment`, `fragment_overlap`, `fragment_timeout`).
pub(crate) fn fragment_counters(c: &lb_core::pipeline::FragmentCounts) -> [(&'static str, u64); 5] {
    [
        ("first", c.first),
        ("forwarded", c.forwarded),
        ("held", c.held),
        ("released", c.released),
        ("table_full", c.table_full),
    ]
}

/// A worker's counters of the SYN-flood defences (`syn_flood` in the
/// stats), each with its help text in [`crate::metrics`].
pub(crate) fn syn_flood_counters(
    core: &lb_core::pipeline::Stats,
    r: &crate::daemon::WorkerReport,
) -> [(&'static str, u64); 6] {
    [
        ("half_open", r.half_open as u64),
        ("early_drops", core.early_drops),
        ("syn_cookies_sent", core.syn_cookies_sent),
        ("syn_cookies_valid", core.syn_cookies_valid),
        ("syn_cookies_invalid", core.syn_cookies_invalid),
        ("syn_proxy_engaged", r.syn_proxy_engaged as u64),
    ]
}
