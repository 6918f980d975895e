//! The compiled configuration the workers read: the rule sets, the
//! listeners and addresses in hash maps, the routes longest prefix first,
//! and the ports' ingress checks.

use super::*;

/// A compiled, immutable configuration: what the workers read.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub cfg: Config,
    pub members: GroupMembers,
    lb_policy: Vec<Option<SgPolicy>>,
    pub(super) instance_policy: Vec<SgPolicy>,
    nacl_policy: Vec<NaclPolicy>,
    /// (VIP, IP protocol, port) → (load balancer, listener).
    listeners: HashMap<(IpAddr, u8, u16), (u32, u32)>,
    /// Local (FULLNAT source) address → load balancer.
    pub(super) local_addrs: HashMap<IpAddr, u32>,
    /// Per load balancer, its local addresses of each family (`[IPv4, IPv6]`).
    pub(super) locals_by_family: Vec<[Vec<IpAddr>; 2]>,
    /// Every address of the data plane's own (port, VIP, local), for the
    /// one lookup each packet without a session needs: whether it is a VIP
    /// (`true`) or another of ours (`false`).
    own: HashMap<IpAddr, bool>,
    instance_by_addr: HashMap<IpAddr, u32>,
    /// Instance and server addresses: the inside of the data plane.
    pub(super) backend_addrs: HashSet<IpAddr>,
    /// Longest prefix first.
    routes: Vec<RouteEntry>,
    pub timeouts: Timeouts,
    /// Per port (index into `cfg.ports`), what it checks on arrival.
    pub(super) ingress: Vec<Ingress>,
    /// Which worker owns the fragments of a datagram (written by the
    /// workers as they hand first fragments out).
    pub(super) frag_steer: FragSteer,
    /// The open sessions of each limited listener per worker.
    pub(super) limit_board: LimitBoard,
}

/// A port's checks on arriving frames, compact for the per-packet path.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ingress {
    vlan: Option<u16>,
    pub(super) check: SourceCheck,
}

impl Ingress {
    /// Whether the frame's tagging fits the port: an untagged port takes
    /// untagged frames only; a port with `vlan = N`, frames with exactly
    /// one 802.1Q tag of VLAN N (any priority). An 802.1ad or a second tag
    /// shows as a tag's EtherType after the first.
    pub(super) fn admits_tagging(&self, p: &Parsed) -> bool {
        p.vlan == self.vlan && !packet::is_vlan_tag(p.ethertype)
    }
}

#[derive(Debug, Clone, Copy)]
struct RouteEntry {
    /// The prefix as 128-bit value and mask (IPv4 mapped into IPv6).
    bits: u128,
    mask: u128,
    v6: bool,
    via: Option<IpAddr>,
    port: u32,
}

impl RouteEntry {
    fn new(net: IpNet, via: Option<IpAddr>, port: u32) -> RouteEntry {
        let len = match net {
            IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
            IpNet::V6(n) => u32::from(n.prefix_len()),
        };
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        RouteEntry {
            bits: crate::flow::addr_bits(net.network()) & mask,
            mask,
            v6: matches!(net, IpNet::V6(_)),
            via,
            port,
        }
    }
}

/// Where a forwarded packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Index into `cfg.ports`.
    pub port: u32,
    /// The neighbour to send to (the destination itself when on-link).
    pub next_hop: IpAddr,
}

impl Snapshot {
    /// Compiles a configuration that `lb-config` has validated (every index
    /// in range); `generation` tells sessions which rules admitted them.
    pub fn compile(cfg: Config, generation: u64) -> Snapshot {
        let limit_board = LimitBoard::new(&cfg);
        let members = GroupMembers::new(&cfg);
        let lb_policy = cfg
            .load_balancers
            .iter()
            .map(|lb| {
                (!lb.security_groups.is_empty()).then(|| {
                    SgPolicy::compile(
                        &cfg,
                        &members,
                        &lb.security_groups,
                        InterfaceKind::LoadBalancer,
                    )
                })
            })
            .collect();
        let instance_policy = cfg
            .instances
            .iter()
            .map(|i| SgPolicy::compile(&cfg, &members, &i.security_groups, InterfaceKind::Instance))
            .collect();
        let nacl_policy = (0..cfg.network_acls.len())
            .map(|a| NaclPolicy::compile(&cfg, &members, a))
            .collect();

        let mut listeners = HashMap::new();
        let mut vips = HashSet::new();
        let mut local_addrs = HashMap::new();
        for (li, lb) in cfg.load_balancers.iter().enumerate() {
            for &vip in &lb.vips {
                vips.insert(vip);
                for (ni, l) in lb.listeners.iter().enumerate() {
                    listeners.insert(
                        (vip, l.protocol.ip_protocol(), l.port),
                        (idx32(li), idx32(ni)),
                    );
                }
            }
            for &a in &lb.local_addresses {
                local_addrs.insert(a, idx32(li));
            }
        }
        let locals_by_family = cfg
            .load_balancers
            .iter()
            .map(|lb| {
                let of = |v6: bool| -> Vec<IpAddr> {
                    let all = lb.local_addresses.iter().copied();
                    all.filter(|a| a.is_ipv6() == v6).collect()
                };
                [of(false), of(true)]
            })
            .collect();
        let mut instance_by_addr = HashMap::new();
        for (ii, inst) in cfg.instances.iter().enumerate() {
            for &a in &inst.addresses {
                instance_by_addr.insert(a, idx32(ii));
            }
        }
        let mut backend_addrs: HashSet<IpAddr> = instance_by_addr.keys().copied().collect();
        for g in &cfg.server_groups {
            for s in &g.servers {
                backend_addrs.extend(s.addresses.iter().copied());
            }
        }
        let mut port_addrs = HashSet::new();
        let mut routes = Vec::new();
        for (pi, port) in cfg.ports.iter().enumerate() {
            for net in &port.addresses {
                port_addrs.insert(net.addr());
                routes.push(RouteEntry::new(net.trunc(), None, idx32(pi)));
            }
        }
        for r in &cfg.routes {
            routes.push(RouteEntry::new(r.destination, r.via, idx32(r.port)));
        }
        // Longest prefix first; on-link entries before configured ones of the same length.
        routes.sort_by_key(|r| std::cmp::Reverse(r.mask.count_ones()));
        let timeouts = Timeouts::from_session_timeout(cfg.platform.session_timeout_s)
            .with_unreplied(cfg.platform.unreplied_timeout_s);
        let ingress = cfg
            .ports
            .iter()
            .map(|p| Ingress {
                vlan: p.vlan,
                check: p.source_check,
            })
            .collect();
        let own = port_addrs
            .iter()
            .chain(local_addrs.keys())
            .map(|&a| (a, false))
            .chain(vips.iter().map(|&a| (a, true)))
            .collect();
        Snapshot {
            generation,
            cfg,
            members,
            lb_policy,
            instance_policy,
            nacl_policy,
            listeners,
            local_addrs,
            locals_by_family,
            own,
            instance_by_addr,
            backend_addrs,
            routes,
            timeouts,
            ingress,
            frag_steer: FragSteer::default(),
            limit_board,
        }
    }

