//! The data plane's own side: ports and their addresses, routes, subnets,
//! instances, and the claims that keep every address to one owner.

use super::*;

impl<'a, 's> Compiler<'a, 's> {
    pub(super) fn ports(&mut self, ports: &[S<PortConfig>], io: IoBackend) -> Vec<Port> {
        let mut out = Vec::new();
        let mut ifaces: HashMap<&str, usize> = HashMap::new();
        let mut dpdk: HashMap<u16, usize> = HashMap::new();
        let mut addrs: HashMap<IpAddr, String> = HashMap::new();
        let mut taps: Vec<(&S<String>, usize)> = Vec::new();
        for p in ports {
            let span = p.span();
            let p = p.get_ref();
            let name = p.name.get_ref();
            let mut port = Port {
                name: name.clone(),
                interface: None,
                dpdk_port: None,
                addresses: Vec::new(),
                source_check: match p.source_check {
                    None | Some(SourceCheckConfig::Strict) => SourceCheck::Strict,
                    Some(SourceCheckConfig::Loose) => SourceCheck::Loose,
                    Some(SourceCheckConfig::Off) => SourceCheck::Off,
                },
                vlan: None,
                max_neighbors: Port::DEFAULT_MAX_NEIGHBORS,
                tap: None,
            };
            if let Some(m) = &p.max_neighbors {
                port.max_neighbors = self.int(m, "max_neighbors", 16, 65536);
            }
            match io {
                IoBackend::AfPacket => {
                    if p.interface.is_none() {
                        self.err(&span, format!("port {name} needs interface (the kernel interface io = \"af_packet\" uses)"));
                    }
                    if let Some(d) = &p.dpdk_port {
                        self.err(
                            &d.span(),
                            "dpdk_port applies to io = \"dpdk\" only; with af_packet use interface",
                        );
                    }
                }
                IoBackend::Dpdk => {
                    if p.dpdk_port.is_none() {
                        self.err(
                            &span,
                            format!(
                                "port {name} needs dpdk_port (the ethdev port io = \"dpdk\" uses)"
                            ),
                        );
                    }
                    if let Some(i) = &p.interface {
                        self.err(
                            &i.span(),
                            "interface applies to io = \"af_packet\" only; with dpdk use dpdk_port",
                        );
                    }
                }
            }
            if let Some(i) = &p.interface {
                if let Err(e) = parse::interface_name(i.get_ref()) {
                    self.err(&i.span(), e);
                } else if let Some(line) = ifaces.insert(i.get_ref(), self.line(&i.span())) {
                    self.err(
                        &i.span(),
                        format!(
                            "interface {} is already used by the port on line {line}",
                            i.get_ref()
                        ),
                    );
                }
                port.interface = Some(i.get_ref().clone());
            }
            if let Some(d) = &p.dpdk_port {
                let id: u16 = self.int(d, "dpdk_port", 0, i64::from(u16::MAX));
                if let Some(line) = dpdk.insert(id, self.line(&d.span())) {
                    self.err(
                        &d.span(),
                        format!("dpdk_port {id} is already used by the port on line {line}"),
                    );
                }
                port.dpdk_port = Some(id);
            }
            if let Some(v) = &p.vlan {
                // 0 is a priority tag and 4095 reserved (802.1Q).
                port.vlan = Some(self.int(v, "vlan", 1, 4094));
            }
            for a in &p.addresses {
                match parse::interface_address(a.get_ref()) {
                    Ok(net) => {
                        if let Some(other) = addrs.get(&net.addr()) {
                            self.err(
                                &a.span(),
                                format!("address {} is already on port {other}", net.addr()),
                            );
                        } else {
                            addrs.insert(net.addr(), name.clone());
                        }
                        port.addresses.push(net);
                    }
                    Err(e) => self.err(&a.span(), e),
                }
            }
            if let Some(t) = &p.tap {
                if let Err(e) = parse::interface_name(t.get_ref()) {
                    self.err(&t.span(), format!("tap: {e}"));
                } else if let Some((_, line)) =
                    taps.iter().find(|(o, _)| o.get_ref() == t.get_ref())
                {
                    self.err(
                        &t.span(),
                        format!(
                            "tap {} is already the tap of the port on line {line}",
                            t.get_ref()
                        ),
                    );
                } else {
                    taps.push((t, self.line(&t.span())));
                }
                if p.addresses.is_empty() {
                    self.err(
                        &t.span(),
                        format!(
                            "port {name} has a tap but no addresses: only frames to the port's own addresses go up to it"
                        ),
                    );
                }
                port.tap = Some(t.get_ref().clone());
            }
            out.push(port);
        }
        // A tap must not take the name of a port's own interface.
        for (t, _) in &taps {
            if let Some(line) = ifaces.get(t.get_ref().as_str()) {
                self.err(
                    &t.span(),
                    format!(
                        "tap {} is the interface of the port on line {line}; give the tap a name of its own",
                        t.get_ref()
                    ),
                );
            }
        }
        out
    }

