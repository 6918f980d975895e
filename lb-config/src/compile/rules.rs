//! Rules: prefix lists and port lists, security groups and network ACLs,
//! one rule at a time (protocol, ports, peer, local end, ICMP family,
//! source ports), duplicates, and the groups an interface attaches.

use super::*;

impl<'a, 's> Compiler<'a, 's> {
    fn max_entries(&mut self, m: &S<i64>) -> u32 {
        self.int(m, "max_entries", 1, i64::from(u32::MAX))
    }

    fn check_count(&mut self, kind: &str, id: &str, max: u32, entries: &[S<String>]) {
        if let Some(extra) = entries.get(usize::try_from(max).unwrap_or(usize::MAX)) {
            self.err(
                &extra.span(),
                format!(
                    "{kind} {id} has {} entries but max_entries = {max}",
                    entries.len()
                ),
            );
        }
    }

    pub(super) fn prefix_list(&mut self, p: &S<PrefixListConfig>) -> PrefixList {
        let p = p.get_ref();
        let max_entries = self.max_entries(&p.max_entries);
        self.check_count("prefix list", p.id.get_ref(), max_entries, &p.entries);
        let mut entries = Vec::new();
        let mut seen: HashMap<IpNet, usize> = HashMap::new();
        for e in &p.entries {
            match parse::cidr(e.get_ref()) {
                Ok(net) => {
                    if let Some(line) = seen.insert(net, self.line(&e.span())) {
                        self.err(&e.span(), format!("{net} is already listed on line {line}"));
                    }
                    entries.push(net);
                }
                Err(msg) => self.err(&e.span(), msg),
            }
        }
        PrefixList {
            id: p.id.get_ref().clone(),
            max_entries,
            entries,
        }
    }

    pub(super) fn port_list(&mut self, p: &S<PortListConfig>) -> PortList {
        let p = p.get_ref();
        let max_entries = self.max_entries(&p.max_entries);
        self.check_count("port list", p.id.get_ref(), max_entries, &p.entries);
        let mut entries = Vec::new();
        let mut seen: HashSet<PortRange> = HashSet::new();
        for e in &p.entries {
            match parse::port_range(e.get_ref()) {
                Ok(PortSpec::Range(r)) => {
                    if !seen.insert(r) {
                        self.err(&e.span(), format!("{} is listed twice", e.get_ref()));
                    }
                    entries.push(r);
                }
                Ok(PortSpec::Any) => self.err(
                    &e.span(),
                    "a port list entry needs real ports; -1/-1 is not allowed here",
                ),
                Err(msg) => self.err(&e.span(), msg),
            }
        }
        PortList {
            id: p.id.get_ref().clone(),
            max_entries,
            entries,
        }
    }

    pub(super) fn security_group(
        &mut self,
        g: &S<SecurityGroupConfig>,
        refs: &RuleRefs<'_, '_>,
    ) -> (SecurityGroup, GroupFacts) {
        let g = g.get_ref();
        let kind_cfg = g
            .kind
            .as_ref()
            .map_or(GroupTypeConfig::Basic, |k| *k.get_ref());
        let kind = match kind_cfg {
            GroupTypeConfig::Basic => GroupKind::Basic {
                internal_access: !matches!(
                    g.internal_access.as_ref().map(|a| *a.get_ref()),
                    Some(InternalAccessConfig::Drop)
                ),
            },
            GroupTypeConfig::Enterprise => {
                if let Some(a) = &g.internal_access {
                    self.err(
                        &a.span(),
                        "internal_access applies to basic security groups only (an enterprise group always isolates its members)",
                    );
                }
                GroupKind::Enterprise
            }
        };
        let mut cost = 0u64;
        let mut rules = Vec::new();
        for r in &g.rules {
            let (rule, c) = self.rule(r, refs, true);
            cost = cost.saturating_add(c);
            rules.push(rule);
        }
        self.duplicate_rules(&g.rules, &rules);
        (
            SecurityGroup {
                id: g.id.get_ref().clone(),
                kind,
                rules,
            },
            GroupFacts {
                kind: kind_cfg,
                cost,
            },
        )
    }

