//! The cluster as `lbctl` prints it: the `stats` section and the answers
//! to `drain` and `undrain`.

use std::fmt::Write as _;

use serde_json::Value;

/// The cluster section of `lbctl stats`:
///
/// ```text
/// cluster: node 2 of 3, AS 65011, active, 1234 sessions, local ports 21016-41007
///   announced (2): 198.18.20.10/32, 198.19.2.22/32
///   bird: 5 reconfigurations, 0 errors
///   peer 198.18.10.1 AS 65000 (port ext)
/// ```
pub fn stats_section(v: &Value) -> String {
    let mut s = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let state = v["cluster_state"].as_str().unwrap_or("active");
    let c = &v["cluster"];
    if c.is_null() {
        let _ = writeln!(
            s,
            "\ncluster: none (a single node), {state}, {} sessions",
            n(&v["sessions"])
        );
        return s;
    }
    let _ = writeln!(
        s,
        "\ncluster: node {} of {}, AS {}, {state}, {} sessions, local ports {}",
        n(&c["node_id"]),
        n(&c["nodes"]),
        n(&c["asn"]),
        n(&v["sessions"]),
        c["local_ports"].as_str().unwrap_or("?")
    );
    if let Some(d) = c["drain_deadline_s"].as_u64() {
        let _ = writeln!(s, "  drain deadline in {d} s");
    }
    if c["drain_deadline_passed"].as_bool() == Some(true) {
        let _ = writeln!(s, "  drain deadline passed: listener sessions ended");
    }
    let announced: Vec<&str> = c["announced"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let _ = writeln!(
        s,
        "  announced ({}): {}",
        announced.len(),
        if announced.is_empty() {
            "nothing".to_string()
        } else {
            announced.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "  bird: {} reconfigurations, {} errors",
        n(&c["cluster_bird_reconfigs"]),
        n(&c["cluster_bird_errors"])
    );
    if let Some(e) = c["bird_last_error"].as_str() {
        let _ = writeln!(s, "  bird last error: {e}");
    }
    for p in c["peers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  peer {} AS {} (port {})",
            p["address"].as_str().unwrap_or("?"),
            n(&p["asn"]),
            p["port"].as_str().unwrap_or("?")
        );
    }
    s
}

/// The answer to `drain` or `undrain`, one line:
///
/// ```text
/// draining: 1234 sessions, deadline 30 s
/// draining: 1234 sessions, no deadline
/// active: 1234 sessions
/// ```
///
/// followed by ` (no [cluster]: nothing is announced)` on a single node.
pub fn drain_line(v: &Value) -> String {
    let state = v["cluster_state"].as_str().unwrap_or("?");
    let mut s = format!("{state}: {} sessions", v["sessions"].as_u64().unwrap_or(0));
    if state == "draining" {
        match v["deadline_s"].as_u64() {
            Some(d) => {
                let _ = write!(s, ", deadline {d} s");
            }
            None => s.push_str(", no deadline"),
        }
    }
    if v["clustered"].as_bool() == Some(false) {
        s.push_str(" (no [cluster]: nothing is announced)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drain_lines() {
        let v = json!({"ok": true, "cluster_state": "draining", "sessions": 1234, "deadline_s": 30, "clustered": true});
        assert_eq!(drain_line(&v), "draining: 1234 sessions, deadline 30 s");
        let v = json!({"cluster_state": "draining", "sessions": 7, "deadline_s": null, "clustered": false});
        assert_eq!(
            drain_line(&v),
            "draining: 7 sessions, no deadline (no [cluster]: nothing is announced)"
        );
        let v = json!({"cluster_state": "active", "sessions": 0, "deadline_s": null, "clustered": true});
        assert_eq!(drain_line(&v), "active: 0 sessions");
    }

    #[test]
    fn the_stats_section() {
        let v = json!({
            "cluster_state": "draining",
            "sessions": 12,
            "cluster": {
                "node_id": 2, "nodes": 3, "asn": 65011, "local_ports": "21016-41007",
                "drain_deadline_s": 25, "drain_deadline_passed": false,
                "cluster_announced": 1, "announced": ["198.19.2.22/32"],
                "cluster_bird_reconfigs": 4, "cluster_bird_errors": 1,
                "bird_last_error": null,
                "peers": [{"address": "198.18.10.1", "asn": 65000, "port": "ext"}],
            },
        });
        assert_eq!(
            stats_section(&v),
            "\ncluster: node 2 of 3, AS 65011, draining, 12 sessions, local ports 21016-41007\n\
             \x20 drain deadline in 25 s\n\
             \x20 announced (1): 198.19.2.22/32\n\
             \x20 bird: 4 reconfigurations, 1 errors\n\
             \x20 peer 198.18.10.1 AS 65000 (port ext)\n"
        );
        let single = json!({"cluster_state": "active", "sessions": 3, "cluster": null});
        assert_eq!(
            stats_section(&single),
            "\ncluster: none (a single node), active, 3 sessions\n"
        );
    }
}
