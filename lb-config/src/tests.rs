//! Diagnostics tests: each check with the exact position and message of
//! its diagnostic, plus the examples and the compiled model.

use std::net::IpAddr;

use ipnet::IpNet;
use lb_core::model::{HealthProtocol, Peer, PortRange};

use super::*;

mod cluster;

/// Drops one leading newline so that test texts can start on their own line.
fn text(t: &str) -> &str {
    t.strip_prefix('\n').unwrap_or(t)
}

/// The diagnostics of `t`, as `line:col: message`.
fn errs(t: &str) -> Vec<String> {
    match parse_str(text(t), "t.toml") {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.iter()
                .map(|d| {
                    assert_eq!(d.path, "t.toml");
                    format!("{}:{}: {}", d.line, d.col, d.message)
                })
                .collect()
        }
    }
}

/// The session tables of `workers` workers with the default table sizes,
/// as the summary shows them.
fn default_tables(workers: u64) -> String {
    let d = lb_core::model::Dataplane::default();
    human_bytes(
        lb_core::pipeline::Worker::session_table_bytes(d.max_sessions, d.max_sessions_v6) * workers,
    )
}

fn ok(t: &str) -> Config {
    match parse_str(text(t), "t.toml") {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

/// A subnet, a group and an instance, for appending rule snippets to.
const GROUP_HEAD: &str = r#"
[[subnet]]
id = "vsw"
cidr = "198.19.1.0/24"
ipv6_cidr = "2001:db8:19:1::/64"

[[instance]]
id = "ecs01"
subnet = "vsw"
addresses = ["198.19.1.11"]
security_groups = ["sg-a"]

[[security_group]]
id = "sg-a"
"#;

/// `GROUP_HEAD` (13 lines) plus one rule starting on line 14.
fn rule(body: &str) -> Vec<String> {
    errs(&format!(
        "{GROUP_HEAD}[[security_group.rule]]\n{}",
        text(body)
    ))
}

fn rule_ok(body: &str) -> lb_core::model::Rule {
    let cfg = ok(&format!(
        "{GROUP_HEAD}[[security_group.rule]]\n{}",
        text(body)
    ));
    cfg.security_groups[0].rules[0].clone()
}

// ---------------------------------------------------------------- TOML level

#[test]
fn syntax_error_has_a_position() {
    assert_eq!(
        errs("\n[platform]\nrestrict_smtp = tru\n"),
        vec!["2:17: invalid boolean, expected `true`"]
    );
}

#[test]
fn unknown_field() {
    assert_eq!(
        errs("\n[dataplane]\nworkers = 2\nthreads = 4\n"),
        vec!["3:1: unknown field `threads`, expected one of `io`, `workers`, `cores`, `eal_args`, `idle`, `max_sessions`, `max_sessions_v6`, `max_memory_mib`, `reset_unknown`, `reset_unknown_rate`, `fragments`, `exception_queue`"]
    );
}

#[test]
fn unknown_fields_do_not_hide_other_errors() {
    assert_eq!(
        errs("\n[dataplane]\nworkers = 0\nthreads = 4\n[platform]\nsmtp = false\n"),
        vec![
            "2:11: workers must be 1..=64, got 0",
            "3:1: unknown field `threads`, expected one of `io`, `workers`, `cores`, `eal_args`, `idle`, `max_sessions`, `max_sessions_v6`, `max_memory_mib`, `reset_unknown`, `reset_unknown_rate`, `fragments`, `exception_queue`",
            "5:1: unknown field `smtp`, expected one of `backend_sg_policy`, `session_timeout_s`, `restrict_smtp`, `metadata_address`, `unreplied_timeout_s`",
        ]
    );
}

#[test]
fn wrong_type_and_unknown_variant() {
    assert_eq!(
        errs("\n[dataplane]\nworkers = \"2\"\n"),
        vec!["2:11: invalid type: string \"2\", expected i64"]
    );
    assert_eq!(
        errs("\n[dataplane]\nio = \"xdp\"\n"),
        vec!["2:6: unknown variant `xdp`, expected `af_packet` or `dpdk`"]
    );
    assert_eq!(
        errs("\n[dataplane]\nidle = \"spin\"\n"),
        vec!["2:8: unknown variant `spin`, expected `busy` or `adaptive`"]
    );
}

#[test]
fn missing_field() {
    assert_eq!(
        errs("\n[[subnet]]\nid = \"vsw\"\n"),
        vec!["1:1: missing field `cidr`"]
    );
}

// ---------------------------------------------------------------- rules

#[test]
fn priority_limits() {
    let body = "direction = \"ingress\"\naction = \"allow\"\npriority = {}\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n";
    assert_eq!(
        rule(&body.replace("{}", "0")),
        vec!["17:12: priority must be 1..=100, got 0"]
    );
    assert_eq!(
        rule(&body.replace("{}", "101")),
        vec!["17:12: priority must be 1..=100, got 101"]
    );
    assert_eq!(rule_ok(&body.replace("{}", "100")).priority, 100);
    // The cloud's default priority is 1.
    assert_eq!(rule_ok("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n").priority, 1);
}

fn tcp_rule(ports: &str) -> Vec<String> {
    rule(&format!(
        "direction = \"ingress\"\naction = \"allow\"\nprotocol = \"tcp\"\nport_range = \"{ports}\"\nsource = \"0.0.0.0/0\"\n"
    ))
}

#[test]
fn port_range_limits() {
    assert_eq!(
        tcp_rule("0/80"),
        vec!["18:14: port 0 in \"0/80\" is out of range 1..=65535"]
    );
    assert_eq!(
        tcp_rule("80/65536"),
        vec!["18:14: port 65536 in \"80/65536\" is out of range 1..=65535"]
    );
    assert_eq!(
        tcp_rule("90/80"),
        vec!["18:14: port range \"90/80\" is reversed: 90 is greater than 80"]
    );
    assert_eq!(
        tcp_rule("80"),
        vec!["18:14: invalid port range \"80\": expected \"lo/hi\" (e.g. \"80/80\" or \"8000/8100\"), or \"-1/-1\" for any port"]
    );
    assert_eq!(
        tcp_rule("-1/-1"),
        vec!["18:14: port range -1/-1 is for protocols without ports; for all tcp ports write \"1/65535\""]
    );
    assert!(tcp_rule("1/65535").is_empty());
}

#[test]
fn ports_only_with_tcp_and_udp() {
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"icmp\"\nport_range = \"8/8\"\nsource = \"0.0.0.0/0\"\n"),
        vec!["18:14: protocol icmp has no ports; its port_range must be \"-1/-1\""]
    );
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"udp\"\nsource = \"0.0.0.0/0\"\n"),
        vec!["17:12: a udp rule needs port_range (e.g. \"80/80\") or port_list"]
    );
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"gre\"\nsource = \"0.0.0.0/0\"\nsource_port_range = \"1/2\"\n"),
        vec!["19:21: source_port_range needs protocol tcp or udp, not gre"]
    );
    // Without port_range a portless protocol means -1/-1.
    let r = rule_ok(
        "direction = \"ingress\"\naction = \"allow\"\nprotocol = 47\nsource = \"0.0.0.0/0\"\n",
    );
    assert_eq!((r.protocol, r.ports), (Some(47), vec![PortRange::ANY]));
}

const PORT_LIST: &str =
    "\n[[port_list]]\nid = \"prl-web\"\nmax_entries = 10\nentries = [\"80/80\", \"443/443\"]\n";

#[test]
fn port_lists() {
    let with = |body: &str| rule(&format!("{}{PORT_LIST}", text(body)));
    assert_eq!(
        with("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"icmp\"\nport_list = \"prl-web\"\nsource = \"0.0.0.0/0\"\n"),
        vec!["18:13: port_list needs protocol tcp or udp, not icmp"]
    );
    assert_eq!(
        with("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"tcp\"\nport_range = \"1/2\"\nport_list = \"prl-web\"\nsource = \"0.0.0.0/0\"\n"),
        vec!["19:13: a rule takes port_range or port_list, not both"]
    );
    assert_eq!(
        with("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"tcp\"\nport_list = \"prl-db\"\nsource = \"0.0.0.0/0\"\n"),
        vec!["18:13: unknown port list prl-db"]
    );
    let cfg = ok(&format!(
        "{GROUP_HEAD}[[security_group.rule]]\ndirection = \"ingress\"\naction = \"allow\"\nprotocol = \"tcp\"\nport_list = \"prl-web\"\nsource = \"0.0.0.0/0\"\n{PORT_LIST}"
    ));
    let r = &cfg.security_groups[0].rules[0];
    assert_eq!(r.ports, vec![PortRange::single(80), PortRange::single(443)]);
    assert_eq!(r.port_list, Some(0));
}

#[test]
fn port_list_entries() {
    assert_eq!(
        errs("\n[[port_list]]\nid = \"prl\"\nmax_entries = 2\nentries = [\"80/80\", \"-1/-1\", \"80/80\"]\n"),
        vec![
            "4:21: a port list entry needs real ports; -1/-1 is not allowed here",
            "4:30: port list prl has 3 entries but max_entries = 2",
            "4:30: 80/80 is listed twice",
        ]
    );
    assert_eq!(
        errs("\n[[port_list]]\nid = \"prl\"\nmax_entries = 0\n"),
        vec!["3:15: max_entries must be 1..=4294967295, got 0"]
    );
}

#[test]
fn protocols() {
    let p = |proto: &str| {
        rule(&format!("direction = \"ingress\"\naction = \"allow\"\nprotocol = {proto}\nsource = \"0.0.0.0/0\"\n"))
    };
    assert_eq!(
        p("\"sctp\""),
        vec!["17:12: unknown protocol `sctp`; expected tcp, udp, icmp, icmpv6, gre, all or an IANA protocol number 0..=255"]
    );
    assert_eq!(
        p("256"),
        vec!["17:12: protocol number 256 is out of range; expected tcp, udp, icmp, icmpv6, gre, all or an IANA protocol number 0..=255"]
    );
    assert_eq!(
        p("\"6\""),
        vec!["17:12: a tcp rule needs port_range (e.g. \"80/80\") or port_list"]
    );
    let r = |proto: &str| {
        rule_ok(&format!("direction = \"ingress\"\naction = \"allow\"\nprotocol = {proto}\nsource = \"0.0.0.0/0\"\n"))
            .protocol
    };
    let r6 = |proto: &str| {
        rule_ok(&format!(
            "direction = \"ingress\"\naction = \"allow\"\nprotocol = {proto}\nsource = \"::/0\"\n"
        ))
        .protocol
    };
    assert_eq!(r("\"all\""), None);
    assert_eq!(r("\"ICMP\""), Some(1));
    assert_eq!(r6("\"icmpv6\""), Some(58));
    assert_eq!(r("\"132\""), Some(132));
    assert_eq!(r("0"), Some(0));
}

