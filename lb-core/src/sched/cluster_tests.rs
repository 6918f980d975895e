//! Nodes of a cluster: each builds its schedulers on its own, from the
//! same configuration, and must pick the same server for the same flow,
//! before, during and after a server's outage.

use std::net::IpAddr;

use super::*;
use crate::flow::FlowKey;
use crate::model::proto;

const NAMES: [&str; 5] = ["ecs01", "ecs02", "ecs03", "198.19.2.104:80", "ecs05"];
const WEIGHTS: [u8; 5] = [100, 100, 50, 100, 100];

/// Client flows to a VIP, both families.
fn flows(n: u32) -> Vec<FlowKey> {
    (0..n)
        .map(|i| {
            let (src, dst) = if i % 4 == 3 {
                (
                    IpAddr::from([0x2001, 0xdb8, 0x30, 0, 0, 0, 0, i as u16 + 2]),
                    IpAddr::from([0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 0x10]),
                )
            } else {
                (
                    IpAddr::from([198, 18, 30, (i % 200) as u8 + 2]),
                    IpAddr::from([198, 18, 20, 10]),
                )
            };
            FlowKey {
                src,
                dst,
                proto: if i % 5 == 0 { proto::UDP } else { proto::TCP },
                sport: 10_000 + (i * 7919 % 50_000) as u16,
                dport: 80,
            }
        })
        .collect()
}

fn picks(s: &mut dyn Scheduler, up: &[bool], flows: &[FlowKey]) -> Vec<Option<usize>> {
    flows.iter().map(|f| s.pick(up, flow_hash(f))).collect()
}

fn node() -> Maglev {
    Maglev::new(&WEIGHTS, &NAMES, DEFAULT_TABLE_SIZE)
}

/// A fixed function: the values do not depend on the build, the CPU or
/// the process. A change here changes which server every flow goes to,
/// and a cluster running two versions would disagree during an upgrade.
#[test]
fn the_flow_hash_is_pinned() {
    let f = flows(4);
    assert_eq!(
        flow_hash(&f[0]),
        0x240a_2b23_9a59_9598,
        "{:#x}",
        flow_hash(&f[0])
    );
    assert_eq!(
        flow_hash(&f[1]),
        0x0d0e_0da3_7f9c_5ecb,
        "{:#x}",
        flow_hash(&f[1])
    );
    assert_eq!(
        flow_hash(&f[3]),
        0xb4f6_38b6_09de_e4f9,
        "{:#x}",
        flow_hash(&f[3])
    );
    // Every field counts.
    let mut g = f[1];
    g.sport += 1;
    assert_ne!(flow_hash(&g), flow_hash(&f[1]));
    g = f[1];
    g.proto = proto::UDP;
    assert_ne!(flow_hash(&g), flow_hash(&f[1]));
}

/// The table of a fixed server list is pinned likewise (a digest of its
/// 65537 entries).
#[test]
fn the_maglev_table_is_pinned() {
    let mut m = node();
    let digest = m.table(&[true; 5]).fold(0u64, |h, s| {
        (h ^ s.map_or(u64::MAX, |s| s as u64)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    assert_eq!(digest, 0x908b_5a76_d4e7_de30, "{digest:#x}");
}

#[test]
fn nodes_pick_the_same_server_for_the_same_flow_through_an_outage() {
    let flows = flows(20_000);
    // Two nodes, each with its schedulers built on its own (as `build`
    // does for every worker of every node).
    let mut a = node();
    let mut b = build(SchedulerKind::Maglev, &WEIGHTS, &NAMES);
    let all = [true; 5];
    let before = picks(&mut a, &all, &flows);
    assert_eq!(before, picks(b.as_mut(), &all, &flows));
    assert!(before.iter().all(Option::is_some));
    let table_before: Vec<_> = a.table(&all).collect();

    // ecs03 goes down on both nodes (their health checks agree).
    let mut down = all;
    down[2] = false;
    let during = picks(&mut a, &down, &flows);
    assert_eq!(during, picks(b.as_mut(), &down, &flows));
    assert!(during.iter().all(|p| p.is_some() && *p != Some(2)));
    // Flows of the other servers stay where they were, nearly all.
    let kept: Vec<_> = before
        .iter()
        .zip(&during)
        .filter(|(b, _)| **b != Some(2))
        .collect();
    let moved = kept.iter().filter(|(b, d)| b != d).count();
    assert!(moved * 100 < kept.len(), "{moved} of {} moved", kept.len());

    // It comes back: the very same table, so the very same picks.
    let after = picks(&mut a, &all, &flows);
    assert_eq!(after, before);
    assert_eq!(picks(b.as_mut(), &all, &flows), before);
    assert_eq!(a.table(&all).collect::<Vec<_>>(), table_before);
}