    pub(super) fn routes(
        &mut self,
        routes: &[S<RouteConfig>],
        port_ids: &Ids<'_>,
        ports: &[Port],
    ) -> Vec<Route> {
        let mut out = Vec::new();
        let mut seen: HashMap<IpNet, usize> = HashMap::new();
        for r in routes {
            let r = r.get_ref();
            let destination = match parse::cidr(r.destination.get_ref()) {
                Ok(net) => {
                    if let Some(line) = seen.insert(net, self.line(&r.destination.span())) {
                        self.err(
                            &r.destination.span(),
                            format!("a route to {net} is already defined on line {line}"),
                        );
                    }
                    Some(net)
                }
                Err(e) => {
                    self.err(&r.destination.span(), e);
                    None
                }
            };
            let port = port_ids.get(r.port.get_ref());
            if port.is_none() {
                self.err(&r.port.span(), format!("unknown port {}", r.port.get_ref()));
            }
            let mut via = None;
            if let Some(v) = &r.via {
                match parse::address(v.get_ref()) {
                    Ok(addr) => {
                        via = Some(addr);
                        if let Some(dst) =
                            destination.filter(|d| d.addr().is_ipv4() != addr.is_ipv4())
                        {
                            self.err(
                                &v.span(),
                                format!(
                                    "next hop {addr} is {} but destination {dst} is {}",
                                    family(&addr),
                                    family(&dst.addr())
                                ),
                            );
                        } else if let Some(p) = port.and_then(|i| ports.get(i)) {
                            if !p.addresses.iter().any(|n| n.contains(&addr)) {
                                let nets: Vec<String> = p
                                    .addresses
                                    .iter()
                                    .filter(|n| n.addr().is_ipv4() == addr.is_ipv4())
                                    .map(|n| n.trunc().to_string())
                                    .collect();
                                let where_ = if nets.is_empty() {
                                    format!("port {} has no {} address", p.name, family(&addr))
                                } else {
                                    format!("port {} is on {}", p.name, nets.join(", "))
                                };
                                self.err(
                                    &v.span(),
                                    format!(
                                        "next hop {addr} is not on a link of its port: {where_}"
                                    ),
                                );
                            }
                        }
                    }
                    Err(e) => self.err(&v.span(), e),
                }
            }
            out.push(Route {
                destination: destination.unwrap_or_default(),
                via,
                port: port.unwrap_or(0),
            });
        }
        out
    }

    pub(super) fn subnets(
        &mut self,
        subnets: &[S<SubnetConfig>],
        nacl_ids: &Ids<'_>,
    ) -> Vec<Subnet> {
        let mut out: Vec<Subnet> = Vec::new();
        // Every CIDR seen so far, for the overlap check.
        let mut nets = CidrSet::default();
        for (index, s) in subnets.iter().enumerate() {
            let s = s.get_ref();
            let id = s.id.get_ref();
            let mut cidrs = Vec::new();
            let errors_before = self.sink.len();
            let fields = [
                (Some(&s.cidr), true, "cidr"),
                (s.ipv6_cidr.as_ref(), false, "ipv6_cidr"),
            ];
            for (field, v4, name) in fields {
                let Some(field) = field else { continue };
                match parse::cidr(field.get_ref()) {
                    Ok(net) if net.addr().is_ipv4() != v4 => {
                        let want = if v4 { "an IPv4" } else { "an IPv6" };
                        self.err(
                            &field.span(),
                            format!("{name} must be {want} CIDR, got {net}"),
                        );
                    }
                    Ok(net) => {
                        if let Some((other, oid)) = nets.overlapping(&net) {
                            self.err(
                                &field.span(),
                                format!("{net} overlaps {other} of subnet {oid}"),
                            );
                        }
                        nets.insert(net, id);
                        cidrs.push(net);
                    }
                    Err(e) => self.err(&field.span(), e),
                }
            }
            if self.sink.len() != errors_before {
                self.broken_subnets.push(index);
            }
            let network_acl = s.network_acl.as_ref().map(|a| self.resolve(nacl_ids, a));
            out.push(Subnet {
                id: id.clone(),
                cidrs,
                network_acl,
            });
        }
        out
    }