#[test]
fn icmp_family_must_match() {
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"icmp\"\nsource = \"2001:db8::/32\"\n"),
        vec!["18:10: protocol icmp is IPv4 only but source 2001:db8::/32 is IPv6; use icmpv6"]
    );
    assert_eq!(
        rule("direction = \"egress\"\naction = \"allow\"\nprotocol = \"icmpv6\"\ndestination = \"198.18.0.0/15\"\n"),
        vec!["18:15: protocol icmpv6 is IPv6 only but destination 198.18.0.0/15 is IPv4; use icmp"]
    );
}

#[test]
fn direction_and_authorization_object() {
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\ndestination = \"198.19.1.11\"\n"),
        vec!["15:13: an ingress rule needs source (its authorization object: an address, CIDR, sg-… or pl-…)"]
    );
    assert_eq!(
        rule("direction = \"egress\"\naction = \"deny\"\nprotocol = \"all\"\nsource = \"198.19.1.11\"\n"),
        vec!["15:13: an egress rule needs destination (its authorization object: an address, CIDR, sg-… or pl-…)"]
    );
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\ndestination = \"sg-a\"\n"),
        vec!["19:15: the destination of an ingress rule (a quintuple rule) must be an address or CIDR, not sg-a"]
    );
    assert_eq!(
        rule("direction = \"egress\"\naction = \"allow\"\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\nsource = \"2001:db8:19:1::11\"\n"),
        vec!["19:10: source 2001:db8:19:1::11/128 is IPv6 but destination 0.0.0.0/0 is IPv4; the rule could never match"]
    );
    assert_eq!(
        rule(
            "direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"sg-b\"\n"
        ),
        vec!["18:10: unknown security group sg-b"]
    );
    assert_eq!(
        rule(
            "direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"pl-x\"\n"
        ),
        vec!["18:10: unknown prefix list pl-x"]
    );
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"office\"\n"),
        vec!["18:10: \"office\" is not an IP address or CIDR"]
    );
    assert_eq!(
        rule_ok(
            "direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"sg-a\"\n"
        )
        .peer,
        Peer::Group(0)
    );
}

#[test]
fn quintuple_rule_compiles() {
    // The seed's example (security-group-rules-and-matching.txt), with
    // "destination port: unrestricted" written as 1/65535 for TCP.
    let r = rule_ok(
        r#"
direction = "egress"
action = "allow"
protocol = "tcp"
port_range = "1/65535"
source = "172.16.1.0/32"
source_port_range = "22/22"
destination = "10.0.0.1/32"
"#,
    );
    assert_eq!(r.peer, Peer::Cidr("10.0.0.1/32".parse().expect("cidr")));
    assert_eq!(r.local, Some("172.16.1.0/32".parse().expect("cidr")));
    assert_eq!(
        (r.ports, r.source_ports),
        (vec![PortRange::new(1, 65535)], PortRange::single(22))
    );
}

#[test]
fn host_bits_and_normalisation() {
    assert_eq!(
        rule("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"192.168.1.5/24\"\n"),
        vec!["18:10: 192.168.1.5/24 has host bits set; did you mean 192.168.1.0/24?"]
    );
    let r = rule_ok("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"2408:180:0000::1\"\n");
    assert_eq!(r.peer, Peer::Cidr("2408:180::1/128".parse().expect("cidr")));
    let r = rule_ok("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"2408:4321:180:0000::/64\"\n");
    assert_eq!(
        r.peer,
        Peer::Cidr("2408:4321:180::/64".parse().expect("cidr"))
    );
}

#[test]
fn rule_fields_map_to_the_model() {
    let r = rule_ok(
        r#"
direction = "ingress"
action = "deny"
priority = 7
protocol = "tcp"
port_range = "8000/8100"
source = "198.18.0.0/15"
destination = "198.19.1.11"
source_port_range = "1024/65535"
description = "quintuple"
"#,
    );
    assert_eq!(r.line, 14);
    assert_eq!(r.action, lb_core::model::Action::Deny);
    assert_eq!(r.priority, 7);
    assert_eq!(r.protocol, Some(6));
    assert_eq!(r.ports, vec![PortRange::new(8000, 8100)]);
    assert_eq!(r.local, Some("198.19.1.11/32".parse().expect("cidr")));
    assert_eq!(r.source_ports, PortRange::new(1024, 65535));
    assert_eq!(r.description, "quintuple");
    let r = rule_ok("direction = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nport_range = \"-1/-1\"\nsource = \"0.0.0.0/0\"\n");
    assert_eq!(
        (r.ports, r.source_ports, r.local),
        (vec![PortRange::ANY], PortRange::ANY, None)
    );
}

#[test]
fn duplicate_rules() {
    let one = "[[security_group.rule]]\ndirection = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n";
    assert_eq!(
        errs(&format!("{GROUP_HEAD}{one}{one}")),
        vec!["19:1: this rule duplicates the rule on line 14"]
    );
}

// ---------------------------------------------------------------- groups

fn instance_with_groups(n: usize) -> String {
    let mut t = String::from("[[subnet]]\nid = \"vsw\"\ncidr = \"198.19.1.0/24\"\n");
    let ids: Vec<String> = (0..n).map(|i| format!("\"sg-{i}\"")).collect();
    t.push_str(&format!(
        "[[instance]]\nid = \"ecs01\"\nsubnet = \"vsw\"\naddresses = [\"198.19.1.11\"]\nsecurity_groups = [{}]\n",
        ids.join(", ")
    ));
    for i in 0..n {
        t.push_str(&format!("[[security_group]]\nid = \"sg-{i}\"\n"));
    }
    t
}

#[test]
fn security_group_count() {
    assert!(errs(&instance_with_groups(10)).is_empty());
    assert_eq!(
        errs(&instance_with_groups(11)),
        vec!["8:19: instance ecs01 has 11 security groups; at most 10 are allowed"]
    );
    assert_eq!(
        errs(&instance_with_groups(0)),
        vec!["8:19: instance ecs01 needs at least one security group"]
    );
}

#[test]
fn security_group_list_problems() {
    assert_eq!(
        errs(
            r#"
[[subnet]]
id = "vsw"
cidr = "198.19.1.0/24"
[[instance]]
id = "ecs01"
subnet = "vsw"
addresses = ["198.19.1.11"]
security_groups = ["sg-a", "sg-a", "sg-e", "sg-x"]
[[security_group]]
id = "sg-a"
[[security_group]]
id = "sg-e"
type = "enterprise"
internal_access = "drop"
[[security_group]]
id = "web"
"#
        ),
        vec![
            "8:28: security group sg-a is listed twice",
            "8:36: sg-e is an enterprise security group but sg-a is basic; the groups of one interface must all be basic or all enterprise",
            "8:44: unknown security group sg-x",
            "14:19: internal_access applies to basic security groups only (an enterprise group always isolates its members)",
            "16:6: security group id web must start with \"sg-\" (rules tell security groups apart by that prefix)",
        ]
    );
}

#[test]
fn rule_quota_counts_list_capacity() {
    let t = r#"
[[subnet]]
id = "vsw"
cidr = "198.19.1.0/24"
[[instance]]
id = "ecs01"
subnet = "vsw"
addresses = ["198.19.1.11"]
security_groups = ["sg-a", "sg-b"]
[[prefix_list]]
id = "pl-big"
max_entries = 500
[[security_group]]
id = "sg-a"
[[security_group.rule]]
direction = "ingress"
action = "allow"
protocol = "all"
source = "pl-big"
[[security_group]]
id = "sg-b"
[[security_group.rule]]
direction = "egress"
action = "allow"
protocol = "all"
destination = "pl-big"
"#;
    assert!(errs(t).is_empty());
    let t = t.replace("max_entries = 500", "max_entries = 501");
    assert_eq!(
        errs(&t),
        vec!["8:19: the security groups of instance ecs01 hold 1002 rules (a rule using a prefix or port list counts its max_entries); at most 1000 are allowed"]
    );
}

#[test]
fn prefix_lists() {
    assert_eq!(
        errs("\n[[prefix_list]]\nid = \"pl-a\"\nmax_entries = 2\nentries = [\"198.18.0.0/15\", \"198.18.0.1/15\", \"2001:db8::/32\", \"198.18.0.0/15\"]\n"),
        vec![
            "4:29: 198.18.0.1/15 has host bits set; did you mean 198.18.0.0/15?",
            "4:46: prefix list pl-a has 4 entries but max_entries = 2",
            "4:63: 198.18.0.0/15 is already listed on line 4",
        ]
    );
    assert_eq!(
        errs("\n[[prefix_list]]\nid = \"office\"\nmax_entries = 2\n"),
        vec!["2:6: prefix list id office must start with \"pl-\" (rules tell prefix lists apart by that prefix)"]
    );
}

// ---------------------------------------------------------------- ids

#[test]
fn duplicate_and_unknown_ids() {
    assert_eq!(
        errs(
            r#"
[[subnet]]
id = "vsw"
cidr = "198.19.1.0/24"
network_acl = "nacl-x"
[[subnet]]
id = "vsw"
cidr = "198.19.2.0/24"
[[network_acl]]
id = "nacl-a"
[[instance]]
id = "ecs01"
subnet = "vsw-x"
addresses = ["198.19.1.11"]
security_groups = ["sg-a"]
[[security_group]]
id = "sg-a"
[[server_group]]
id = "sgp"
[[server_group.server]]
instance = "ecs02"
port = 80
[[load_balancer]]
id = "lb"
vips = ["198.18.0.10"]
[[load_balancer.listener]]
protocol = "tcp"
port = 80
server_group = "sgp-x"
[[route]]
destination = "0.0.0.0/0"
port = "ext"
"#
        ),
        vec![
            "4:15: unknown network ACL nacl-x",
            "6:6: duplicate subnet id vsw (first defined on line 2)",
            "12:10: unknown subnet vsw-x",
            "20:12: unknown instance ecs02",
            "24:8: load balancer lb has an IPv4 VIP but no IPv4 local_addresses entry (the source address toward the backends; not needed only when every listener has transfer_client_ip = true)",
            "28:16: unknown server group sgp-x",
            "31:8: unknown port ext",
        ]
    );
}

