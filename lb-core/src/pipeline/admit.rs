//! The security rules, in one place to check them against the
//! specification (`../shared/seeds/`, cited by file): what admits a new
//! listener flow ([`listener_admits`], then [`Snapshot::backend_admits`]),
//! a new routed flow ([`routed_admits`]), a session's packet after a
//! reload ([`recheck`]) and every session packet ([`nacl_check`]), where a
//! source may come from ([`source_admits`]), and who may send an ICMP
//! error about a session ([`error_fits_path`]).

use super::*;

impl Snapshot {
    /// Checks whether the security groups and network ACL of the backend
    /// `instance` admit `key` (a packet the load balancer forwards to it)
    /// under `backend_sg_policy`. `transfer_client_ip` listeners are never
    /// checked (the documents: "not limited by network ACL and security
    /// group rules"); network ACLs are skipped when the load balancer's
    /// source address lies in the backend's subnet.
    ///
    /// Seeds (`elb-backend-security-group-and-network-acl.txt`): "Security
    /// group rules of backend servers must allow traffic from the backend
    /// subnet where the load balancer is created to the backend servers.";
    /// "If the load balancer is in the same subnet as the backend servers,
    /// network ACL rules will not take effect."; and, for
    /// `backend_sg_policy = "bypass"`, "If a dedicated load balancer has
    /// Layer 4 listeners and IP as a backend is disabled, security group
    /// and network ACL rules will be ignored". `vpc-security-group-overview.txt`:
    /// "Traffic from load balancers is not limited by network ACL and
    /// security group rules if: Transfer Client IP Address is enabled for
    /// the listeners of a load balancer."
    pub fn backend_admits(
        &self,
        instance: usize,
        key: &FlowKey,
        transfer_client_ip: bool,
    ) -> Result<(), Reason> {
        if self.cfg.platform.backend_sg_policy == BackendSgPolicy::Bypass || transfer_client_ip {
            return Ok(());
        }
        if !self.in_subnet_of(instance, key.src) {
            if let Some((_, nacl)) = self.nacl_of(instance) {
                let d = nacl.evaluate(Direction::Ingress, key);
                if !d.allowed() {
                    return Err(Reason::Policy(d));
                }
            }
        }
        let d = self.instance_policy[instance].evaluate(Direction::Ingress, key);
        if d.allowed() {
            Ok(())
        } else {
            Err(Reason::Policy(d))
        }
    }
}

/// Whether `key` is link-scoped IPv6 traffic: from a link-local or the
/// unspecified address (multicast listener reports, duplicate address
/// detection) to a link-local or link-scope multicast address. It routes
/// nowhere and is never forwarded, so the link it arrived on is its route.
fn link_scoped(key: &FlowKey) -> bool {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (key.src, key.dst) else {
        return false;
    };
    let (s, d) = (src.segments()[0], dst.segments()[0]);
    let link_local = |first: u16| first & 0xffc0 == 0xfe80;
    let src_ok = link_local(s) || src.is_unspecified();
    let dst_ok = link_local(d) || (d & 0xff00 == 0xff00 && d & 0x000f <= 2);
    src_ok && dst_ok
}

/// Reverse-path validation of `key`'s source arriving on `port`, whose
/// `source_check` is `check`.
///
/// The seeds are silent on spoofed sources; the rule is the anti-spoofing
/// a cloud network gives its instances (and Linux's `rp_filter`), since
/// every rule that trusts a source address rests on it: "strict", the
/// source routes back through the port it arrived on; "loose", through
/// some port. Link-scoped IPv6 ([`link_scoped`]) routes nowhere and passes.
pub(super) fn source_admits(
    snap: &Snapshot,
    port: u32,
    check: SourceCheck,
    key: &FlowKey,
) -> Result<(), Reason> {
    let src = key.src;
    let ok = match check {
        SourceCheck::Off => true,
        SourceCheck::Loose => snap.route(src).is_some(),
        SourceCheck::Strict => snap.route(src).is_some_and(|h| h.port == port),
    } || link_scoped(key);
    if ok {
        Ok(())
    } else {
        Err(Reason::SpoofedSource { port })
    }
}