    pub(super) fn network_acl(
        &mut self,
        a: &S<NetworkAclConfig>,
        refs: &RuleRefs<'_, '_>,
    ) -> NetworkAcl {
        let a = a.get_ref();
        let rules: Vec<Rule> = a
            .rules
            .iter()
            .map(|r| self.rule(r, refs, false).0)
            .collect();
        self.duplicate_rules(&a.rules, &rules);
        NetworkAcl {
            id: a.id.get_ref().clone(),
            rules,
        }
    }

    /// A cloud refuses a rule identical to an existing one; so do we.
    fn duplicate_rules(&mut self, cfg: &[S<RuleConfig>], rules: &[Rule]) {
        for (i, first_line) in duplicate_rules(rules) {
            if let Some(c) = cfg.get(i) {
                self.err(
                    &c.span(),
                    format!("this rule duplicates the rule on line {first_line}"),
                );
            }
        }
    }

    /// Compiles one rule; returns it and the rule quota it consumes (a
    /// port list or prefix list counts its `max_entries`).
    fn rule(&mut self, r: &S<RuleConfig>, refs: &RuleRefs<'_, '_>, in_group: bool) -> (Rule, u64) {
        let line = u32::try_from(self.line(&r.span())).unwrap_or(u32::MAX);
        let r = r.get_ref();
        let direction = match r.direction.get_ref() {
            DirectionConfig::Ingress => Direction::Ingress,
            DirectionConfig::Egress => Direction::Egress,
        };
        let action = match r.action.get_ref() {
            ActionConfig::Allow => Action::Allow,
            ActionConfig::Deny => Action::Deny,
        };
        let priority = r
            .priority
            .as_ref()
            .map_or(1, |p| self.int(p, "priority", 1, 100));
        let protocol = self.rule_protocol(r);
        let (ports, port_list, ports_cost) = self.rule_ports(r, protocol, refs);
        let sides = RuleSides::of(r, direction);
        let (peer, peer_cidr, peer_cost) = self.rule_peer(&sides, refs, in_group);
        let local = self.rule_local(&sides, peer_cidr);
        self.rule_icmp_family(protocol, &sides, peer_cidr, local);
        let source_ports = self.rule_source_ports(r, protocol);
        let rule = Rule {
            direction,
            action,
            priority,
            protocol,
            ports,
            port_list,
            peer,
            local,
            source_ports,
            description: r.description.clone(),
            line,
        };
        (rule, ports_cost.saturating_mul(peer_cost))
    }

    /// A rule's IP protocol (`None`: any). After an error, the protocol
    /// its ports suggest, so that no later error merely echoes this one.
    fn rule_protocol(&mut self, r: &RuleConfig) -> Option<u8> {
        match r.protocol.get_ref().resolve() {
            Ok(p) => p.0,
            Err(message) => {
                self.err(&r.protocol.span(), message);
                let portless = match (&r.port_range, &r.port_list) {
                    (None, None) => true,
                    (Some(pr), _) => pr.get_ref().trim() == "-1/-1",
                    (None, Some(_)) => false,
                };
                (!portless).then_some(proto::TCP)
            }
        }
    }