#[test]
fn network_acl_rules() {
    assert_eq!(
        errs("\n[[network_acl]]\nid = \"nacl\"\n[[network_acl.rule]]\ndirection = \"ingress\"\naction = \"allow\"\nprotocol = \"all\"\nsource = \"sg-a\"\n[[security_group]]\nid = \"sg-a\"\n"),
        vec!["7:10: a network ACL rule cannot name a security group (sg-a); use addresses, CIDRs or a prefix list"]
    );
}

// ---------------------------------------------------------------- subnets and instances

#[test]
fn subnets() {
    assert_eq!(
        errs(
            r#"
[[subnet]]
id = "a"
cidr = "198.19.0.0/16"
ipv6_cidr = "198.20.0.0/16"
[[subnet]]
id = "b"
cidr = "198.19.1.0/24"
ipv6_cidr = "2001:db8:19:1::1/64"
"#
        ),
        vec![
            "4:13: ipv6_cidr must be an IPv6 CIDR, got 198.20.0.0/16",
            "7:8: 198.19.1.0/24 overlaps 198.19.0.0/16 of subnet a",
            "8:13: 2001:db8:19:1::1/64 has host bits set; did you mean 2001:db8:19:1::/64?",
        ]
    );
    let cfg = ok(text(GROUP_HEAD));
    assert_eq!(
        cfg.subnets[0].cidrs,
        vec![
            "198.19.1.0/24".parse::<IpNet>().expect("cidr"),
            "2001:db8:19:1::/64".parse().expect("cidr")
        ]
    );
}

#[test]
fn instance_addresses() {
    let t = r#"
[[subnet]]
id = "vsw"
cidr = "198.19.1.0/24"
[[subnet]]
id = "vsw6"
cidr = "198.19.2.0/24"
ipv6_cidr = "2001:db8:19:2::/64"
[[security_group]]
id = "sg-a"
[[instance]]
id = "ecs01"
subnet = "vsw"
addresses = ["198.19.2.11", "2001:db8:19:2::11", "198.19.1.255", "198.19.1.11/32", "198.19.1.11"]
security_groups = ["sg-a"]
[[instance]]
id = "ecs02"
subnet = "vsw6"
addresses = ["2001:db8:19:2:0::11", "198.19.1.11"]
security_groups = ["sg-a"]
[[instance]]
id = "ecs03"
subnet = "vsw"
addresses = []
security_groups = ["sg-a"]
"#;
    assert_eq!(
        errs(t),
        vec![
            "13:14: 198.19.2.11 is outside subnet vsw (198.19.1.0/24)",
            "13:29: 2001:db8:19:2::11 is IPv6 but subnet vsw has no ipv6_cidr",
            "13:50: 198.19.1.255 is the network or broadcast address of subnet vsw (198.19.1.0/24)",
            "13:66: 198.19.1.11/32 must be a plain address without a prefix length (e.g. 198.19.1.11)",
            "18:14: address 2001:db8:19:2::11 is already used by instance ecs01 (line 13)",
            "18:37: 198.19.1.11 is outside subnet vsw6 (198.19.2.0/24)",
            "18:37: address 198.19.1.11 is already used by instance ecs01 (line 13)",
            "23:13: instance ecs03 needs at least one address",
        ]
    );
}

#[test]
fn instance_addresses_are_normalised() {
    let cfg = ok(&GROUP_HEAD.replace(
        "\"198.19.1.11\"",
        "\"198.19.1.11\", \"2001:db8:19:1:0:0::11\"",
    ));
    assert_eq!(
        cfg.instances[0].addresses[1],
        "2001:db8:19:1::11".parse::<IpAddr>().expect("addr")
    );
}

// ---------------------------------------------------------------- server groups and load balancers

/// A subnet with two instances, a server group and a load balancer.
fn lb(server_group: &str, load_balancer: &str) -> String {
    format!(
        r#"
[[subnet]]
id = "vsw"
cidr = "198.19.1.0/24"
ipv6_cidr = "2001:db8:19:1::/64"
[[security_group]]
id = "sg-a"
[[instance]]
id = "ecs01"
subnet = "vsw"
addresses = ["198.19.1.11"]
security_groups = ["sg-a"]
[[server_group]]
id = "sgp"
{}[[load_balancer]]
id = "lb"
{}"#,
        text(server_group),
        text(load_balancer)
    )
}

const SERVER: &str = "[[server_group.server]]\ninstance = \"ecs01\"\nport = 80\n";
const TCP_LB: &str = "vips = [\"198.18.0.10\"]\nlocal_addresses = [\"198.19.1.250\"]\n[[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nserver_group = \"sgp\"\n";

#[test]
fn lb_fixture_is_valid() {
    let cfg = ok(&lb(SERVER, TCP_LB));
    assert_eq!(cfg.server_groups[0].servers[0].name, "ecs01");
    assert_eq!(
        cfg.server_groups[0].health_check,
        lb_core::model::HealthCheck::default()
    );
    assert_eq!(summary(&cfg), format!("ok: 0 ports, 1 security group (0 rules), 1 instance, 1 server group (1 server), 1 load balancer (1 listener), session tables {}", default_tables(1)));
}

#[test]
fn servers() {
    // Lines: the server group body starts on line 14.
    assert_eq!(
        errs(&lb(
            r#"
[[server_group.server]]
instance = "ecs01"
address = "198.19.1.11"
port = 80
[[server_group.server]]
port = 80
[[server_group.server]]
instance = "ecs01"
port = 0
weight = 101
[[server_group.server]]
address = "2001:db8:19:1::99"
port = 8080
[[server_group.server]]
address = "2001:db8:19:1:0::99"
port = 8080
"#,
            TCP_LB
        )),
        vec![
            "16:11: a server takes instance or address, not both",
            "18:1: a server needs instance = \"…\" or address = \"…\"",
            "22:8: port must be 1..=65535, got 0",
            "23:10: weight must be 0..=100, got 101",
            "28:11: server [2001:db8:19:1::99]:8080 is already in server group sgp (line 25)",
            "37:16: server [2001:db8:19:1::99]:8080 of server group sgp has only IPv6 addresses, but load balancer lb has no IPv6 local address to reach it",
        ]
    );
    let cfg = ok(&lb(
        "[[server_group.server]]\naddress = \"198.19.1.99\"\nport = 8080\nweight = 0\n",
        TCP_LB,
    ));
    let s = &cfg.server_groups[0].servers[0];
    assert_eq!(
        (s.name.as_str(), s.instance, s.weight),
        ("198.19.1.99:8080", None, 0)
    );
}

#[test]
fn health_checks() {
    let hc = |body: &str| {
        errs(&lb(
            &format!("[server_group.health_check]\n{}{SERVER}", text(body)),
            TCP_LB,
        ))
    };
    assert_eq!(
        hc("healthy_threshold = 0\nunhealthy_threshold = 11\ninterval_s = 0\ntimeout_s = 300.5\n"),
        vec![
            "15:21: healthy_threshold must be 1..=10, got 0",
            "16:23: unhealthy_threshold must be 1..=10, got 11",
            "17:14: interval_s must be greater than 0 and at most 300 seconds, got 0",
            "18:13: timeout_s must be greater than 0 and at most 300 seconds, got 300.5",
        ]
    );
    assert_eq!(
        hc("protocol = \"http\"\npath = \"health\"\nexpected_codes = [\"2xx\", \"600\", \"abc\"]\nport = 70000\n"),
        vec![
            "16:8: health check path \"health\" must start with '/'",
            "17:26: status code 600 is out of range 100..=599",
            "17:33: invalid status code \"abc\": expected e.g. \"2xx\", \"200\" or \"200-299\"",
            "18:8: health check port must be 1..=65535, got 70000",
        ]
    );
    assert_eq!(
        hc("path = \"/\"\n"),
        vec!["15:8: path applies to http health checks only, not tcp"]
    );
    let cfg = ok(&lb(
        &format!("[server_group.health_check]\nprotocol = \"http\"\npath = \"/ok\"\nexpected_codes = [\"200-204\", \"3xx\"]\ninterval_s = 0.5\ntimeout_s = 3\nport = 8080\n{SERVER}"),
        TCP_LB,
    ));
    let h = &cfg.server_groups[0].health_check;
    assert_eq!(h.protocol, HealthProtocol::Http);
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.port),
        (500, 3000, Some(8080))
    );
    assert_eq!(h.expected_codes, vec![(200, 204), (300, 399)]);
    assert_eq!(h.path, "/ok");
}

#[test]
fn health_check_must_match_listener_transport() {
    let udp_lb = TCP_LB.replace("\"tcp\"", "\"udp\"");
    assert_eq!(
        errs(&lb(&format!("[server_group.health_check]\nprotocol = \"http\"\n{SERVER}"), &udp_lb)),
        vec!["15:12: server group sgp serves udp listener lb:80 but its health check is http; a UDP listener needs a udp check"]
    );
    assert_eq!(
        errs(&lb(&format!("[server_group.health_check]\nprotocol = \"udp\"\n{SERVER}"), TCP_LB)),
        vec!["15:12: server group sgp serves tcp listener lb:80 but its health check is udp; a TCP listener needs a tcp or http check"]
    );
    // Without an explicit protocol a UDP-only group gets a UDP check.
    let cfg = ok(&lb(SERVER, &udp_lb));
    assert_eq!(
        cfg.server_groups[0].health_check.protocol,
        HealthProtocol::Udp
    );
    // A disabled check does not matter.
    assert!(errs(&lb(
        &format!("[server_group.health_check]\nenabled = false\nprotocol = \"http\"\n{SERVER}"),
        &udp_lb
    ))
    .is_empty());
    // Mixed TCP and UDP listeners on one group cannot share one check.
    let mixed = format!("{TCP_LB}[[load_balancer.listener]]\nprotocol = \"quic\"\nport = 443\nserver_group = \"sgp\"\n");
    assert_eq!(
        errs(&lb(SERVER, &mixed)),
        vec!["28:16: server group sgp serves quic listener lb:443 but its health check is tcp; a UDP listener needs a udp check (set health_check.protocol, or use separate server groups for TCP and UDP)"]
    );
}