/// A listener's access-control list, then the load balancer's groups.
/// Returns the groups' decision, if the load balancer has groups.
///
/// Seeds: "You can use access control to limit which IP addresses are
/// allowed or denied to access the listener."
/// (`elb-backend-security-group-and-network-acl.txt`); "To regulate access
/// from requests, you can configure a security group to implement access
/// control based on protocols, ports, and IP addresses."
/// (`alb-security-group-listener-ports.txt`).
pub(super) fn listener_admits(
    snap: &Snapshot,
    lbi: usize,
    li: usize,
    key: &FlowKey,
) -> Result<Option<Decision>, Reason> {
    let lb = &snap.cfg.load_balancers[lbi];
    if let Some(acl) = lb.listeners[li].acl {
        let listed = snap.cfg.prefix_lists[acl.prefix_list]
            .entries
            .iter()
            .any(|n| n.contains(&key.src));
        let pass = match acl.mode {
            AclMode::Whitelist => listed,
            AclMode::Blacklist => !listed,
        };
        if !pass {
            return Err(Reason::ListenerAcl {
                lb: idx32(lbi),
                listener: idx32(li),
                mode: acl.mode,
            });
        }
    }
    match snap.lb_policy(lbi) {
        Some(policy) => {
            let d = policy.evaluate(Direction::Ingress, key);
            if d.allowed() {
                Ok(Some(d))
            } else {
                Err(Reason::Policy(d))
            }
        }
        None => Ok(None),
    }
}

/// Whether an ICMP error from `outer.src` to `outer.dst` may speak about
/// `quoted`, a packet of a session as it left the data plane (its source
/// is the sender, as the session translated it). The error must go to
/// that sender, and come from the quoted destination itself, from the
/// next hop toward it, or from a router on its side: an address that is
/// none of ours, no instance's or server's (those are endpoints, on no
/// one else's path), and routed through the same port as the quoted
/// destination. So a backend cannot speak for another backend's session,
/// nor have an error relayed to a host outside it.
pub(super) fn error_fits_path(snap: &Snapshot, outer: &FlowKey, quoted: &FlowKey) -> bool {
    if outer.dst != quoted.src {
        return false;
    }
    if outer.src == quoted.dst {
        return true;
    }
    let Some(toward) = snap.route(quoted.dst) else {
        return false;
    };
    if outer.src == toward.next_hop {
        return true;
    }
    if snap.is_own_address(outer.src) || snap.backend_addrs.contains(&outer.src) {
        return false;
    }
    snap.route(outer.src).is_some_and(|h| h.port == toward.port)
}

/// Whether `p` is an ICMP "fragmentation needed" or ICMPv6 "packet too big".
fn is_path_mtu(icmp: Option<(u8, u8)>, key: &FlowKey) -> bool {
    matches!(
        (key.proto, icmp),
        (proto::ICMP, Some((3, 4))) | (proto::ICMPV6, Some((2, _)))
    )
}

