//! The load balancer's TOML configuration: schema, validation with
//! `file:line:col` diagnostics, and compilation into [`lb_core::model::Config`].
//!
//! ```
//! let text = r#"
//! [[subnet]]
//! id = "vsw-be"
//! cidr = "198.19.1.0/24"
//!
//! [[security_group]]
//! id = "sg-web"
//! [[security_group.rule]]
//! direction = "ingress"
//! action = "allow"
//! protocol = "tcp"
//! port_range = "80/80"
//! source = "198.19.1.0/24"
//!
//! [[instance]]
//! id = "ecs01"
//! subnet = "vsw-be"
//! addresses = ["198.19.1.11"]
//! security_groups = ["sg-web"]
//! "#;
//! let cfg = lb_config::parse_str(text, "example.toml").expect("valid");
//! assert_eq!(cfg.instances[0].security_groups, vec![0]);
//! assert_eq!(cfg.security_groups[0].rules[0].line, 8);
//!
//! let err = lb_config::parse_str("[[subnet]]\nid = \"s\"\ncidr = \"198.19.1.5/24\"\n", "bad.toml")
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "bad.toml:3:8: 198.19.1.5/24 has host bits set; did you mean 198.19.1.0/24?"
//! );
//! ```
//!
//! The format is specified in `CONFIG.md`; the serde structs in [`schema`]
//! mirror it name for name. Every problem is reported at once, sorted by
//! position, with one exception: a TOML syntax error, a value of the wrong
//! type or a missing field ends parsing there (as `toml` reports it), since
//! nothing after it can be checked reliably. Unknown fields are reported and
//! parsing goes on.

mod compile;
mod error;
mod parse;
mod sanity;
pub mod schema;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::Path;

use lb_core::model::Config;

pub use compile::{
    MAX_GROUPS_PER_INTERFACE, MAX_HEALTH_CHECK_S, MAX_RULES_PER_INTERFACE, MAX_SESSION_TIMEOUT_S,
    MAX_WORKERS,
};
pub use error::{ConfigErrors, Diagnostic};
pub use sanity::{
    human_bytes, session_memory, DEFAULT_MAX_MEMORY_MIB, MAX_FILE_BYTES, MAX_MEMORY_MIB,
};

use error::Sink;

/// Parses and validates configuration text. `path` is used only in messages.
pub fn parse_str(text: &str, path: &str) -> Result<Config, ConfigErrors> {
    let mut sink = Sink::new(text, path);
    let Some(file) = deserialize(text, &mut sink) else {
        return Err(sink.finish());
    };
    let cfg = compile::Compiler::new(&mut sink).compile(&file);
    sanity::check(&file, &cfg, &mut sink);
    if sink.is_empty() {
        Ok(cfg)
    } else {
        Err(sink.finish())
    }
}

/// At most this many unknown fields are reported before giving up.
const MAX_SCHEMA_ERRORS: usize = 32;

/// TOML syntax and schema. A syntax error, a wrong type or a missing field
/// ends parsing (what follows could not be trusted); an unknown field is
/// reported, dropped, and parsing goes on, so that a misspelt key does not
/// hide the file's other problems.
fn deserialize(text: &str, sink: &mut Sink<'_>) -> Option<schema::FileConfig> {
    use serde::Deserialize as _;
    let mut root = match toml::de::DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            sink.error(&e.span().unwrap_or(0..0), toml_message(e.message()));
            return None;
        }
    };
    for _ in 0..MAX_SCHEMA_ERRORS {
        let de = toml::de::Deserializer::from(root.clone());
        let e = match schema::FileConfig::deserialize(de) {
            Ok(file) => return Some(file),
            Err(e) => e,
        };
        let message = toml_message(e.message());
        let span = e.span().unwrap_or(0..0);
        sink.error(&span, message.as_str());
        if !message.starts_with("unknown field") || !remove_key_at(root.get_mut(), span.start) {
            return None;
        }
    }
    None
}

/// Removes the entry whose key covers byte offset `pos`, wherever it is.
fn remove_key_at(table: &mut toml::de::DeTable<'_>, pos: usize) -> bool {
    use toml::de::DeValue;
    let mut found = None;
    for (k, v) in table.iter_mut() {
        if k.span().contains(&pos) {
            found = Some(k.get_ref().to_string());
            break;
        }
        let hit = match v.get_mut() {
            DeValue::Table(t) => remove_key_at(t, pos),
            DeValue::Array(a) => a.iter_mut().any(|item| match item.get_mut() {
                DeValue::Table(t) => remove_key_at(t, pos),
                _ => false,
            }),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    match found {
        Some(k) => table.remove(k.as_str()).is_some(),
        None => false,
    }
}

/// Reads, parses and validates a configuration file. The file must be a
/// regular file of at most [`MAX_FILE_BYTES`] holding more than whitespace
/// and comments.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let shown = path.display().to_string();
    let at_start = |message: String| {
        Err(ConfigErrors(vec![Diagnostic {
            path: shown.clone(),
            line: 1,
            col: 1,
            message,
        }]))
    };
    match sanity::read_file(path) {
        Ok(text) if sanity::is_blank(&text) => at_start(sanity::BLANK_MESSAGE.to_string()),
        Ok(text) => parse_str(&text, &shown),
        Err(message) => at_start(message),
    }
}

/// The first line of a `toml` message, without trailing punctuation.
fn toml_message(m: &str) -> String {
    let first = m
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid TOML");
    first.trim_end_matches(['.', ':']).to_string()
}

/// A one-line summary for `lbctl check`, e.g.
/// `ok: 2 ports, 3 security groups (14 rules), 2 instances, 1 server group (2 servers), 1 load balancer (2 listeners), session tables 241 MiB`
/// (the memory estimate of [`session_memory`]).
pub fn summary(cfg: &Config) -> String {
    fn n(count: usize, one: &str, many: &str) -> String {
        format!("{count} {}", if count == 1 { one } else { many })
    }
    let rules: usize = cfg.security_groups.iter().map(|g| g.rules.len()).sum();
    let servers: usize = cfg.server_groups.iter().map(|g| g.servers.len()).sum();
    let listeners: usize = cfg.load_balancers.iter().map(|l| l.listeners.len()).sum();
    let mut s = format!(
        "ok: {}, {} ({})",
        n(cfg.ports.len(), "port", "ports"),
        n(
            cfg.security_groups.len(),
            "security group",
            "security groups"
        ),
        n(rules, "rule", "rules"),
    );
    if !cfg.network_acls.is_empty() {
        let acl_rules: usize = cfg.network_acls.iter().map(|a| a.rules.len()).sum();
        let _ = write!(
            s,
            ", {} ({})",
            n(cfg.network_acls.len(), "network ACL", "network ACLs"),
            n(acl_rules, "rule", "rules")
        );
    }
    let _ = write!(
        s,
        ", {}, {} ({}), {} ({})",
        n(cfg.instances.len(), "instance", "instances"),
        n(cfg.server_groups.len(), "server group", "server groups"),
        n(servers, "server", "servers"),
        n(cfg.load_balancers.len(), "load balancer", "load balancers"),
        n(listeners, "listener", "listeners"),
    );
    let _ = write!(s, ", session tables {}", human_bytes(session_memory(cfg)));
    if let Some(c) = &cfg.cluster {
        let _ = write!(
            s,
            ", cluster node {} of {} ({})",
            c.node_id,
            c.nodes,
            n(c.peers.len(), "peer", "peers")
        );
    }
    s
}