#[test]
fn listeners() {
    let t = format!(
        "{TCP_LB}[[load_balancer.listener]]\nprotocol = \"http\"\nport = 80\nserver_group = \"sgp\"\n[[load_balancer.listener]]\nprotocol = \"udp\"\nport = 80\nserver_group = \"sgp\"\ntransfer_client_ip = true\n[[load_balancer.listener]]\nprotocol = \"https\"\nport = 0\nserver_group = \"sgp\"\nacl = {{ mode = \"whitelist\", prefix_list = \"pl-x\" }}\n"
    );
    assert_eq!(
        errs(&lb(SERVER, &t)),
        vec![
            "27:8: http listener on port 80 conflicts with the tcp listener on line 23 (both use TCP port 80)",
            "32:16: server group sgp serves udp listener lb:80 but its health check is tcp; a UDP listener needs a udp check (set health_check.protocol, or use separate server groups for TCP and UDP)",
            "36:8: listener port must be 1..=65535, got 0",
            "38:43: unknown prefix list pl-x",
        ]
    );
}

#[test]
fn vips_and_local_addresses() {
    assert_eq!(
        errs(&lb(
            SERVER,
            "vips = [\"198.18.0.10\", \"2001:db8:18::10\", \"198.19.1.11\"]\nlocal_addresses = [\"198.19.1.250\"]\n[[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nserver_group = \"sgp\"\n[[load_balancer]]\nid = \"lb2\"\nvips = [\"198.18.0.10\"]\nlocal_addresses = [\"198.19.1.250\"]\n"
        )),
        vec![
            "19:43: address 198.19.1.11 is already used by instance ecs01 (line 10)",
            "20:19: load balancer lb has an IPv6 VIP but no IPv6 local_addresses entry (the source address toward the backends; not needed only when every listener has transfer_client_ip = true)",
            "27:9: address 198.18.0.10 is already used by the vips of load balancer lb (line 19)",
            "28:20: address 198.19.1.250 is already used by the local_addresses of load balancer lb (line 20)",
        ]
    );
    // transfer_client_ip on every listener: no local address needed.
    assert!(errs(&lb(
        SERVER,
        "vips = [\"198.18.0.10\"]\n[[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nserver_group = \"sgp\"\ntransfer_client_ip = true\n"
    ))
    .is_empty());
    assert_eq!(
        errs(&lb(SERVER, "vips = []\n")),
        vec!["19:8: load balancer lb needs at least one VIP"]
    );
    assert_eq!(
        errs(&lb(SERVER, "vips = [\"198.18.0.10\"]\n[[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nserver_group = \"sgp\"\n")),
        vec!["19:8: load balancer lb has an IPv4 VIP but no IPv4 local_addresses entry (the source address toward the backends; not needed only when every listener has transfer_client_ip = true)"]
    );
}

#[test]
fn load_balancer_groups() {
    let groups: Vec<String> = (0..11).map(|i| format!("\"sg-{i}\"")).collect();
    let mut t = lb(
        SERVER,
        &TCP_LB.replace(
            "vips",
            &format!("security_groups = [{}]\nvips", groups.join(", ")),
        ),
    );
    for i in 0..11 {
        t.push_str(&format!("[[security_group]]\nid = \"sg-{i}\"\n"));
    }
    assert_eq!(
        errs(&t),
        vec!["19:19: load balancer lb has 11 security groups; at most 10 are allowed"]
    );
}

// ---------------------------------------------------------------- data plane

#[test]
fn dataplane_limits() {
    assert_eq!(
        errs("\n[dataplane]\nworkers = 65\ncores = [1, 1]\neal_args = [\"--no-huge\"]\n"),
        vec![
            "2:11: workers must be 1..=64, got 65",
            "3:13: core 1 is listed twice; pin each worker to its own core",
            "4:12: eal_args apply to io = \"dpdk\" only",
        ]
    );
    assert_eq!(
        errs("\n[dataplane]\nworkers = 2\ncores = [1]\n"),
        vec!["3:9: cores lists 1 core but workers = 2; give one core per worker, or none"]
    );
    let cfg = ok("\n[dataplane]\nworkers = 2\ncores = [1, 2]\nidle = \"busy\"\n");
    assert_eq!(cfg.dataplane.idle, lb_core::model::IdlePolicy::Busy);
    assert_eq!(ok("").dataplane, lb_core::model::Dataplane::default());
    assert_eq!(ok("").platform, lb_core::model::Platform::default());
}

#[test]
fn ports_and_routes() {
    assert_eq!(
        errs(
            r#"
[[port]]
name = "ext"
addresses = ["198.18.0.1", "198.18.0.1/24"]
dpdk_port = 0
[[port]]
name = "int"
interface = "lb-int"
addresses = ["198.18.0.1/24"]
[[route]]
destination = "0.0.0.0/0"
via = "198.19.0.254"
port = "ext"
[[route]]
destination = "::/0"
via = "198.18.0.254"
port = "ext"
"#
        ),
        vec![
            "1:1: port ext needs interface (the kernel interface io = \"af_packet\" uses)",
            "3:14: interface address 198.18.0.1 needs the prefix length of its link, e.g. 198.18.0.1/24",
            "4:13: dpdk_port applies to io = \"dpdk\" only; with af_packet use interface",
            "8:14: address 198.18.0.1 is already on port ext",
            "11:7: next hop 198.19.0.254 is not on a link of its port: port ext is on 198.18.0.0/24",
            "15:7: next hop 198.18.0.254 is IPv4 but destination ::/0 is IPv6",
        ]
    );
    assert_eq!(
        errs("\n[dataplane]\nio = \"dpdk\"\n[[port]]\nname = \"p0\"\ninterface = \"eth0\"\n"),
        vec![
            "3:1: port p0 needs dpdk_port (the ethdev port io = \"dpdk\" uses)",
            "5:13: interface applies to io = \"af_packet\" only; with dpdk use dpdk_port",
        ]
    );
    let cfg = ok("\n[dataplane]\nio = \"dpdk\"\n[[port]]\nname = \"p0\"\ndpdk_port = 1\naddresses = [\"198.18.0.1/24\", \"2001:db8:18:0::1/64\"]\n[[route]]\ndestination = \"198.19.0.0/16\"\nvia = \"198.18.0.254\"\nport = \"p0\"\n");
    assert_eq!(cfg.ports[0].dpdk_port, Some(1));
    assert_eq!(cfg.ports[0].addresses[1].to_string(), "2001:db8:18::1/64");
    assert_eq!(cfg.routes[0].port, 0);
}

#[test]
fn platform() {
    assert_eq!(
        errs("\n[platform]\nsession_timeout_s = 0\nmetadata_address = \"100.100.100.200/32\"\n"),
        vec![
            "2:21: session_timeout_s must be 1..=432000, got 0",
            "3:20: 100.100.100.200/32 must be a plain address without a prefix length (e.g. 100.100.100.200)",
        ]
    );
    let cfg = ok("\n[platform]\nbackend_sg_policy = \"enforce\"\nrestrict_smtp = false\n");
    assert_eq!(
        cfg.platform.backend_sg_policy,
        lb_core::model::BackendSgPolicy::Enforce
    );
    assert!(!cfg.platform.restrict_smtp);
}

// ---------------------------------------------------------------- whole files

#[test]
fn many_errors_are_all_reported_in_order() {
    let e = parse_str(include_str!("../../examples/bad.toml"), "bad.toml")
        .expect_err("bad.toml is bad");
    assert_eq!(
        e.to_string(),
        "bad.toml:20:1: unknown field `colour`, expected one of `id`, `cidr`, `ipv6_cidr`, `network_acl`\n\
         bad.toml:22:8: 198.19.1.5/24 has host bits set; did you mean 198.19.1.0/24?\n\
         bad.toml:30:12: priority must be 1..=100, got 0\n\
         bad.toml:32:14: port range -1/-1 is for protocols without ports; for all tcp ports write \"1/65535\"\n\
         bad.toml:33:10: unknown security group sg-nope"
    );
}

#[test]
fn load_reports_io_errors_at_1_1() {
    let e = load(std::path::Path::new("/nonexistent/lb.toml")).expect_err("no such file");
    assert_eq!(e.0.len(), 1);
    assert_eq!(
        (e.0[0].path.as_str(), e.0[0].line, e.0[0].col),
        ("/nonexistent/lb.toml", 1, 1)
    );
    assert!(
        e.0[0]
            .message
            .starts_with("cannot read the configuration: "),
        "{}",
        e.0[0].message
    );
}

#[test]
fn load_reads_the_examples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in [
        "alb-seed.toml",
        "alb-seed-deny81.toml",
        "alb-seed-deny80-81.toml",
        "vpc.toml",
        "bare-metal-2port.toml",
    ] {
        if let Err(e) = load(&dir.join(name)) {
            panic!("{e}");
        }
    }
}

#[test]
fn alb_seed() {
    let cfg = ok(include_str!("../../examples/alb-seed.toml"));
    assert_eq!(
        summary(&cfg),
        format!("ok: 2 ports, 1 security group (2 rules), 2 instances, 1 server group (2 servers), 1 load balancer (2 listeners), session tables {}", default_tables(1))
    );
    let lb = &cfg.load_balancers[0];
    assert!(lb.security_groups.is_empty());
    assert_eq!(
        lb.listeners.iter().map(|l| l.port).collect::<Vec<_>>(),
        vec![80, 81]
    );
    let rules = &cfg.security_groups[0].rules;
    assert_eq!(
        rules.iter().map(|r| r.line).collect::<Vec<_>>(),
        vec![38, 47]
    );
}