/// The checks of a new routed flow: the source instance's egress (special
/// rules, security groups, network ACL), then the destination instance's
/// ingress. Returns the reason to report on success.
///
/// Seeds (`security-group-rules-and-matching.txt`): "In a VPC, security
/// group rules are categorized as inbound and outbound, controlling both
/// public and internal network traffic."; "TCP port 25 is restricted by
/// default for security reasons." (`platform.restrict_smtp`). For the
/// subnets' network ACLs (`elb-backend-security-group-and-network-acl.txt`):
/// "To control traffic in and out of a subnet, you can associate a network
/// ACL with the subnet." Traffic within one subnet does not cross its ACL.
pub(super) fn routed_admits(
    snap: &Snapshot,
    icmp: Option<(u8, u8)>,
    key: &FlowKey,
) -> Result<Reason, Reason> {
    let src_inst = snap.instance_at(key.src);
    let dst_inst = snap.instance_at(key.dst);
    if src_inst.is_none() && dst_inst.is_none() {
        return Err(Reason::NotForUs);
    }
    let pmtu = is_path_mtu(icmp, key);
    let mut reason = Reason::Session { lb: None };
    if let Some(si) = src_inst {
        if let Some((_, nacl)) = snap.nacl_of(si).filter(|_| !snap.in_subnet_of(si, key.dst)) {
            let d = nacl.evaluate(Direction::Egress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
        }
        reason = if pmtu {
            Reason::PathMtu
        } else if key.dst == snap.cfg.platform.metadata_address {
            Reason::Metadata
        } else if snap.cfg.platform.restrict_smtp && key.proto == proto::TCP && key.dport == 25 {
            return Err(Reason::RestrictSmtp);
        } else {
            let d = snap.instance_policy(si).evaluate(Direction::Egress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
            Reason::Policy(d)
        };
    }
    if let Some(di) = dst_inst {
        if let Some((_, nacl)) = snap.nacl_of(di).filter(|_| !snap.in_subnet_of(di, key.src)) {
            let d = nacl.evaluate(Direction::Ingress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
        }
        reason = if pmtu {
            Reason::PathMtu
        } else {
            let d = snap.instance_policy(di).evaluate(Direction::Ingress, key);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
            Reason::Policy(d)
        };
    }
    Ok(reason)
}

/// Re-admits a session under a new configuration: its first packet after
/// a reload passes the rules a new flow would, or the session ends.
///
/// Seed (`security-group-rules-and-matching.txt`): "To avoid disrupting
/// established sessions when changing a basic security group association,
/// first add the ECS instance or elastic network interface to the new
/// security group, wait about 10 seconds, and then remove it from the old
/// one." A session lives on the rules that admitted it only until they
/// change.
pub(super) fn recheck(
    snap: &Snapshot,
    orig: &FlowKey,
    orig_out: &FlowKey,
    flow: &Flow,
) -> Result<(), Reason> {
    match flow.listener() {
        Some(_) => {
            let Some((lbi, li)) = snap.listener_at(orig.dst, orig.proto, orig.dport) else {
                return Err(Reason::NoListener);
            };
            listener_admits(snap, lbi, li, orig)?;
            let listener = &snap.cfg.load_balancers[lbi].listeners[li];
            if let Some(inst) = snap.instance_at(orig_out.dst) {
                snap.backend_admits(inst, orig_out, listener.transfer_client_ip)?;
            }
            Ok(())
        }
        None => {
            // ICMP errors never make sessions, so no ICMP type is needed.
            routed_admits(snap, None, orig).map(|_| ())
        }
    }
}

/// Network ACLs on every packet of a session (they are stateless).
///
/// Seeds: "Default network ACL rules deny all inbound and outbound
/// traffic." (`elb-backend-security-group-and-network-acl.txt`), whereas
/// "Security groups are stateful. [...] After a connection is established,
/// the security group permits all traffic within that session."
/// (`security-group-rules-and-matching.txt`): a session carries its
/// security-group decision, not its network ACLs' (`../shared/DESIGN.md`:
/// "the subnet's network ACL (stateless)"), so both directions are checked
/// on every packet.
pub(super) fn nacl_check(
    snap: &Snapshot,
    flow: &Flow,
    key: &FlowKey,
    out: &FlowKey,
    dir: Dir,
) -> Result<(), Reason> {
    let check = |inst: Option<usize>,
                 direction: Direction,
                 k: &FlowKey,
                 other: IpAddr|
     -> Result<(), Reason> {
        let Some(i) = inst else { return Ok(()) };
        if snap.in_subnet_of(i, other) {
            return Ok(());
        }
        if let Some((_, nacl)) = snap.nacl_of(i) {
            let d = nacl.evaluate(direction, k);
            if !d.allowed() {
                return Err(Reason::Policy(d));
            }
        }
        Ok(())
    };
    match flow.listener() {
        Some((lbi, li, _, _)) => {
            let transfer = snap
                .cfg
                .load_balancers
                .get(lbi as usize)
                .and_then(|lb| lb.listeners.get(li as usize))
                .is_some_and(|l| l.transfer_client_ip);
            if snap.cfg.platform.backend_sg_policy == BackendSgPolicy::Bypass || transfer {
                return Ok(());
            }
            // Only the backend side of the session is inside a subnet of ours.
            match dir {
                Dir::Orig => check(snap.instance_at(out.dst), Direction::Ingress, out, out.src),
                Dir::Reply => check(snap.instance_at(key.src), Direction::Egress, key, key.dst),
            }
        }
        None => {
            check(snap.instance_at(key.src), Direction::Egress, key, key.dst)?;
            check(snap.instance_at(key.dst), Direction::Ingress, key, key.src)
        }
    }
}
