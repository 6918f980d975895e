use super::parse::TCP_ACK;
use super::*;

#[test]
fn parses_packet_lines() {
    let Some(TraceLine::Packet(p)) =
        parse_line("0.5 tcp 198.18.0.2:40000 > 198.18.0.10:80 S # c").expect("ok")
    else {
        panic!("packet expected")
    };
    assert_eq!(p.time, 0.5);
    assert_eq!(p.key.dport, 80);
    assert_eq!(p.tcp_flags, 0x02);
    let Some(TraceLine::Packet(p)) =
        parse_line("1 tcp [2001:db8::2]:40000 > [2001:db8::10]:81").expect("ok")
    else {
        panic!("packet expected")
    };
    assert_eq!(p.tcp_flags, TCP_ACK);
    assert!(p.key.src.is_ipv6());
    let Some(TraceLine::Packet(p)) =
        parse_line("2 icmp 198.18.0.2 > 198.19.1.11 icmp=3/4").expect("ok")
    else {
        panic!("packet expected")
    };
    assert_eq!(p.icmp, Some((3, 4)));
    assert_eq!((p.port, p.vlan), (None, None));
    let Some(TraceLine::Packet(p)) =
        parse_line("0 tcp 198.19.1.12:40000 > 198.19.1.11:80 S port=ext vlan=100").expect("ok")
    else {
        panic!("packet expected")
    };
    assert_eq!((p.port.as_deref(), p.vlan), (Some("ext"), Some(Some(100))));
    let Some(TraceLine::Packet(p)) =
        parse_line("0 udp 198.18.0.2:1 > 198.18.0.10:53 vlan=none").expect("ok")
    else {
        panic!("packet expected")
    };
    assert_eq!(p.vlan, Some(None));
    assert_eq!(parse_line("   # only a comment").expect("ok"), None);
}

#[test]
fn parses_ip_words() {
    let Some(TraceLine::Packet(p)) = parse_line(
        "1 icmp 198.19.1.12 > 198.19.2.21 icmp=3/3 ttl=1 len=600 nodf opt=lsrr quote=udp,198.19.1.11:5353,198.18.0.70:53",
    )
    .expect("ok") else {
        panic!("packet expected")
    };
    assert_eq!(p.ip.ttl, Some(1));
    assert_eq!(p.ip.len, Some(600));
    assert!(p.ip.no_df);
    assert_eq!(p.ip.opt, Some(IpOpt::Lsrr));
    let q = p.ip.quote.expect("quote");
    assert_eq!(q.to_string(), "udp 198.19.1.11:5353 > 198.18.0.70:53");
    let frame = build_trace_frame(&p, None).expect("frame");
    let parsed = packet::parse(&frame).expect("valid");
    assert_eq!((parsed.ttl, parsed.l3_len), (1, 600 + 8));
    assert!(packet::is_source_routed(&frame, &parsed));
    assert_eq!(
        packet::parse_icmp_inner(&frame, &parsed)
            .expect("quoted")
            .to_string(),
        q.to_string()
    );
    assert_eq!(
        parse_line("@mtu int 1280").expect("ok"),
        Some(TraceLine::Mtu {
            port: "int".into(),
            mtu: 1280
        })
    );
}