#[test]
fn alb_seed_steps_6_and_7() {
    use lb_core::model::Action::{Allow, Deny};
    for (text, want) in [
        (
            include_str!("../../examples/alb-seed-deny81.toml"),
            [(Allow, 80), (Allow, 80), (Deny, 81), (Deny, 81)],
        ),
        (
            include_str!("../../examples/alb-seed-deny80-81.toml"),
            [(Deny, 80), (Deny, 80), (Deny, 81), (Deny, 81)],
        ),
    ] {
        let cfg = ok(text);
        let lb = &cfg.load_balancers[0];
        let g = &cfg.security_groups[lb.security_groups[0]];
        assert_eq!(g.id, "sg-alb");
        let got: Vec<_> = g.rules.iter().map(|r| (r.action, r.ports[0].lo)).collect();
        assert_eq!(got, want);
        assert!(g.rules.iter().all(|r| r.priority == 1));
    }
}

#[test]
fn vpc_example() {
    let cfg = ok(include_str!("../../examples/vpc.toml"));
    assert_eq!(
        summary(&cfg),
        format!("ok: 2 ports, 3 security groups (11 rules), 1 network ACL (2 rules), 4 instances, 1 server group (2 servers), 1 load balancer (2 listeners), session tables {}", default_tables(2))
    );
    let db = cfg
        .security_groups
        .iter()
        .find(|g| g.id == "sg-db")
        .expect("sg-db");
    assert_eq!(db.rules[0].peer, Peer::Group(1));
    // sg-app's egress rule toward the database names sg-db.
    let app = &cfg.security_groups[1];
    assert!(app.rules.iter().any(|r| r.peer == Peer::Group(2)));
    assert_eq!(cfg.subnets[1].network_acl, Some(0));
}

mod prop {
    use proptest::prelude::*;

    const EXAMPLES: [&str; 3] = [
        include_str!("../../examples/alb-seed.toml"),
        include_str!("../../examples/vpc.toml"),
        include_str!("../../examples/bad.toml"),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Mutated examples never panic, and every diagnostic has a position
        /// inside the text, in order.
        #[test]
        fn parse_never_panics(
            which in 0..EXAMPLES.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..4u8, "[ -~\n]{0,6}"), 1..6),
        ) {
            let mut t = EXAMPLES[which].to_string();
            for (at, kind, s) in edits {
                let mut i = at.index(t.len() + 1);
                while !t.is_char_boundary(i) {
                    i -= 1;
                }
                match kind {
                    0 => t.insert_str(i, &s),
                    1 => {
                        let mut end = (i + s.len().max(1)).min(t.len());
                        while !t.is_char_boundary(end) {
                            end -= 1;
                        }
                        t.replace_range(i..end, "");
                    }
                    2 => {
                        let mut end = (i + s.len()).min(t.len());
                        while !t.is_char_boundary(end) {
                            end -= 1;
                        }
                        t.replace_range(i..end, &s);
                    }
                    _ => {
                        // Swap a digit for another number, to hit limits.
                        if let Some(p) = t[i..].find(|c: char| c.is_ascii_digit()) {
                            t.replace_range(i + p..i + p + 1, "0");
                        }
                    }
                }
            }
            let lines = t.lines().count().max(1);
            if let Err(e) = crate::parse_str(&t, "m.toml") {
                prop_assert!(!e.0.is_empty());
                for d in &e.0 {
                    prop_assert!(d.line >= 1 && d.line <= lines + 1, "{d}");
                    prop_assert!(d.col >= 1, "{d}");
                }
                // Sorted by position.
                let positions: Vec<(usize, usize)> = e.0.iter().map(|d| (d.line, d.col)).collect();
                let mut sorted = positions.clone();
                sorted.sort_unstable();
                prop_assert_eq!(positions, sorted);
            }
        }
    }
}

#[test]
fn a_broken_subnet_does_not_cascade() {
    assert_eq!(
        errs(&GROUP_HEAD.replace("198.19.1.0/24", "198.19.1.0/33")),
        vec!["3:8: \"198.19.1.0/33\" is not an IP address or CIDR"]
    );
}

#[test]
fn duplicate_port_names() {
    assert_eq!(
        errs("\n[[port]]\nname = \"ext\"\ninterface = \"a\"\n[[port]]\nname = \"ext\"\ninterface = \"a\"\n"),
        vec![
            "5:8: duplicate port name ext (first defined on line 2)",
            "6:13: interface a is already used by the port on line 3",
        ]
    );
}

#[test]
fn port_addresses_are_not_instance_addresses() {
    let t = format!(
        "[[port]]\nname = \"int\"\ninterface = \"lb-int\"\naddresses = [\"198.19.1.11/24\", \"198.19.1.250/24\"]\n{}",
        lb(SERVER, TCP_LB)
    );
    // The instance may not take the port's address; the load balancer's
    // local address may.
    assert_eq!(
        errs(&t),
        vec!["15:14: address 198.19.1.11 is already used by port int (line 4)"]
    );
}

#[test]
fn duplicate_keys_are_syntax_errors() {
    assert_eq!(
        errs("\n[[subnet]]\nid = \"a\"\nid = \"b\"\ncidr = \"198.19.1.0/24\"\n"),
        vec!["3:1: duplicate key"]
    );
}

#[test]
fn more_data_plane_checks() {
    assert_eq!(
        errs(
            r#"
[dataplane]
io = "dpdk"
[[port]]
name = "a b"
dpdk_port = 0
addresses = ["198.18.0.1/24"]
[[port]]
name = "p1"
dpdk_port = 0
[[route]]
destination = "198.20.0.0/16"
via = "198.18.0.254"
port = "a b"
[[route]]
destination = "198.20.0.0/16"
port = "a b"
"#
        ),
        vec![
            "4:8: port name \"a b\" must be non-empty and contain no whitespace",
            "9:13: dpdk_port 0 is already used by the port on line 5",
            "15:15: a route to 198.20.0.0/16 is already defined on line 11",
        ]
    );
    assert_eq!(
        errs("\n[[port]]\nname = \"p\"\ninterface = \"eth0:1\"\n"),
        vec!["3:13: \"eth0:1\" is not a valid interface name"]
    );
}

#[test]
fn more_health_check_checks() {
    let hc = |body: &str| {
        errs(&lb(
            &format!("[server_group.health_check]\n{}{SERVER}", text(body)),
            TCP_LB,
        ))
    };
    assert_eq!(
        hc("protocol = \"http\"\npath = \"/a b\"\nexpected_codes = []\ninterval_s = 0.0001\n"),
        vec![
            "16:8: health check path \"/a b\" must not contain spaces or control characters",
            "17:18: expected_codes must list at least one status code",
            "18:14: interval_s must be at least 0.001 seconds, got 0.0001",
        ]
    );
    assert_eq!(
        hc("expected_codes = [\"2xx\"]\n"),
        vec!["15:18: expected_codes applies to http health checks only, not tcp"]
    );
}

#[test]
fn transparent_listeners_reach_servers_from_their_vips() {
    let server6 = "[[server_group.server]]\naddress = \"2001:db8:19:1::99\"\nport = 80\n";
    assert_eq!(
        errs(&lb(
            server6,
            "vips = [\"198.18.0.10\"]\n[[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nserver_group = \"sgp\"\ntransfer_client_ip = true\n"
        )),
        vec!["23:16: server [2001:db8:19:1::99]:80 of server group sgp has only IPv6 addresses, but load balancer lb has no IPv6 VIP to reach it"]
    );
}

#[test]
fn max_sessions_per_worker() {
    assert_eq!(
        ok("[dataplane]\nmax_sessions = 65536\n")
            .dataplane
            .max_sessions,
        65536
    );
    assert_eq!(
        ok("[dataplane]\nworkers = 2\n").dataplane.max_sessions,
        1 << 20
    );
    assert_eq!(
        errs("[dataplane]\nmax_sessions = 10\n"),
        vec!["2:16: max_sessions must be 1024..=67108864, got 10"]
    );
    // IPv6 sessions have a table of their own: a quarter of the IPv4 one
    // unless set.
    let d = ok("[dataplane]\nmax_sessions = 65536\n").dataplane;
    assert_eq!(d.max_sessions_v6, 16384);
    assert_eq!(ok("").dataplane.max_sessions_v6, 1 << 18);
    assert_eq!(
        ok("[dataplane]\nmax_sessions = 2048\n")
            .dataplane
            .max_sessions_v6,
        1024
    );
    let d = ok("[dataplane]\nmax_sessions = 4096\nmax_sessions_v6 = 1048576\n").dataplane;
    assert_eq!((d.max_sessions, d.max_sessions_v6), (4096, 1 << 20));
    assert_eq!(
        errs("[dataplane]\nmax_sessions_v6 = 1000\n"),
        vec!["2:19: max_sessions_v6 must be 1024..=67108864, got 1000"]
    );
}

#[test]
fn at_most_65535_servers_in_a_group() {
    let group = |n: usize| {
        let mut t = String::from("[[server_group]]\nid = \"big\"\nserver = [\n");
        for i in 0..n {
            let (host, port) = (1 + i / 65535, 1 + i % 65535);
            t.push_str(&format!(
                "{{ address = \"198.18.0.{host}\", port = {port} }},\n"
            ));
        }
        t.push_str("]\n");
        t
    };
    assert_eq!(errs(&group(65535)), Vec::<String>::new());
    assert_eq!(
        errs(&group(65536)),
        vec!["65539:1: at most 65535 servers in server group big"]
    );
}

// ---------------------------------------------------------------- port checks

#[test]
fn port_source_check_and_vlan() {
    let port = |extra: &str| format!("\n[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\n{extra}");
    let cfg = ok(&port(""));
    assert_eq!(
        cfg.ports[0].source_check,
        lb_core::model::SourceCheck::Strict
    );
    assert_eq!(cfg.ports[0].vlan, None);
    let cfg = ok(&port("source_check = \"loose\"\nvlan = 4094\n"));
    assert_eq!(
        cfg.ports[0].source_check,
        lb_core::model::SourceCheck::Loose
    );
    assert_eq!(cfg.ports[0].vlan, Some(4094));
    let cfg = ok(&port("source_check = \"off\"\nvlan = 1\n"));
    assert_eq!(cfg.ports[0].source_check, lb_core::model::SourceCheck::Off);
    assert_eq!(cfg.ports[0].vlan, Some(1));
    assert_eq!(
        errs(&port("source_check = \"rpf\"\n")),
        vec!["4:16: unknown variant `rpf`, expected one of `strict`, `loose`, `off`"]
    );
    assert_eq!(
        errs(&port("vlan = 0\n")),
        vec!["4:8: vlan must be 1..=4094, got 0"]
    );
    assert_eq!(
        errs(&port("vlan = 4095\n")),
        vec!["4:8: vlan must be 1..=4094, got 4095"]
    );
}