    /// A rule's destination ports (`port_range` or `port_list`), the port
    /// list it names, and the quota the list costs.
    fn rule_ports(
        &mut self,
        r: &RuleConfig,
        protocol: Option<u8>,
        refs: &RuleRefs<'_, '_>,
    ) -> (Vec<PortRange>, Option<usize>, u64) {
        let pname = protocol_name(protocol);
        let takes_ports = has_ports(protocol);
        let mut cost = 1u64;
        let mut ports = vec![PortRange::ANY];
        let mut port_list = None;
        match (&r.port_range, &r.port_list) {
            (Some(_), Some(l)) => self.err(&l.span(), "a rule takes port_range or port_list, not both"),
            (None, Some(l)) => {
                if !takes_ports {
                    self.err(&l.span(), format!("port_list needs protocol tcp or udp, not {pname}"));
                }
                if let Some(i) = refs.prls.get(l.get_ref()) {
                    port_list = Some(i);
                    if let Some(pl) = refs.port_lists.get(i) {
                        ports.clone_from(&pl.entries);
                        cost = u64::from(pl.max_entries.max(1));
                    }
                } else {
                    self.err(&l.span(), format!("unknown port list {}", l.get_ref()));
                }
            }
            (Some(pr), None) => match parse::port_range(pr.get_ref()) {
                Ok(PortSpec::Any) if takes_ports => self.err(
                    &pr.span(),
                    format!("port range -1/-1 is for protocols without ports; for all {pname} ports write \"1/65535\""),
                ),
                Ok(PortSpec::Any) => {}
                Ok(PortSpec::Range(range)) if takes_ports => ports = vec![range],
                Ok(PortSpec::Range(_)) => self.err(
                    &pr.span(),
                    format!("protocol {pname} has no ports; its port_range must be \"-1/-1\""),
                ),
                Err(e) => self.err(&pr.span(), e),
            },
            (None, None) => {
                if takes_ports {
                    self.err(&r.protocol.span(), format!("a {pname} rule needs port_range (e.g. \"80/80\") or port_list"));
                }
            }
        }
        (ports, port_list, cost)
    }

    /// A rule's peer (its authorization object: an address or CIDR, a
    /// security group, a prefix list), the peer as a CIDR when it is one,
    /// and the quota a prefix list costs.
    fn rule_peer(
        &mut self,
        sides: &RuleSides<'_>,
        refs: &RuleRefs<'_, '_>,
        in_group: bool,
    ) -> (Peer, Option<IpNet>, u64) {
        let mut peer = Peer::Cidr(IpNet::default());
        let mut peer_cidr = None;
        let mut cost = 1u64;
        let (peer_name, dir_name) = (sides.peer_name, sides.dir_name);
        match sides.peer {
            None => self.err(
                &sides.direction_span,
                format!("an {dir_name} rule needs {peer_name} (its authorization object: an address, CIDR, sg-… or pl-…)"),
            ),
            Some(p) => {
                let s = p.get_ref().as_str();
                if s.starts_with("sg-") {
                    if in_group {
                        if let Some(i) = refs.sgs.get(s) {
                            peer = Peer::Group(i);
                        } else {
                            self.err(&p.span(), format!("unknown security group {s}"));
                        }
                    } else {
                        self.err(&p.span(), format!("a network ACL rule cannot name a security group ({s}); use addresses, CIDRs or a prefix list"));
                    }
                } else if s.starts_with("pl-") {
                    if let Some(i) = refs.pls.get(s) {
                        peer = Peer::PrefixList(i);
                        if let Some(pl) = refs.prefix_lists.get(i) {
                            cost = u64::from(pl.max_entries.max(1));
                        }
                    } else {
                        self.err(&p.span(), format!("unknown prefix list {s}"));
                    }
                } else {
                    match parse::cidr(s) {
                        Ok(net) => {
                            peer = Peer::Cidr(net);
                            peer_cidr = Some(net);
                        }
                        Err(e) => self.err(&p.span(), e),
                    }
                }
            }
        }
        (peer, peer_cidr, cost)
    }