    pub(super) fn claim(
        &mut self,
        owners: &mut HashMap<IpAddr, Owner>,
        addr: IpAddr,
        span: &Range<usize>,
        what: String,
        lb: bool,
    ) {
        if let Some(o) = owners.get(&addr).filter(|o| !(o.port && lb)) {
            let msg = format!(
                "address {addr} is already used by {} (line {})",
                o.what, o.line
            );
            self.err(span, msg);
        } else {
            let line = self.line(span);
            owners.insert(
                addr,
                Owner {
                    what,
                    line,
                    port: false,
                },
            );
        }
    }

    pub(super) fn instances(
        &mut self,
        instances: &[S<InstanceConfig>],
        subnet_ids: &Ids<'_>,
        subnets: &[Subnet],
        sg_ids: &Ids<'_>,
        facts: &[GroupFacts],
        owners: &mut HashMap<IpAddr, Owner>,
    ) -> Vec<Instance> {
        let mut out = Vec::new();
        for i in instances {
            let i = i.get_ref();
            let id = i.id.get_ref();
            let subnet = self.resolve(subnet_ids, &i.subnet);
            let subnet_ok = subnet_ids
                .get(i.subnet.get_ref())
                .filter(|s| !self.broken_subnets.contains(s))
                .and_then(|s| subnets.get(s));
            if i.addresses.get_ref().is_empty() {
                self.err(
                    &i.addresses.span(),
                    format!("instance {id} needs at least one address"),
                );
            }
            let mut addresses = Vec::new();
            for a in i.addresses.get_ref() {
                let addr = match parse::address(a.get_ref()) {
                    Ok(addr) => addr,
                    Err(e) => {
                        self.err(&a.span(), e);
                        continue;
                    }
                };
                if let Some(s) = subnet_ok {
                    let same_family: Vec<&IpNet> = s
                        .cidrs
                        .iter()
                        .filter(|n| n.addr().is_ipv4() == addr.is_ipv4())
                        .collect();
                    if same_family.is_empty() {
                        self.err(
                            &a.span(),
                            format!("{addr} is IPv6 but subnet {} has no ipv6_cidr", s.id),
                        );
                    } else if let Some(net) = same_family.iter().find(|n| n.contains(&addr)) {
                        if parse::is_v4_network_or_broadcast(net, addr) {
                            self.err(&a.span(), format!("{addr} is the network or broadcast address of subnet {} ({net})", s.id));
                        }
                    } else {
                        let nets: Vec<String> = same_family.iter().map(|n| n.to_string()).collect();
                        self.err(
                            &a.span(),
                            format!("{addr} is outside subnet {} ({})", s.id, nets.join(", ")),
                        );
                    }
                }
                self.claim(owners, addr, &a.span(), format!("instance {id}"), false);
                addresses.push(addr);
            }
            let security_groups = self.attach_groups(
                &format!("instance {id}"),
                &i.security_groups,
                sg_ids,
                facts,
                1,
            );
            out.push(Instance {
                id: id.clone(),
                subnet,
                addresses,
                security_groups,
            });
        }
        out
    }
}

/// CIDRs, to find one that overlaps a new CIDR (contains it or lies in it)
/// in logarithmic time rather than by a scan of all.
#[derive(Default)]
pub(crate) struct CidrSet<'a> {
    /// (IPv6, network address, prefix length) → the CIDR and its owner.
    nets: BTreeMap<(bool, u128, u8), (IpNet, &'a str)>,
}

impl<'a> CidrSet<'a> {
    fn key(net: &IpNet) -> (bool, u128, u8) {
        match net {
            IpNet::V4(n) => (false, u128::from(u32::from(n.network())), n.prefix_len()),
            IpNet::V6(n) => (true, u128::from(n.network()), n.prefix_len()),
        }
    }

    pub(crate) fn insert(&mut self, net: IpNet, owner: &'a str) {
        self.nets.entry(Self::key(&net)).or_insert((net, owner));
    }

    /// A CIDR of the set that overlaps `net`: one containing it (a
    /// shorter or equal prefix of it), else one inside it.
    pub(crate) fn overlapping(&self, net: &IpNet) -> Option<(IpNet, &'a str)> {
        let containing = (0..=net.prefix_len()).find_map(|len| {
            let outer = IpNet::new(net.network(), len).ok()?.trunc();
            self.nets.get(&Self::key(&outer))
        });
        let (v6, lo, _) = Self::key(net);
        let hi = match net {
            IpNet::V4(n) => u128::from(u32::from(n.broadcast())),
            IpNet::V6(n) => u128::from(n.broadcast()),
        };
        containing
            .or_else(|| {
                self.nets
                    .range((v6, lo, 0)..=(v6, hi, u8::MAX))
                    .next()
                    .map(|(_, v)| v)
            })
            .copied()
    }
}