// ---------------------------------------------------------------- sanity

/// `lb(SERVER, …)` with these VIPs: the VIP list is on line 19, column 9.
fn vips(list: &str) -> Vec<String> {
    errs(&lb(
        SERVER,
        &format!("vips = {list}\nlocal_addresses = [\"198.19.1.250\", \"2001:db8:19:1::250\"]\n[[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nserver_group = \"sgp\"\n"),
    ))
}

#[test]
fn a_vip_is_a_host_address() {
    assert_eq!(
        vips("[\"198.18.0.10\", \"2001:db8:18::10\"]"),
        Vec::<String>::new()
    );
    let cases = [
        ("0.0.0.0", "the unspecified address"),
        ("0.1.2.3", "in 0.0.0.0/8 (\"this network\")"),
        ("255.255.255.255", "the limited broadcast address"),
        ("127.0.0.1", "a loopback address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("::", "the unspecified address"),
        ("::1", "the loopback address"),
        ("ff02::1", "a multicast address"),
        ("ff05::2", "a multicast address"),
        (
            "::ffff:198.18.0.10",
            "an IPv4-mapped address (write the IPv4 address)",
        ),
    ];
    for (vip, why) in cases {
        assert_eq!(
            vips(&format!("[\"{vip}\"]")),
            vec![format!(
                "19:9: VIP {vip} of load balancer lb is {why}, not a host address"
            )],
            "{vip}"
        );
    }
}

#[test]
fn a_vip_is_not_a_subnets_network_or_broadcast_address() {
    for vip in ["198.19.1.0", "198.19.1.255"] {
        assert_eq!(
            vips(&format!("[\"{vip}\"]")),
            vec![format!("19:9: VIP {vip} of load balancer lb is the network or broadcast address of subnet vsw (198.19.1.0/24), not a host address")]
        );
    }
    assert_eq!(
        vips("[\"2001:db8:19:1::\"]"),
        vec!["19:9: VIP 2001:db8:19:1:: of load balancer lb is the network (subnet-router anycast) address of subnet vsw (2001:db8:19:1::/64), not a host address"]
    );
}

#[test]
fn a_vip_is_not_a_neighbours_address() {
    // An instance's address (reported before; still refused).
    assert_eq!(
        vips("[\"198.19.1.11\"]"),
        vec!["19:9: address 198.19.1.11 is already used by instance ecs01 (line 10)"]
    );
    assert_eq!(
        vips("[\"100.100.100.200\"]"),
        vec!["19:9: VIP 100.100.100.200 of load balancer lb is the platform's metadata address (the default)"]
    );
    let with_route = |vip: &str| {
        errs(&format!(
            "[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\naddresses = [\"198.18.0.1/24\"]\n[[route]]\ndestination = \"0.0.0.0/0\"\nvia = \"198.18.0.254\"\nport = \"ext\"\n{}",
            lb(SERVER, &format!("vips = [\"{vip}\"]\nlocal_addresses = [\"198.19.1.250\"]\n"))
        ))
    };
    assert_eq!(with_route("198.18.0.10"), Vec::<String>::new());
    // The port's own address may double as a VIP.
    assert_eq!(with_route("198.18.0.1"), Vec::<String>::new());
    assert_eq!(
        with_route("198.18.0.254"),
        vec!["28:9: VIP 198.18.0.254 of load balancer lb is the next hop of the route on line 7, a neighbour's address"]
    );
}

#[test]
fn a_server_is_another_host() {
    let server = |addr: &str| {
        errs(&lb(
            &format!("[[server_group.server]]\naddress = \"{addr}\"\nport = 80\n"),
            TCP_LB,
        ))
    };
    assert_eq!(server("198.19.1.12"), Vec::<String>::new());
    assert_eq!(
        server("198.18.0.10"),
        vec!["15:11: server 198.18.0.10 of server group sgp is also the VIP 198.18.0.10 of load balancer lb (line 19); a server must be another host"]
    );
    assert_eq!(
        server("198.19.1.250"),
        vec!["15:11: server 198.19.1.250 of server group sgp is also the local address 198.19.1.250 of load balancer lb (line 20); a server must be another host"]
    );
    assert_eq!(
        server("224.0.0.5"),
        vec!["15:11: server 224.0.0.5 of server group sgp is a multicast address, not a host address"]
    );
    assert_eq!(
        server("198.19.1.255"),
        vec!["15:11: server 198.19.1.255 of server group sgp is the network or broadcast address of subnet vsw (198.19.1.0/24), not a host address"]
    );
    assert_eq!(
        errs(&format!(
            "[[port]]\nname = \"int\"\ninterface = \"lb-int\"\naddresses = [\"198.19.1.1/24\"]\n{}",
            lb(
                "[[server_group.server]]\naddress = \"198.19.1.1\"\nport = 80\n",
                TCP_LB
            )
        )),
        vec!["20:11: server 198.19.1.1 of server group sgp is also the address 198.19.1.1 of port int (line 4); a server must be another host"]
    );
}

#[test]
fn a_port_address_is_a_host_on_a_real_link() {
    let port = |addr: &str| {
        errs(&format!(
            "[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\naddresses = [\"{addr}\"]\n"
        ))
    };
    assert_eq!(port("198.18.0.1/24"), Vec::<String>::new());
    assert_eq!(port("198.18.0.1/32"), Vec::<String>::new());
    assert_eq!(
        port("0.0.0.0/0"),
        vec!["4:14: address 0.0.0.0 of port ext is the unspecified address, not a host address"]
    );
    assert_eq!(
        port("::/0"),
        vec!["4:14: address :: of port ext is the unspecified address, not a host address"]
    );
    assert_eq!(
        port("198.18.0.1/0"),
        vec!["4:14: address 198.18.0.1/0 of port ext has prefix length 0, which puts every address on its link; give the link's prefix (e.g. /24 or /64)"]
    );
    assert_eq!(
        port("198.18.0.0/24"),
        vec!["4:14: address 198.18.0.0 of port ext is the network or broadcast address of port ext (198.18.0.0/24), not a host address"]
    );
    assert_eq!(
        port("127.0.0.1/8"),
        vec!["4:14: address 127.0.0.1 of port ext is a loopback address, not a host address"]
    );
}

#[test]
fn a_next_hop_is_another_host() {
    let route = |via: &str| {
        errs(&format!(
            "[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\naddresses = [\"198.18.0.1/24\"]\n[[route]]\ndestination = \"0.0.0.0/0\"\nvia = \"{via}\"\nport = \"ext\"\n"
        ))
    };
    assert_eq!(route("198.18.0.254"), Vec::<String>::new());
    assert_eq!(
        route("198.18.0.1"),
        vec!["7:7: next hop 198.18.0.1 is our own address 198.18.0.1 of port ext (line 4); a next hop is another host"]
    );
    assert_eq!(
        route("198.18.0.255"),
        vec!["7:7: next hop 198.18.0.255 is the network or broadcast address of port ext (198.18.0.0/24), not a host address"]
    );
}

#[test]
fn session_timeout_is_bounded() {
    assert_eq!(
        ok("[platform]\nsession_timeout_s = 432000\n")
            .platform
            .session_timeout_s,
        MAX_SESSION_TIMEOUT_S
    );
    assert_eq!(
        errs("[platform]\nsession_timeout_s = 4294967295\n"),
        vec!["2:21: session_timeout_s must be 1..=432000, got 4294967295"]
    );
    assert_eq!(
        errs("[platform]\nsession_timeout_s = 432001\n"),
        vec!["2:21: session_timeout_s must be 1..=432000, got 432001"]
    );
}

#[test]
fn session_tables_are_estimated_and_bounded() {
    use lb_core::conntrack::SessionTable;
    use lb_core::pipeline::{Flow, Worker};
    let (b4, b6) = (
        SessionTable::<Flow>::session_bytes(false),
        SessionTable::<Flow>::session_bytes(true),
    );
    // What the pipeline's tables take today.
    assert_eq!((b4, b6), (176, 240));
    // And with the SYN proxy's sequence offsets, what a worker commits.
    let (b4, b6) = (
        Worker::session_table_bytes(1, 0),
        Worker::session_table_bytes(0, 1),
    );
    assert_eq!((b4, b6), (180, 244));
    // The default tables of 64 workers fit the default bound.
    let cfg = ok("[dataplane]\nworkers = 64\n");
    assert_eq!(
        session_memory(&cfg),
        64 * Worker::session_table_bytes(1 << 20, 1 << 18)
    );
    assert_eq!(human_bytes(session_memory(&cfg)), "15 GiB");
    // 64 workers × 67 M sessions of each family: 1.7 TiB.
    let big = 1u64 << 26;
    let total = 64 * big * (b4 + b6);
    assert_eq!(
        errs("[dataplane]\nworkers = 64\nmax_sessions = 67108864\nmax_sessions_v6 = 67108864\n"),
        vec![format!(
            "3:16: the session tables would take {} (64 workers × (67108864 IPv4 sessions × {b4} B + 67108864 IPv6 sessions × {b6} B)), more than the default max_memory_mib of 32768 MiB; lower workers, max_sessions or max_sessions_v6, or raise max_memory_mib",
            human_bytes(total)
        )]
    );
    assert_eq!(human_bytes(total), "1.7 TiB");
    // Only workers set: the error points at it.
    assert_eq!(
        errs("[dataplane]\nworkers = 64\nmax_memory_mib = 4096\n")[0]
            .split(": the session tables")
            .next(),
        Some("2:11")
    );
    // A larger bound admits the tables.
    let cfg = ok("[dataplane]\nworkers = 64\nmax_sessions = 67108864\nmax_sessions_v6 = 67108864\nmax_memory_mib = 16777216\n");
    assert_eq!(session_memory(&cfg), total);
    assert_eq!(
        errs("[dataplane]\nmax_memory_mib = 0\n"),
        vec!["2:18: max_memory_mib must be 1..=16777216, got 0"]
    );
    // The bound counts every byte: one worker's default tables need 241 MiB.
    let one = Worker::session_table_bytes(1 << 20, 1 << 18);
    let mib = i64::try_from(one.div_ceil(1 << 20)).expect("small");
    assert_eq!(
        errs(&format!("[dataplane]\nmax_memory_mib = {}\n", mib - 1)).len(),
        1
    );
    assert!(errs(&format!("[dataplane]\nmax_memory_mib = {mib}\n")).is_empty());
}

#[test]
fn duplicate_rules_are_found_in_one_pass() {
    use lb_core::model::{Action, Direction, Rule};
    let rule = |i: u32| Rule {
        direction: Direction::Ingress,
        action: Action::Allow,
        priority: 1,
        protocol: Some(6),
        ports: vec![PortRange::single(80)],
        port_list: None,
        peer: Peer::Cidr(IpNet::from(IpAddr::from(
            (0xc612_0000u32 + i).to_be_bytes(),
        ))),
        local: None,
        source_ports: PortRange::ANY,
        description: String::new(),
        line: i + 1,
    };
    let n: u32 = 200_000;
    let mut rules: Vec<Rule> = (0..n).map(rule).collect();
    rules.push(rule(7));
    rules.push(rule(n - 1));
    let mut other_action = rule(5);
    other_action.action = Action::Deny;
    rules.push(other_action);
    let started = std::time::Instant::now();
    let dups = crate::compile::duplicate_rules(&rules);
    let took = started.elapsed();
    assert_eq!(dups, vec![(200_000, 8), (200_001, 200_000)]);
    // Quadratic, this took 13.9 s in release (2 * 10^10 comparisons);
    // in one pass it takes milliseconds, even unoptimised.
    assert!(
        took < std::time::Duration::from_secs(10),
        "200 k rules checked for duplicates in {took:?}"
    );
}

#[test]
fn duplicate_rules_through_a_file() {
    let mut t = String::from("[[security_group]]\nid = \"sg-big\"\n");
    for i in 0..3000u32 {
        t.push_str(&format!(
            "[[security_group.rule]]\ndirection = \"ingress\"\naction = \"allow\"\nprotocol = \"tcp\"\nport_range = \"{p}/{p}\"\nsource = \"198.18.0.0/16\"\n",
            p = 1 + i % 2000
        ));
    }
    let e = errs(&t);
    assert_eq!(e.len(), 1000);
    // Rule 2000 (line 3 + 2000 * 6) repeats rule 0 (line 3).
    assert_eq!(e[0], "12003:1: this rule duplicates the rule on line 3");
}

// ---------------------------------------------------------------- files

/// A scratch directory of this test process, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lb-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(path: &std::path::Path) -> String {
    let started = std::time::Instant::now();
    let e = load(path).expect_err("refused").to_string();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{}: refused only after {:?}",
        path.display(),
        started.elapsed()
    );
    e
}