    /// A rule's local end (a quintuple rule): an address or CIDR of the
    /// peer's family.
    fn rule_local(&mut self, sides: &RuleSides<'_>, peer_cidr: Option<IpNet>) -> Option<IpNet> {
        let (peer_name, local_name, dir_name) = (sides.peer_name, sides.local_name, sides.dir_name);
        let l = sides.local?;
        let s = l.get_ref().as_str();
        if s.starts_with("sg-") || s.starts_with("pl-") {
            self.err(
                &l.span(),
                format!("the {local_name} of an {dir_name} rule (a quintuple rule) must be an address or CIDR, not {s}"),
            );
            return None;
        }
        match parse::cidr(s) {
            Ok(net) => {
                if let Some(p) = peer_cidr {
                    if p.addr().is_ipv4() != net.addr().is_ipv4() {
                        self.err(
                            &l.span(),
                            format!(
                                "{local_name} {net} is {} but {peer_name} {p} is {}; the rule could never match",
                                family(&net.addr()),
                                family(&p.addr())
                            ),
                        );
                    }
                }
                Some(net)
            }
            Err(e) => {
                self.err(&l.span(), e);
                None
            }
        }
    }

    /// ICMP is IPv4 only and ICMPv6 IPv6 only: a rule mixing them never
    /// matches.
    fn rule_icmp_family(
        &mut self,
        protocol: Option<u8>,
        sides: &RuleSides<'_>,
        peer_cidr: Option<IpNet>,
        local: Option<IpNet>,
    ) {
        let v4 = match protocol {
            Some(proto::ICMP) => true,
            Some(proto::ICMPV6) => false,
            _ => return,
        };
        let pname = protocol_name(protocol);
        let checks = [
            (sides.peer, sides.peer_name, peer_cidr),
            (sides.local, sides.local_name, local),
        ];
        for (field, name, net) in checks {
            if let (Some(field), Some(net)) = (field, net) {
                if net.addr().is_ipv4() != v4 {
                    let fix = if v4 { "icmpv6" } else { "icmp" };
                    self.err(
                        &field.span(),
                        format!(
                            "protocol {pname} is {} only but {name} {net} is {}; use {fix}",
                            if v4 { "IPv4" } else { "IPv6" },
                            family(&net.addr())
                        ),
                    );
                }
            }
        }
    }

    /// A rule's source ports (TCP and UDP only).
    fn rule_source_ports(&mut self, r: &RuleConfig, protocol: Option<u8>) -> PortRange {
        let Some(sp) = &r.source_port_range else {
            return PortRange::ANY;
        };
        match parse::port_range(sp.get_ref()) {
            Ok(spec) if !has_ports(protocol) => {
                if spec != PortSpec::Any {
                    let pname = protocol_name(protocol);
                    self.err(
                        &sp.span(),
                        format!("source_port_range needs protocol tcp or udp, not {pname}"),
                    );
                }
                PortRange::ANY
            }
            Ok(PortSpec::Any) => PortRange::ANY,
            Ok(PortSpec::Range(range)) => range,
            Err(e) => {
                self.err(&sp.span(), e);
                PortRange::ANY
            }
        }
    }

    /// Checks an interface's list of security groups: count, duplicates,
    /// one type, rule quota. `what` names the interface ("instance ecs01").
    pub(super) fn attach_groups(
        &mut self,
        what: &str,
        list: &S<Vec<S<String>>>,
        sg_ids: &Ids<'_>,
        facts: &[GroupFacts],
        min: usize,
    ) -> Vec<usize> {
        let n = list.get_ref().len();
        if n < min {
            self.err(
                &list.span(),
                format!("{what} needs at least one security group"),
            );
        }
        if n > MAX_GROUPS_PER_INTERFACE {
            self.err(&list.span(), format!("{what} has {n} security groups; at most {MAX_GROUPS_PER_INTERFACE} are allowed"));
        }
        let mut out: Vec<usize> = Vec::new();
        let mut first_kind: Option<(GroupTypeConfig, &str)> = None;
        let mut cost = 0u64;
        for g in list.get_ref() {
            let Some(i) = sg_ids.get(g.get_ref()) else {
                self.err(&g.span(), format!("unknown security group {}", g.get_ref()));
                continue;
            };
            if out.contains(&i) {
                self.err(
                    &g.span(),
                    format!("security group {} is listed twice", g.get_ref()),
                );
                continue;
            }
            out.push(i);
            if let Some(f) = facts.get(i) {
                cost = cost.saturating_add(f.cost);
                match first_kind {
                    None => first_kind = Some((f.kind, g.get_ref())),
                    Some((k, first)) if k != f.kind => self.err(
                        &g.span(),
                        format!(
                            "{} is an {} security group but {first} is {}; the groups of one interface must all be basic or all enterprise",
                            g.get_ref(),
                            f.kind.as_str(),
                            k.as_str()
                        )
                        .replace("an basic", "a basic"),
                    ),
                    Some(_) => {}
                }
            }
        }
        if cost > MAX_RULES_PER_INTERFACE {
            self.err(
                &list.span(),
                format!(
                    "the security groups of {what} hold {cost} rules (a rule using a prefix or port list counts its max_entries); at most {MAX_RULES_PER_INTERFACE} are allowed"
                ),
            );
        }
        out
    }
}