    /// Every compiled rule set: the load balancers' and instances' security
    /// groups and the network ACLs, each direction.
    pub fn rule_sets(&self) -> impl Iterator<Item = &RuleSet> {
        fn sg(p: &SgPolicy) -> [&RuleSet; 2] {
            [&p.ingress, &p.egress]
        }
        fn nacl(p: &NaclPolicy) -> [&RuleSet; 2] {
            [&p.ingress, &p.egress]
        }
        self.lb_policy
            .iter()
            .flatten()
            .chain(&self.instance_policy)
            .flat_map(sg)
            .chain(self.nacl_policy.iter().flat_map(nacl))
    }

    /// Completes the rule sets' staged classifiers (see
    /// [`Classifier::build_staged`](crate::acl::Classifier::build_staged)):
    /// a compiled snapshot classifies at once, with the tables built in well
    /// under a millisecond per 1000 rules; this then searches for their
    /// final tables, which can take 100 ms or more on large sets, and the
    /// workers take them as they come. Answers never change, only their
    /// speed. Returns how many rule sets it refined.
    pub fn refine(&self) -> usize {
        self.rule_sets().filter(|r| r.refine()).count()
    }

    /// The route toward `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<Hop> {
        let bits = crate::flow::addr_bits(dst);
        self.routes
            .iter()
            .find(|r| bits & r.mask == r.bits && r.v6 == dst.is_ipv6())
            .map(|r| Hop {
                port: r.port,
                next_hop: r.via.unwrap_or(dst),
            })
    }

    /// The checks of the port a frame arrived on (`None`: not known).
    #[inline]
    pub(super) fn ingress_of(&self, port: Option<u32>) -> Option<(u32, Ingress)> {
        let port = port?;
        Some((port, *self.ingress.get(port as usize)?))
    }

    /// Whether `addr` is one of the data plane's own: a port address, a VIP
    /// or a local address.
    pub fn is_own_address(&self, addr: IpAddr) -> bool {
        self.own.contains_key(&addr)
    }

    /// Whether `addr` is a load balancer's VIP.
    pub fn is_vip(&self, addr: IpAddr) -> bool {
        self.own.get(&addr) == Some(&true)
    }

    /// All addresses the data plane answers ARP / neighbour solicitations for.
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.own.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn instance_at(&self, addr: IpAddr) -> Option<usize> {
        self.instance_by_addr.get(&addr).map(|&i| i as usize)
    }

    pub fn listener_at(&self, vip: IpAddr, ip_proto: u8, port: u16) -> Option<(usize, usize)> {
        self.listeners
            .get(&(vip, ip_proto, port))
            .map(|&(l, n)| (l as usize, n as usize))
    }

    pub fn instance_policy(&self, instance: usize) -> &SgPolicy {
        &self.instance_policy[instance]
    }

    pub fn lb_policy(&self, lb: usize) -> Option<&SgPolicy> {
        self.lb_policy[lb].as_ref()
    }

    /// The network ACL of the subnet of `instance`, if it has one.
    pub(super) fn nacl_of(&self, instance: usize) -> Option<(usize, &NaclPolicy)> {
        let subnet = &self.cfg.subnets[self.cfg.instances[instance].subnet];
        subnet.network_acl.map(|a| (a, &self.nacl_policy[a]))
    }

    pub(super) fn in_subnet_of(&self, instance: usize, addr: IpAddr) -> bool {
        let subnet = &self.cfg.subnets[self.cfg.instances[instance].subnet];
        subnet.cidrs.iter().any(|c| c.contains(&addr))
    }
}