#[test]
fn only_regular_files_are_read() {
    assert_eq!(
        load_err(std::path::Path::new("/dev/zero")),
        "/dev/zero:1:1: the configuration must be a regular file, not a character device"
    );
    let s = Scratch::new("special");
    assert_eq!(
        load_err(&s.0),
        format!(
            "{}:1:1: the configuration must be a regular file, not a directory",
            s.0.display()
        )
    );
    // A pipe is refused without waiting for a writer.
    let fifo = s.0.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success());
    assert_eq!(
        load_err(&fifo),
        format!(
            "{}:1:1: the configuration must be a regular file, not a pipe",
            fifo.display()
        )
    );
    // A symbolic link to a regular file is followed.
    let real = s.0.join("real.toml");
    std::fs::write(&real, "[platform]\n").expect("write");
    let link = s.0.join("link.toml");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    assert!(load(&link).is_ok());
    // And one to a device is not.
    let zero = s.0.join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    assert!(load_err(&zero).ends_with("not a character device"));
}

#[test]
fn files_over_the_size_limit_are_not_read() {
    let s = Scratch::new("size");
    let big = s.0.join("big.toml");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(MAX_FILE_BYTES + 1).expect("a sparse file");
    drop(f);
    assert_eq!(
        load_err(&big),
        format!(
            "{}:1:1: the configuration file is 67108865 bytes; at most 67108864 (64 MiB) are read",
            big.display()
        )
    );
}

#[test]
fn an_empty_file_is_refused() {
    let s = Scratch::new("empty");
    for (name, text) in [
        ("empty.toml", ""),
        ("blank.toml", "\n  \n\t\n"),
        ("comments.toml", "# lbd configuration\n\n   # nothing yet\n"),
    ] {
        let p = s.0.join(name);
        std::fs::write(&p, text).expect("write");
        assert_eq!(
            load_err(&p),
            format!(
                "{}:1:1: the configuration is empty (only whitespace and comments); an empty file is refused rather than taken as a configuration with no ports, groups or load balancers",
                p.display()
            )
        );
    }
    // A file with one table is a configuration (every default).
    let p = s.0.join("defaults.toml");
    std::fs::write(&p, "# defaults\n[platform]\n").expect("write");
    assert!(load(&p).is_ok());
}

// ---------------------------------------------------------------- scale

mod overlap {
    use ipnet::IpNet;
    use proptest::prelude::*;

    use crate::compile::CidrSet;

    /// The first CIDR of `earlier` that overlaps `net`, by a scan.
    fn scan(earlier: &[IpNet], net: &IpNet) -> bool {
        earlier
            .iter()
            .any(|o| o.contains(&net.network()) || net.contains(&o.network()))
    }

    fn v4(a: u32, len: u8) -> IpNet {
        IpNet::new(std::net::Ipv4Addr::from(a).into(), len)
            .expect("prefix <= 32")
            .trunc()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The set finds an overlap exactly when a scan does, and what it
        /// names does overlap.
        #[test]
        fn same_as_a_scan(
            nets in proptest::collection::vec((0u32..64, 0u8..=8), 1..40),
        ) {
            // Few distinct values in the top byte make overlaps common.
            let nets: Vec<IpNet> = nets.into_iter().map(|(a, l)| v4(a << 26, l)).collect();
            let mut set = CidrSet::default();
            for (i, n) in nets.iter().enumerate() {
                let found = set.overlapping(n);
                prop_assert_eq!(found.is_some(), scan(&nets[..i], n), "{} after {:?}", n, &nets[..i]);
                if let Some((o, _)) = found {
                    prop_assert!(o.contains(&n.network()) || n.contains(&o.network()));
                }
                set.insert(*n, "s");
            }
        }
    }

    #[test]
    fn twenty_thousand_subnets_without_a_scan() {
        let nets: Vec<IpNet> = (0..20_000u32)
            .map(|i| v4(0x0a00_0000 + (i << 8), 24))
            .collect();
        let started = std::time::Instant::now();
        let mut set = CidrSet::default();
        for n in &nets {
            assert!(set.overlapping(n).is_none());
            set.insert(*n, "s");
        }
        assert!(set.overlapping(&v4(0x0a00_0000, 8)).is_some());
        assert!(set.overlapping(&v4(0x0a01_0203, 32)).is_some());
        let took = started.elapsed();
        // A scan of the earlier subnets (2 * 10^8 comparisons) took 110 s
        // here unoptimised.
        assert!(
            took < std::time::Duration::from_secs(10),
            "20 k subnets checked for overlaps in {took:?}"
        );
    }
}

