//! `lbctl stats` as text: the JSON document of the control socket, laid
//! out for a terminal.

use std::fmt::Write as _;

use serde_json::Value;

/// Renders the reply of the `stats` command.
pub fn render(v: &Value) -> String {
    let mut s = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        s,
        "generation {}  uptime {} s  reloads {} (rejected {})",
        n(&v["generation"]),
        n(&v["uptime_s"]),
        n(&v["reloads"]),
        n(&v["reload_failures"])
    );
    let _ = writeln!(
        s,
        "classifiers: {} rule sets, {} staged (final tables being computed)",
        n(&v["classifiers"]["rule_sets"]),
        n(&v["classifiers"]["staged"])
    );
    let _ = writeln!(
        s,
        "\nports\n  {:<10} {:>12} {:>10} {:>12} {:>10}",
        "port", "rx", "rx_drop", "tx", "tx_drop"
    );
    for p in v["ports"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<10} {:>12} {:>10} {:>12} {:>10}",
            p["name"].as_str().unwrap_or("?"),
            n(&p["rx_packets"]),
            n(&p["rx_dropped"]),
            n(&p["tx_packets"]),
            n(&p["tx_dropped"])
        );
        if let Some(link) = p["link"].as_str() {
            let _ = writeln!(s, "  {:<10} link {link}", "");
        }
        let vlan = p["vlan"]
            .as_u64()
            .map_or_else(|| "untagged".to_string(), |v| format!("vlan {v}"));
        let _ = writeln!(
            s,
            "  {:<10} {vlan}, source_check {}; dropped: spoofed_source {}, vlan_mismatch {}",
            "",
            p["source_check"].as_str().unwrap_or("?"),
            n(&p["spoofed_source"]),
            n(&p["vlan_mismatch"])
        );
        if let Some(tap) = p["tap"].as_str() {
            let _ = writeln!(
                s,
                "  {:<10} tap {tap}: to_kernel {}, from_kernel {}, drops {}",
                "",
                n(&p["exception_to_kernel"]),
                n(&p["exception_from_kernel"]),
                n(&p["exception_drops"])
            );
        }
        if n(&p["mtu"]) > 0 {
            let _ = writeln!(s, "  {:<10} mtu {}", "", n(&p["mtu"]));
        }
        if p["rss_steering"].as_bool() == Some(true) {
            let _ = writeln!(
                s,
                "  {:<10} rss: FULLNAT replies steered to their worker",
                ""
            );
        }
    }
    let _ = writeln!(
        s,
        "\nworkers\n  {:<4} {:>12} {:>12} {:>8} {:>10} {:>12}",
        "id", "rx", "forwarded", "local", "sessions", "handoff_out"
    );
    for w in v["workers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<4} {:>12} {:>12} {:>8} {:>10} {:>12}",
            n(&w["id"]),
            n(&w["rx"]),
            n(&w["forwarded"]),
            n(&w["local"]),
            n(&w["sessions"]),
            n(&w["handoff_out"])
        );
    }
    let _ = writeln!(s, "\ndrops");
    for (k, c) in v["drops"].as_object().into_iter().flatten() {
        if n(c) > 0 {
            let _ = writeln!(s, "  {k:<24} {:>12}", n(c));
        }
    }
    let _ = writeln!(
        s,
        "\nicmp errors sent {}  (rate-limited {})",
        n(&v["icmp_errors"]["sent"]),
        n(&v["icmp_errors"]["rate_limited"])
    );
    let _ = writeln!(s, "\nsyn flood");
    for (k, c) in v["syn_flood"].as_object().into_iter().flatten() {
        let _ = writeln!(s, "  {k:<24} {:>12}", n(c));
    }
    let _ = writeln!(s, "\nip fragments");
    for (k, c) in v["fragments"].as_object().into_iter().flatten() {
        let _ = writeln!(s, "  {k:<24} {:>12}", n(c));
    }
    let _ = writeln!(
        s,
        "\naccess log records {}  (dropped {})",
        n(&v["access_log_records"]),
        n(&v["access_log_dropped"])
    );
    let _ = writeln!(s, "\nrule hits (since the last reload)");
    for (k, c) in v["rules"].as_object().into_iter().flatten() {
        let _ = writeln!(s, "  {k:<48} {:>12}", n(c));
    }
    let _ = writeln!(
        s,
        "\nlisteners\n  {:<24} {:>10} {:>10} {:>14}",
        "listener", "active", "total", "listener_limit"
    );
    for l in v["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<24} {:>10} {:>10} {:>14}",
            l["listener"].as_str().unwrap_or("?"),
            n(&l["active_sessions"]),
            n(&l["total_sessions"]),
            n(&l["listener_limit"])
        );
    }
    let _ = writeln!(
        s,
        "\nservers\n  {:<14} {:<24} {:>6} {:<6} {:>10} {:>10}  {:<8} {:>9}",
        "group", "server", "weight", "health", "active", "total", "state", "effective"
    );
    for sv in v["servers"].as_array().into_iter().flatten() {
        let health = match (sv["up"].as_bool(), sv["checked"].as_bool()) {
            (Some(true), Some(true)) => "up",
            (Some(true), _) => "up?",
            _ => "DOWN",
        };
        let _ = writeln!(
            s,
            "  {:<14} {:<24} {:>6} {:<6} {:>10} {:>10}  {}",
            sv["group"].as_str().unwrap_or("?"),
            format!(
                "{}:{}",
                sv["server"].as_str().unwrap_or("?"),
                n(&sv["port"])
            ),
            n(&sv["weight"]),
            health,
            n(&sv["active_sessions"]),
            n(&sv["total_sessions"]),
            crate::servers::state_text(sv)
        );
    }
    let _ = writeln!(
        s,
        "\nneighbour tables\n  {:<10} {:>8} {:>8}",
        "port", "entries", "limit"
    );
    for t in v["neighbor_tables"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<10} {:>8} {:>8}",
            t["port"].as_str().unwrap_or("?"),
            n(&t["entries"]),
            n(&t["limit"])
        );
    }
    s.push_str(&crate::cluster::text::stats_section(v));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_show_their_handoffs_and_ports_their_steering() {
        let v = serde_json::json!({
            "ports": [
                {"name": "ext", "rss_steering": true},
                {"name": "int", "rss_steering": false},
            ],
            "workers": [
                {"id": 0, "rx": 10, "forwarded": 9, "local": 1, "sessions": 2, "handoff_out": 0},
                {"id": 1, "rx": 20, "forwarded": 20, "local": 0, "sessions": 3, "handoff_out": 7},
            ],
        });
        let text = render(&v);
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "workers")
            .skip(1)
            .take(3)
            .collect();
        assert!(rows[0].trim_end().ends_with("handoff_out"), "{text}");
        assert!(rows[1].trim_end().ends_with(" 0"), "{text}");
        assert!(rows[2].trim_end().ends_with(" 7"), "{text}");
        let steered: Vec<&str> = text.lines().filter(|l| l.contains("rss:")).collect();
        assert_eq!(steered.len(), 1, "{text}");
        let ext_at = text.find("  ext ").expect("port ext listed");
        let int_at = text.find("  int ").expect("port int listed");
        let rss_at = text.find("rss:").expect("a steering line");
        assert!(ext_at < rss_at && rss_at < int_at, "{text}");
    }
}