#[test]
fn rejects_bad_lines() {
    for bad in [
        "x tcp 1.2.3.4:1 > 1.2.3.5:2",
        "0 tcp 1.2.3.4 > 1.2.3.5:2",
        "0 tcp 1.2.3.4:1 > 2001:db8::1:2",
        "0 tcp 1.2.3.4:1 1.2.3.5:2 S",
        "0 tcp 1.2.3.4:1 > 1.2.3.5:2 SX",
        "0 sctpx 1.2.3.4 > 1.2.3.5",
        "0 icmpv6 1.2.3.4 > 1.2.3.5",
        "0 udp 1.2.3.4:1 > 1.2.3.5:2 icmp=3/4",
        "@health g s sideways",
        "@frobnicate",
        "-1 udp 1.2.3.4:1 > 1.2.3.5:2",
        "0 udp 1.2.3.4:1 > 1.2.3.5:2 port=",
        "0 udp 1.2.3.4:1 > 1.2.3.5:2 vlan=4096",
        "0 udp 1.2.3.4:1 > 1.2.3.5:2 vlan=x",
        "0 udp 1.2.3.4:1 > 1.2.3.5:2 ttl=300",
        "0 udp [2001:db8::1]:1 > [2001:db8::2]:2 nodf",
        "0 udp 1.2.3.4:1 > 1.2.3.5:2 opt=rh0",
        "0 udp 1.2.3.4:1 > 1.2.3.5:2 opt=bogus",
        "0 icmp 1.2.3.4 > 1.2.3.5 icmp=3/3 quote=udp,1.2.3.4:1",
        "0 icmp 1.2.3.4 > 1.2.3.5 icmp=3/3 quote=udp,[2001:db8::1]:1,1.2.3.4:2",
        "@mtu int",
        "@mtu int big",
    ] {
        assert!(parse_line(bad).is_err(), "{bad} should be rejected");
    }
}

#[test]
fn access_log_lines_show_where_sessions_start_and_end() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/alb-seed.toml");
    let text = std::fs::read_to_string(seed).expect("seed");
    let listener = "port = 80\nserver_group = \"sgp-web\"\n";
    assert!(text.contains(listener));
    let text = text.replacen(
        listener,
        &format!("{listener}access_log = {{ path = \"/var/log/lbd/a.log\", on_start = true }}\n"),
        1,
    );
    let dir = std::env::temp_dir().join(format!("lb-eval-access-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let config = dir.join("lb.toml");
    std::fs::write(&config, text).expect("write config");
    let trace = "0.5 tcp 198.18.0.2:40000 > 198.18.0.10:80 S\n\
                 1.0 tcp 198.18.0.2:40001 > 198.18.0.10:81 S\n\
                 100 tcp 198.18.0.2:40002 > 198.18.0.10:81 S\n";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let ran = run(&config, trace, &dir.join("t.trace"), &mut out, &mut err);
    let _ = std::fs::remove_dir_all(&dir);
    ran.expect("runs");
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let start = &lines[0]["access_log"][0];
    assert_eq!(start["event"], "start", "{}", lines[0]);
    assert_eq!(start["time"], "1970-01-01T00:00:00.500000Z");
    assert_eq!(
        (&start["client_port"], &start["tcp_state"]),
        (&40000.into(), &"syn_sent".into())
    );
    // Listener 81 does not log.
    assert!(lines[1].get("access_log").is_none(), "{}", lines[1]);
    // The unanswered handshake expired (5 s) before line 3.
    let log = &lines[2]["access_log"];
    assert_eq!(log.as_array().map(Vec::len), Some(1), "{}", lines[2]);
    assert_eq!(
        (&log[0]["event"], &log[0]["reason"]),
        (&"end".into(), &"idle_timeout".into())
    );
    assert_eq!(log[0]["end_time"], "1970-01-01T00:00:05.500000Z");
    assert_eq!(log[0]["client_port"], 40000);
}

#[test]
fn parses_drain_lines() {
    assert_eq!(
        parse_line("@drain sgp-web ecs02 2.5").expect("ok"),
        Some(TraceLine::Drain {
            group: "sgp-web".into(),
            server: "ecs02".into(),
            drain: true,
            deadline_s: Some(2.5),
        })
    );
    assert_eq!(
        parse_line("@undrain sgp-web 198.19.1.12:80").expect("ok"),
        Some(TraceLine::Drain {
            group: "sgp-web".into(),
            server: "198.19.1.12:80".into(),
            drain: false,
            deadline_s: None,
        })
    );
    for bad in [
        "@drain sgp-web",
        "@drain g s -1",
        "@drain g s x",
        "@undrain g s 5",
    ] {
        assert!(parse_line(bad).is_err(), "{bad}");
    }
}