#[test]
fn port_list_duplicates_in_one_pass() {
    let mut t = String::from("[[port_list]]\nid = \"big\"\nmax_entries = 70000\nentries = [\n");
    for p in 1..=65535u32 {
        t.push_str(&format!("\"{p}/{p}\",\n"));
    }
    t.push_str("\"80/80\",\n]\n");
    let started = std::time::Instant::now();
    assert_eq!(errs(&t), vec!["65540:1: 80/80 is listed twice"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn port_max_neighbors() {
    let port = |extra: &str| format!("\n[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\n{extra}");
    assert_eq!(
        ok(&port("")).ports[0].max_neighbors,
        lb_core::model::Port::DEFAULT_MAX_NEIGHBORS
    );
    assert_eq!(
        ok(&port("max_neighbors = 4096\n")).ports[0].max_neighbors,
        4096
    );
    assert_eq!(
        errs(&port("max_neighbors = 8\n")),
        vec!["4:17: max_neighbors must be 16..=65536, got 8"]
    );
    assert_eq!(
        errs(&port("max_neighbors = 100000\n")),
        vec!["4:17: max_neighbors must be 16..=65536, got 100000"]
    );
}

#[test]
fn tcp_hardening_settings() {
    let cfg = ok("\n[platform]\nunreplied_timeout_s = 45\n[dataplane]\nreset_unknown = false\nreset_unknown_rate = 50\n");
    assert_eq!(cfg.platform.unreplied_timeout_s, 45);
    assert!(!cfg.dataplane.reset_unknown);
    assert_eq!(cfg.dataplane.reset_unknown_rate, 50);
    let cfg = ok("");
    assert_eq!(cfg.platform.unreplied_timeout_s, 30);
    assert!(cfg.dataplane.reset_unknown);
    assert_eq!(cfg.dataplane.reset_unknown_rate, 1000);
    assert_eq!(
        errs("\n[platform]\nunreplied_timeout_s = 0\n[dataplane]\nreset_unknown_rate = 0\n"),
        vec![
            "2:23: unreplied_timeout_s must be 1..=86400, got 0",
            "4:22: reset_unknown_rate must be 1..=1000000, got 0",
        ]
    );
}

#[test]
fn listener_limits() {
    let lb = |extra: &str| {
        format!(
            "\n[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\naddresses = [\"198.18.0.1/24\"]\n\
             [[server_group]]\nid = \"g\"\n[[server_group.server]]\naddress = \"198.18.0.11\"\nport = 80\n\
             [[load_balancer]]\nid = \"lb\"\nvips = [\"198.18.0.10\"]\nlocal_addresses = [\"198.18.0.250\"]\n\
             [[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nserver_group = \"g\"\n{extra}"
        )
    };
    let cfg = ok(&lb(""));
    assert!(!cfg.load_balancers[0].listeners[0].limits.is_limited());
    let cfg = ok(&lb(
        "max_connections = 1000\nmax_new_connections_per_s = 200\n",
    ));
    let l = cfg.load_balancers[0].listeners[0].limits;
    assert_eq!(
        (l.max_connections, l.max_new_connections_per_s),
        (Some(1000), Some(200))
    );
    assert_eq!(
        errs(&lb(
            "max_connections = 0\nmax_new_connections_per_s = 100000000\n"
        )),
        vec![
            "18:19: max_connections must be 1..=100000000, got 0",
            "19:29: max_new_connections_per_s must be 1..=10000000, got 100000000",
        ]
    );
}

#[test]
fn fragment_settings() {
    let cfg = ok("");
    assert_eq!(
        cfg.dataplane.fragments,
        lb_core::model::Fragments::default()
    );
    assert!(cfg.dataplane.fragments.forward);
    let cfg = ok("\n[dataplane.fragments]\nforward = false\ntable = 1024\ntimeout_ms = 500\nhold = 0\nhold_ms = 20\n");
    let f = cfg.dataplane.fragments;
    assert_eq!(
        (f.forward, f.table, f.timeout_ms, f.hold, f.hold_ms),
        (false, 1024, 500, 0, 20)
    );
    // Held no longer than an entry lives.
    assert_eq!(
        ok("\n[dataplane.fragments]\ntimeout_ms = 50\n")
            .dataplane
            .fragments
            .hold_ms,
        50
    );
    assert_eq!(
        errs("\n[dataplane.fragments]\ntable = 4\ntimeout_ms = 100\nhold = 5000\nhold_ms = 200\nsize = 1\n"),
        vec![
            "2:9: table must be 8..=1048576, got 4",
            "4:8: hold must be 0..=4096, got 5000",
            "5:11: hold_ms (at most timeout_ms) must be 1..=100, got 200",
            "6:1: unknown field `size`, expected one of `forward`, `table`, `timeout_ms`, `hold`, `hold_ms`",
        ]
    );
}

#[test]
fn syn_proxy_settings() {
    use lb_core::model::{SynProxyMode, DEFAULT_SYN_PROXY_THRESHOLD};
    // Default: "auto" at the default threshold.
    let l = &ok(&lb(SERVER, TCP_LB)).load_balancers[0].listeners[0];
    assert_eq!(
        (l.syn_proxy, l.syn_proxy_threshold),
        (SynProxyMode::Auto, DEFAULT_SYN_PROXY_THRESHOLD)
    );
    let with = |extra: &str| lb(SERVER, &format!("{TCP_LB}{extra}"));
    let l = &ok(&with("syn_proxy = \"on\"\n")).load_balancers[0].listeners[0];
    assert_eq!(l.syn_proxy, SynProxyMode::On);
    let l = &ok(&with("syn_proxy = \"off\"\n")).load_balancers[0].listeners[0];
    assert_eq!(l.syn_proxy, SynProxyMode::Off);
    let l = &ok(&with("syn_proxy = \"auto\"\nsyn_proxy_threshold = 50\n")).load_balancers[0]
        .listeners[0];
    assert_eq!(
        (l.syn_proxy, l.syn_proxy_threshold),
        (SynProxyMode::Auto, 50)
    );
    let bad = errs(&with("syn_proxy = \"sometimes\"\n"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("25:13: "), "{bad:?}");
    assert_eq!(
        errs(&with("syn_proxy = \"on\"\nsyn_proxy_threshold = 10\n")),
        vec!["26:23: syn_proxy_threshold applies only with syn_proxy = \"auto\""]
    );
    assert_eq!(
        errs(&with("syn_proxy_threshold = 0\n")),
        vec!["25:23: syn_proxy_threshold must be 1..=4294967295, got 0"]
    );
    // UDP listeners have no handshake to proxy.
    let udp = "vips = [\"198.18.0.10\"]\nlocal_addresses = [\"198.19.1.250\"]\n[[load_balancer.listener]]\nprotocol = \"udp\"\nport = 53\nserver_group = \"sgp\"\nsyn_proxy = \"on\"\n";
    let e = errs(&lb(SERVER, udp));
    assert!(
        e.iter()
            .any(|e| e == "25:13: syn_proxy is for TCP listeners, not udp"),
        "{e:?}"
    );
}

#[test]
fn drain_and_slow_start() {
    // Lines: the server group body starts on line 14.
    assert_eq!(
        errs(&lb(
            r#"
slow_start_s = -1
drain_timeout_s = 90000
[[server_group.server]]
instance = "ecs01"
port = 80
state = "drained"
"#,
            TCP_LB
        )),
        vec!["19:9: unknown variant `drained`, expected `active` or `draining`"]
    );
    assert_eq!(
        errs(&lb(
            "slow_start_s = 3601\ndrain_timeout_s = 86400.5\n[[server_group.server]]\ninstance = \"ecs01\"\nport = 80\nstate = \"draining\"\n",
            TCP_LB
        )),
        vec![
            "14:16: slow_start_s must be between 0 and 3600 seconds, got 3601",
            "15:19: drain_timeout_s must be between 0 and 86400 seconds, got 86400.5",
        ]
    );
    let cfg = ok(&lb(
        "slow_start_s = 30\ndrain_timeout_s = 2.5\n[[server_group.server]]\ninstance = \"ecs01\"\nport = 80\nstate = \"draining\"\n[[server_group.server]]\naddress = \"198.19.1.12\"\nport = 80\nstate = \"active\"\n[[server_group.server]]\naddress = \"198.19.1.13\"\nport = 80\n",
        TCP_LB,
    ));
    let g = &cfg.server_groups[0];
    assert_eq!((g.slow_start_ms, g.drain_timeout_ms), (30_000, Some(2500)));
    let draining: Vec<bool> = g.servers.iter().map(|s| s.draining).collect();
    assert_eq!(draining, [true, false, false]);
    let g = &ok(&lb(SERVER, TCP_LB)).server_groups[0];
    assert_eq!((g.slow_start_ms, g.drain_timeout_ms), (0, None));
}

#[test]
fn port_tap_and_exception_queue() {
    let port = |name: &str, iface: &str, extra: &str| {
        let net = name.bytes().map(u32::from).sum::<u32>() % 256;
        format!(
            "[[port]]\nname = \"{name}\"\ninterface = \"{iface}\"\naddresses = [\"198.18.{net}.1/24\"]\n{extra}"
        )
    };
    let cfg = ok(&format!(
        "\n{}",
        port("ext", "lb-ext", "tap = \"lbd-ext\"\n")
    ));
    assert_eq!(cfg.ports[0].tap.as_deref(), Some("lbd-ext"));
    assert_eq!(
        cfg.dataplane.exception_queue,
        lb_core::model::Dataplane::DEFAULT_EXCEPTION_QUEUE
    );
    assert_eq!(
        ok(&format!("\n{}", port("ext", "lb-ext", ""))).ports[0].tap,
        None
    );
    let cfg = ok("\n[dataplane]\nexception_queue = 64\n");
    assert_eq!(cfg.dataplane.exception_queue, 64);
    assert_eq!(
        errs("\n[dataplane]\nexception_queue = 8\n"),
        vec!["2:19: exception_queue must be 16..=65536, got 8"]
    );
    // Names as the kernel takes them, one tap per port, none shared.
    assert_eq!(
        errs(&format!(
            "\n{}{}{}",
            port("ext", "lb-ext", "tap = \"a-tap-name-too-long\"\n"),
            port("int", "lb-int", "tap = \"lbd-x\"\n"),
            port("mgmt", "lb-mgmt", "tap = \"lbd-x\"\n"),
        )),
        vec![
            "5:7: tap: interface name \"a-tap-name-too-long\" must be 1 to 15 bytes long",
            "15:7: tap lbd-x is already the tap of the port on line 10",
        ]
    );
    assert_eq!(
        errs(&format!(
            "\n{}{}",
            port("ext", "lb-ext", "tap = \"lb-int\"\n"),
            port("int", "lb-int", ""),
        )),
        vec!["5:7: tap lb-int is the interface of the port on line 8; give the tap a name of its own"]
    );
    assert_eq!(
        errs("\n[[port]]\nname = \"ext\"\ninterface = \"lb-ext\"\ntap = \"lbd-ext\"\n"),
        vec!["4:7: port ext has a tap but no addresses: only frames to the port's own addresses go up to it"]
    );
    // DPDK ports take a tap as well.
    let cfg = ok("\n[dataplane]\nio = \"dpdk\"\n[[port]]\nname = \"ext\"\ndpdk_port = 0\naddresses = [\"198.18.0.1/24\"]\ntap = \"lbd-ext\"\n");
    assert_eq!(cfg.ports[0].tap.as_deref(), Some("lbd-ext"));
}

#[test]
fn access_log_settings() {
    use lb_core::model::{AccessLog, AccessLogFormat};
    let with = |extra: &str| lb(SERVER, &format!("{TCP_LB}{extra}"));
    assert_eq!(
        ok(&lb(SERVER, TCP_LB)).load_balancers[0].listeners[0].access_log,
        None
    );
    let l = &ok(&with("access_log = { path = \"/var/log/lbd/a.log\" }\n")).load_balancers[0]
        .listeners[0];
    assert_eq!(
        l.access_log,
        Some(AccessLog {
            path: "/var/log/lbd/a.log".into(),
            format: AccessLogFormat::Json,
            on_start: false,
        })
    );
    let l = &ok(&with(
        "access_log = { path = \"/tmp/b.log\", format = \"json\", on_start = true }\n",
    ))
    .load_balancers[0]
        .listeners[0];
    assert!(l.access_log.as_ref().is_some_and(|a| a.on_start));
    // Every problem at once, each where it is.
    assert_eq!(
        errs(&with(
            "access_log = { path = \"logs/a.log\", format = \"xml\" }\n"
        )),
        vec![
            "25:23: access_log path \"logs/a.log\" is not absolute (lbd may run from any directory): give an absolute file path, e.g. \"/var/log/lbd/access.log\"",
            "25:46: access_log format must be \"json\", got \"xml\"",
        ]
    );
    assert_eq!(
        errs(&with("access_log = { path = \"/var/log/\" }\n")),
        vec!["25:23: access_log path \"/var/log/\" names a directory, not a file: give an absolute file path, e.g. \"/var/log/lbd/access.log\""]
    );
    let e = errs(&with("access_log = { path = \"/a\", rotate = true }\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("25:") && e[0].contains("unknown field `rotate`"),
        "{e:?}"
    );
}
