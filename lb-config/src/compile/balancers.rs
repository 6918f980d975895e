//! Load balancers: server groups and their health checks, listeners (their
//! ports, SYN proxy, access lists and the servers they must reach) and the
//! FULLNAT local addresses.

use super::*;

impl<'a, 's> Compiler<'a, 's> {
    /// A listener's `max_connections` and `max_new_connections_per_s`.
    fn listener_limits(&mut self, l: &ListenerConfig) -> ListenerLimits {
        let max_connections = l
            .max_connections
            .as_ref()
            .map(|v| self.int(v, "max_connections", 1, MAX_LISTENER_CONNECTIONS));
        let max_new_connections_per_s = l
            .max_new_connections_per_s
            .as_ref()
            .map(|v| self.int(v, "max_new_connections_per_s", 1, MAX_LISTENER_CPS));
        ListenerLimits {
            max_connections,
            max_new_connections_per_s,
        }
    }

    /// A listener's access log: an absolute path to a file, the format
    /// (`json`), whether sessions starting get a line too.
    fn access_log(&mut self, l: &ListenerConfig) -> Option<AccessLog> {
        let a = l.access_log.as_ref()?.get_ref();
        let path = a.path.get_ref();
        let problem = if path.is_empty() {
            Some("is empty")
        } else if !path.starts_with('/') {
            Some("is not absolute (lbd may run from any directory)")
        } else if path.ends_with('/') {
            Some("names a directory, not a file")
        } else if path.contains('\0') {
            Some("holds a NUL character")
        } else if path.len() > MAX_ACCESS_LOG_PATH {
            Some("is longer than 4095 bytes")
        } else {
            None
        };
        if let Some(why) = problem {
            self.err(
                &a.path.span(),
                format!("access_log path {path:?} {why}: give an absolute file path, e.g. \"/var/log/lbd/access.log\""),
            );
        }
        let format = match a.format.as_ref() {
            None => AccessLogFormat::Json,
            Some(f) if f.get_ref() == "json" => AccessLogFormat::Json,
            Some(f) => {
                self.err(
                    &f.span(),
                    format!("access_log format must be \"json\", got {:?}", f.get_ref()),
                );
                AccessLogFormat::Json
            }
        };
        Some(AccessLog {
            path: path.clone(),
            format,
            on_start: a.on_start.unwrap_or(false),
        })
    }

    /// A listener's SYN proxy mode and threshold (TCP listeners only).
    fn syn_proxy(
        &mut self,
        l: &ListenerConfig,
        proto: ListenerProtocolConfig,
    ) -> (SynProxyMode, u32) {
        let mode = match l.syn_proxy.as_ref() {
            Some(m) if proto.is_udp() => {
                self.err(
                    &m.span(),
                    format!("syn_proxy is for TCP listeners, not {}", proto.as_str()),
                );
                SynProxyMode::Off
            }
            Some(m) => match m.get_ref() {
                SynProxyConfig::Off => SynProxyMode::Off,
                SynProxyConfig::On => SynProxyMode::On,
                SynProxyConfig::Auto => SynProxyMode::Auto,
            },
            None if proto.is_udp() => SynProxyMode::Off,
            None => SynProxyMode::Auto,
        };
        let threshold = match l.syn_proxy_threshold.as_ref() {
            Some(t) if mode != SynProxyMode::Auto => {
                self.err(
                    &t.span(),
                    "syn_proxy_threshold applies only with syn_proxy = \"auto\"",
                );
                DEFAULT_SYN_PROXY_THRESHOLD
            }
            Some(t) => self.int(t, "syn_proxy_threshold", 1, i64::from(u32::MAX)),
            None => DEFAULT_SYN_PROXY_THRESHOLD,
        };
        (mode, threshold)
    }