/// Whether a protocol has ports (TCP and UDP).
fn has_ports(protocol: Option<u8>) -> bool {
    matches!(protocol, Some(proto::TCP | proto::UDP))
}

/// A rule's two address fields by role: the peer (its authorization
/// object: the source of an ingress rule, the destination of an egress
/// rule) and the local end.
struct RuleSides<'r> {
    peer: Option<&'r S<String>>,
    local: Option<&'r S<String>>,
    peer_name: &'static str,
    local_name: &'static str,
    dir_name: &'static str,
    /// Where a missing peer is reported.
    direction_span: Range<usize>,
}

impl<'r> RuleSides<'r> {
    fn of(r: &'r RuleConfig, direction: Direction) -> Self {
        let (peer, local, peer_name, local_name, dir_name) = match direction {
            Direction::Ingress => (
                &r.source,
                &r.destination,
                "source",
                "destination",
                "ingress",
            ),
            Direction::Egress => (&r.destination, &r.source, "destination", "source", "egress"),
        };
        RuleSides {
            peer: peer.as_ref(),
            local: local.as_ref(),
            peer_name,
            local_name,
            dir_name,
            direction_span: r.direction.span(),
        }
    }
}

/// The rules identical to an earlier one (all but description and line),
/// as (index, line of the first such rule), in order. One hash lookup per
/// rule: a group of 200 k rules is checked in milliseconds.
pub(crate) fn duplicate_rules(rules: &[Rule]) -> Vec<(usize, u32)> {
    let mut first: HashMap<RuleIdentity<'_>, u32> = HashMap::with_capacity(rules.len());
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        match first.entry(RuleIdentity::of(r)) {
            std::collections::hash_map::Entry::Occupied(e) => out.push((i, *e.get())),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(r.line);
            }
        }
    }
    out
}

/// What makes two rules the same rule.
#[derive(PartialEq, Eq, Hash)]
struct RuleIdentity<'r> {
    direction: Direction,
    action: Action,
    priority: u8,
    protocol: Option<u8>,
    ports: &'r [PortRange],
    port_list: Option<usize>,
    /// The peer: 0 CIDR, 1 group, 2 prefix list, with its CIDR or index.
    peer: (u8, Option<IpNet>, usize),
    local: Option<IpNet>,
    source_ports: PortRange,
}

impl<'r> RuleIdentity<'r> {
    fn of(r: &'r Rule) -> Self {
        RuleIdentity {
            direction: r.direction,
            action: r.action,
            priority: r.priority,
            protocol: r.protocol,
            ports: &r.ports,
            port_list: r.port_list,
            peer: match r.peer {
                Peer::Cidr(n) => (0, Some(n), 0),
                Peer::Group(i) => (1, None, i),
                Peer::PrefixList(i) => (2, None, i),
            },
            local: r.local,
            source_ports: r.source_ports,
        }
    }
}