    fn health_check(&mut self, h: Option<&S<HealthCheckConfig>>) -> HealthCheck {
        let mut out = HealthCheck::default();
        let Some(h) = h else { return out };
        let h = h.get_ref();
        if let Some(e) = h.enabled {
            out.enabled = e;
        }
        if let Some(p) = &h.protocol {
            out.protocol = match p.get_ref() {
                HealthProtocolConfig::Tcp => HealthProtocol::Tcp,
                HealthProtocolConfig::Http => HealthProtocol::Http,
                HealthProtocolConfig::Udp => HealthProtocol::Udp,
            };
        }
        let is_http = out.protocol == HealthProtocol::Http;
        let pname = h.protocol.as_ref().map_or("tcp", |p| p.get_ref().as_str());
        if let Some(p) = &h.port {
            out.port = Some(self.int(p, "health check port", 1, 65535));
        }
        if let Some(p) = &h.path {
            let s = p.get_ref();
            if !is_http {
                self.err(
                    &p.span(),
                    format!("path applies to http health checks only, not {pname}"),
                );
            } else if !s.starts_with('/') {
                self.err(
                    &p.span(),
                    format!("health check path {s:?} must start with '/'"),
                );
            } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.err(
                    &p.span(),
                    format!(
                        "health check path {s:?} must not contain spaces or control characters"
                    ),
                );
            }
            out.path.clone_from(s);
        }
        if let Some(codes) = &h.expected_codes {
            if !is_http {
                self.err(
                    &codes.span(),
                    format!("expected_codes applies to http health checks only, not {pname}"),
                );
            } else if codes.get_ref().is_empty() {
                self.err(
                    &codes.span(),
                    "expected_codes must list at least one status code",
                );
            }
            out.expected_codes.clear();
            for c in codes.get_ref() {
                match parse::status_codes(c.get_ref()) {
                    Ok(r) => out.expected_codes.push(r),
                    Err(e) => self.err(&c.span(), e),
                }
            }
        }
        if let Some(i) = &h.interval_s {
            out.interval_ms = self.seconds(i, "interval_s");
        }
        if let Some(t) = &h.timeout_s {
            out.timeout_ms = self.seconds(t, "timeout_s");
        }
        if let Some(t) = &h.healthy_threshold {
            out.healthy_threshold = self.int(t, "healthy_threshold", 1, 10);
        }
        if let Some(t) = &h.unhealthy_threshold {
            out.unhealthy_threshold = self.int(t, "unhealthy_threshold", 1, 10);
        }
        out
    }

    fn seconds(&mut self, s: &S<Seconds>, what: &str) -> u32 {
        let v = s.get_ref().0;
        if !(v > 0.0 && v <= MAX_HEALTH_CHECK_S) {
            self.err(&s.span(), format!("{what} must be greater than 0 and at most {MAX_HEALTH_CHECK_S} seconds, got {v}"));
            return 1;
        }
        let ms = (v * 1000.0).round();
        if ms < 1.0 {
            self.err(
                &s.span(),
                format!("{what} must be at least 0.001 seconds, got {v}"),
            );
            return 1;
        }
        // In 1..=300_000 by the checks above.
        ms as u32
    }

    pub(super) fn server_group(
        &mut self,
        g: &S<ServerGroupConfig>,
        inst_ids: &Ids<'_>,
        instances: &[Instance],
    ) -> ServerGroup {
        let g = g.get_ref();
        let id = g.id.get_ref();
        let scheduler = match g.scheduler.unwrap_or(SchedulerConfig::Wrr) {
            SchedulerConfig::Wrr => SchedulerKind::Wrr,
            SchedulerConfig::Wlc => SchedulerKind::Wlc,
            SchedulerConfig::Maglev => SchedulerKind::Maglev,
        };
        let health_check = self.health_check(g.health_check.as_ref());
        let mut servers: Vec<Server> = Vec::new();
        let mut seen: HashMap<(String, u16), usize> = HashMap::new();
        self.at_most("servers", &format!(" in server group {id}"), &g.servers);
        for s in &g.servers {
            let span = s.span();
            let s = s.get_ref();
            let port: u16 = self.int(&s.port, "port", 1, 65535);
            let weight: u8 = s
                .weight
                .as_ref()
                .map_or(100, |w| self.int(w, "weight", 0, 100));
            let (name, instance, addresses, key_span) = match (&s.instance, &s.address) {
                (Some(_), Some(a)) => {
                    self.err(&a.span(), "a server takes instance or address, not both");
                    continue;
                }
                (None, None) => {
                    self.err(&span, "a server needs instance = \"…\" or address = \"…\"");
                    continue;
                }
                (Some(i), None) => {
                    let idx = self.resolve(inst_ids, i);
                    let addrs = inst_ids
                        .get(i.get_ref())
                        .and_then(|x| instances.get(x))
                        .map(|x| x.addresses.clone())
                        .unwrap_or_default();
                    (i.get_ref().clone(), Some(idx), addrs, i.span())
                }
                (None, Some(a)) => match parse::address(a.get_ref()) {
                    Ok(addr) => {
                        let name = match addr {
                            IpAddr::V4(v4) => format!("{v4}:{port}"),
                            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                        };
                        (name, None, vec![addr], a.span())
                    }
                    Err(e) => {
                        self.err(&a.span(), e);
                        continue;
                    }
                },
            };
            let key = (
                instance.map_or_else(
                    || {
                        addresses
                            .first()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    },
                    |_| name.clone(),
                ),
                port,
            );
            if let Some(line) = seen.insert(key, self.line(&key_span)) {
                self.err(
                    &key_span,
                    format!(
                        "server {} is already in server group {id} (line {line})",
                        if instance.is_some() {
                            format!("{name} port {port}")
                        } else {
                            name.clone()
                        }
                    ),
                );
            }
            servers.push(Server {
                name,
                instance,
                addresses,
                port,
                weight,
                draining: s.state == Some(ServerStateConfig::Draining),
            });
        }
        let slow_start_ms = g
            .slow_start_s
            .as_ref()
            .map_or(0, |v| self.duration_ms(v, "slow_start_s", MAX_SLOW_START_S));
        let drain_timeout_ms = g
            .drain_timeout_s
            .as_ref()
            .map(|v| self.duration_ms(v, "drain_timeout_s", MAX_DRAIN_TIMEOUT_S));
        ServerGroup {
            id: id.clone(),
            scheduler,
            health_check,
            servers,
            slow_start_ms,
            drain_timeout_ms,
        }
    }

    /// A duration of 0..=`max` seconds (fractions allowed), in milliseconds.
    fn duration_ms(&mut self, s: &S<Seconds>, what: &str, max: f64) -> u32 {
        let v = s.get_ref().0;
        if !(0.0..=max).contains(&v) {
            self.err(
                &s.span(),
                format!("{what} must be between 0 and {max} seconds, got {v}"),
            );
            return 0;
        }
        // At most max * 1000, far below u32::MAX.
        (v * 1000.0).round() as u32
    }

    pub(super) fn load_balancers(
        &mut self,
        lbs: &[S<LoadBalancerConfig>],
        refs: &LbRefs<'_, '_>,
        owners: &mut HashMap<IpAddr, Owner>,
        uses: &mut [Vec<ListenerUse>],
    ) -> Vec<LoadBalancer> {
        let mut out = Vec::new();
        for lb in lbs {
            let lb = lb.get_ref();
            let id = lb.id.get_ref();
            if lb.vips.get_ref().is_empty() {
                self.err(
                    &lb.vips.span(),
                    format!("load balancer {id} needs at least one VIP"),
                );
            }
            let vips = self.lb_addresses(
                lb.vips.get_ref(),
                owners,
                &format!("the vips of load balancer {id}"),
            );
            let security_groups = match &lb.security_groups {
                Some(list) => self.attach_groups(
                    &format!("load balancer {id}"),
                    list,
                    refs.sgs,
                    refs.facts,
                    0,
                ),
                None => Vec::new(),
            };
            let local_addresses = match &lb.local_addresses {
                Some(list) => self.lb_addresses(
                    list.get_ref(),
                    owners,
                    &format!("the local_addresses of load balancer {id}"),
                ),
                None => Vec::new(),
            };
            let listeners = self.listeners(lb, refs, uses, &vips, &local_addresses);
            self.fullnat_families(lb, &listeners, &vips, &local_addresses);
            out.push(LoadBalancer {
                id: id.clone(),
                vips,
                security_groups,
                local_addresses,
                listeners,
            });
        }
        out
    }

    /// A load balancer's VIPs or local addresses (`what` they are), each
    /// claimed for it.
    fn lb_addresses(
        &mut self,
        list: &[S<String>],
        owners: &mut HashMap<IpAddr, Owner>,
        what: &str,
    ) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for a in list {
            match parse::address(a.get_ref()) {
                Ok(addr) => {
                    self.claim(owners, addr, &a.span(), what.to_string(), true);
                    out.push(addr);
                }
                Err(e) => self.err(&a.span(), e),
            }
        }
        out
    }

    /// A load balancer's listeners; each listener's use of its server
    /// group goes to `uses`.
    fn listeners(
        &mut self,
        lb: &LoadBalancerConfig,
        refs: &LbRefs<'_, '_>,
        uses: &mut [Vec<ListenerUse>],
        vips: &[IpAddr],
        local_addresses: &[IpAddr],
    ) -> Vec<Listener> {
        let id = lb.id.get_ref();
        let mut listeners = Vec::new();
        // (UDP, port) → the first listener on it and its line.
        let mut seen: HashMap<(bool, u16), (ListenerProtocolConfig, usize)> = HashMap::new();
        self.at_most(
            "listeners",
            &format!(" in load balancer {id}"),
            &lb.listeners,
        );
        for l in &lb.listeners {
            let l = l.get_ref();
            let proto_cfg = *l.protocol.get_ref();
            let port: u16 = self.int(&l.port, "listener port", 1, 65535);
            if port != 0 {
                self.listener_port_unique(l, proto_cfg, port, &mut seen);
            }
            let server_group = self.resolve(refs.sgps, &l.server_group);
            if let Some(u) = refs
                .sgps
                .get(l.server_group.get_ref())
                .and_then(|i| uses.get_mut(i))
            {
                u.push(ListenerUse {
                    lb: id.clone(),
                    protocol: proto_cfg,
                    port,
                    span: l.server_group.span(),
                });
            }
            let acl = l.acl.as_ref().map(|a| {
                let a = a.get_ref();
                ListenerAcl {
                    mode: match a.mode {
                        AclModeConfig::Whitelist => AclMode::Whitelist,
                        AclModeConfig::Blacklist => AclMode::Blacklist,
                    },
                    prefix_list: self.resolve(refs.pls, &a.prefix_list),
                }
            });
            let protocol = match proto_cfg {
                ListenerProtocolConfig::Tcp => ListenerProtocol::Tcp,
                ListenerProtocolConfig::Udp => ListenerProtocol::Udp,
                ListenerProtocolConfig::Http => ListenerProtocol::Http,
                ListenerProtocolConfig::Https => ListenerProtocol::Https,
                ListenerProtocolConfig::Quic => ListenerProtocol::Quic,
            };
            let transfer_client_ip = l.transfer_client_ip.unwrap_or(false);
            let usable = if transfer_client_ip {
                vips
            } else {
                local_addresses
            };
            self.servers_reachable(id, l, refs, usable, transfer_client_ip);
            let (syn_proxy, syn_proxy_threshold) = self.syn_proxy(l, proto_cfg);
            let limits = self.listener_limits(l);
            let access_log = self.access_log(l);
            listeners.push(Listener {
                protocol,
                port,
                server_group,
                transfer_client_ip,
                acl,
                syn_proxy,
                syn_proxy_threshold,
                limits,
                access_log,
            });
        }
        listeners
    }

    /// One listener per transport and port in a load balancer: `seen`
    /// holds those before `l`.
    fn listener_port_unique(
        &mut self,
        l: &ListenerConfig,
        proto_cfg: ListenerProtocolConfig,
        port: u16,
        seen: &mut HashMap<(bool, u16), (ListenerProtocolConfig, usize)>,
    ) {
        let key = (proto_cfg.is_udp(), port);
        if let Some((other, line)) = seen.get(&key) {
            let transport = if proto_cfg.is_udp() { "UDP" } else { "TCP" };
            self.err(
                &l.port.span(),
                format!(
                    "{} listener on port {port} conflicts with the {} listener on line {line} (both use {transport} port {port})",
                    proto_cfg.as_str(),
                    other.as_str()
                ),
            );
        } else {
            seen.insert(key, (proto_cfg, self.line(&l.port.span())));
        }
    }

    /// Can the listener reach each of its servers? Each needs an address
    /// of a family the load balancer has a `usable` address of (VIPs for
    /// `transfer_client_ip`, else local addresses).
    fn servers_reachable(
        &mut self,
        id: &str,
        l: &ListenerConfig,
        refs: &LbRefs<'_, '_>,
        usable: &[IpAddr],
        transfer_client_ip: bool,
    ) {
        let Some(group) = refs
            .sgps
            .get(l.server_group.get_ref())
            .and_then(|i| refs.server_groups.get(i))
        else {
            return;
        };
        if usable.is_empty() {
            return;
        }
        for s in &group.servers {
            let Some(first) = s.addresses.first() else {
                continue;
            };
            if !s
                .addresses
                .iter()
                .any(|a| usable.iter().any(|u| u.is_ipv4() == a.is_ipv4()))
            {
                let fam = family(first);
                let via = if transfer_client_ip {
                    "VIP"
                } else {
                    "local address"
                };
                self.err(
                    &l.server_group.span(),
                    format!(
                        "server {} of server group {} has only {fam} addresses, but load balancer {id} has no {fam} {via} to reach it",
                        s.name, group.id,
                    ),
                );
            }
        }
    }

    /// FULLNAT needs a local address of each VIP family in use.
    fn fullnat_families(
        &mut self,
        lb: &LoadBalancerConfig,
        listeners: &[Listener],
        vips: &[IpAddr],
        local_addresses: &[IpAddr],
    ) {
        let id = lb.id.get_ref();
        if listeners.is_empty() || listeners.iter().all(|l| l.transfer_client_ip) {
            return;
        }
        for fam_v4 in [true, false] {
            if vips.iter().any(|v| v.is_ipv4() == fam_v4)
                && !local_addresses.iter().any(|a| a.is_ipv4() == fam_v4)
            {
                let fam = if fam_v4 { "IPv4" } else { "IPv6" };
                let span = lb
                    .local_addresses
                    .as_ref()
                    .map_or_else(|| lb.vips.span(), S::span);
                self.err(
                    &span,
                    format!(
                        "load balancer {id} has an {fam} VIP but no {fam} local_addresses entry (the source address toward the backends; not needed only when every listener has transfer_client_ip = true)"
                    ),
                );
            }
        }
    }

    /// Health checks must speak the transport of the listeners they guard.
    /// Without an explicit protocol, a group serving only UDP listeners gets
    /// a UDP check.
    pub(super) fn health_checks(
        &mut self,
        cfg: &[S<ServerGroupConfig>],
        groups: &mut [ServerGroup],
        uses: &[Vec<ListenerUse>],
    ) {
        for ((c, g), uses) in cfg.iter().zip(groups.iter_mut()).zip(uses) {
            let c = c.get_ref();
            let explicit = c
                .health_check
                .as_ref()
                .and_then(|h| h.get_ref().protocol.as_ref());
            if explicit.is_none() && !uses.is_empty() && uses.iter().all(|u| u.protocol.is_udp()) {
                g.health_check.protocol = HealthProtocol::Udp;
            }
            if !g.health_check.enabled {
                continue;
            }
            let check_udp = g.health_check.protocol == HealthProtocol::Udp;
            let hname = match g.health_check.protocol {
                HealthProtocol::Tcp => "tcp",
                HealthProtocol::Http => "http",
                HealthProtocol::Udp => "udp",
            };
            for u in uses {
                if u.protocol.is_udp() != check_udp {
                    let msg = format!(
                        "server group {} serves {} listener {}:{} but its health check is {hname}; a {} listener needs a {} check{}",
                        g.id,
                        u.protocol.as_str(),
                        u.lb,
                        u.port,
                        if u.protocol.is_udp() { "UDP" } else { "TCP" },
                        if u.protocol.is_udp() { "udp" } else { "tcp or http" },
                        if explicit.is_none() { " (set health_check.protocol, or use separate server groups for TCP and UDP)" } else { "" },
                    );
                    let span = explicit.map_or_else(|| u.span.clone(), S::span);
                    self.err(&span, msg);
                }
            }
        }
    }
}
