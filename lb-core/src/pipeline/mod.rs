//! The per-packet decision, shared by the data-plane workers and by
//! `lbctl eval`: one function from (frame, time, configuration snapshot,
//! worker state) to a verdict.
//!
//! ```
//! use lb_core::model::Config;
//! use lb_core::pipeline::{Snapshot, Worker, AllUp, RxInfo};
//! let snap = Snapshot::compile(Config::default(), 1);
//! let mut worker = Worker::new(0, 1, 1024, 1024);
//! let mut frame = vec![0u8; 10]; // too short for Ethernet
//! let v = worker.process(&mut frame, RxInfo::default(), 0, &snap, &AllUp);
//! assert!(v.is_drop());
//! ```
//!
//! The rooms:
//! - `snapshot.rs`: [`Snapshot`], the compiled configuration the workers
//!   read, and its routes;
//! - `worker.rs`: [`Worker`], one thread's state, and the per-packet path
//!   (`process`, `process_burst`, the session's packets, the rewrite);
//! - `admit.rs`: the security rules a new flow or a session's packet must
//!   pass (security groups, listener ACLs, network ACLs, source checks);
//! - `open.rs`: opening a listener or routed session (server, local port,
//!   early drop);
//! - `syn_proxy.rs`: the SYN proxy's part;
//! - `session.rs`: [`Flow`], what a session remembers;
//! - `verdict.rs`: [`Verdict`], [`Reason`] and [`DropKind`], and their
//!   words for `lbctl eval`;
//! - `stats.rs`: a worker's counters;
//! - `owner.rs`: which worker owns a flow;
//! - `fragment.rs`: IP fragments, which follow their first fragment;
//! - `servers.rs`: slow start and drain: the schedulers' effective
//!   weights, and the sessions a drain deadline ends;
//! - `limits.rs`: listener limits (`max_connections`, new sessions per
//!   second);
//! - `steer.rs`: RSS steering, so that the NIC puts both directions of a
//!   FULLNAT session on its owner's queue;
//! - `access_log.rs`: the records of session starts and ends that
//!   listeners' access logs are written from.

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::acl::policy::{
    Decision, GroupMembers, InterfaceKind, NaclPolicy, Origin, RuleSet, SgPolicy,
};
use crate::conntrack::{tcp_valid_flags, Dir, SegmentCheck, SessionTable, TcpSegment, Timeouts};
use crate::flow::FlowKey;
use crate::model::{proto, AclMode, BackendSgPolicy, Config, Direction, SourceCheck};
use crate::nat::PortAllocator;
use crate::packet::{self, L4Csum, ParseError, Parsed};
use crate::sched::{self, Scheduler};
use crate::synproxy;
use crate::{Nanos, NANOS_PER_SEC};

mod access_log;
mod admit;
mod fragment;
mod limits;
mod open;
mod owner;
mod servers;
mod session;
mod snapshot;
mod stats;
mod steer;
mod syn_proxy;
#[cfg(test)]
mod tests;
mod verdict;
mod worker;

pub use access_log::{EndReason, RecordKind, SessionRecord, SESSION_LOG_CAPACITY};
pub use fragment::{FragSteer, FragmentCounts, Released};
pub use limits::{LimitBoard, LimitKind};
pub use owner::{flow_hash, frame_owner, frame_owner_on, owner};
pub use session::Flow;
pub use snapshot::{Hop, Snapshot};
pub use stats::{PortDrops, SessionCount, SessionCounts, Stats};
pub use steer::owner_on;
pub use verdict::{DropKind, Forward, IcmpAnswer, LocalKind, Reason, Verdict};
pub use worker::Worker;
// What the rooms share among themselves.
use admit::*;
use session::*;
use worker::*;

/// The most frames [`Worker::process_burst`] handles in one call.
pub const BURST_MAX: usize = 64;

/// How long the expiry sweep takes to walk a session table once.
const REAP_SWEEP: Nanos = NANOS_PER_SEC;

/// The most slots (of each family) one call of [`Worker::housekeep`]
/// examines: about 20 µs of work.
const REAP_STEP: u64 = 2048;

/// The fewest slots a sweep step examines (smaller steps wait for more
/// time to pass), unless the whole slab is smaller.
const REAP_MIN_STEP: u64 = 64;

/// How many expired sessions a full table reaps to make room for a new
/// one before it drops a half-open session.
const REAP_ON_FULL: usize = 4;

/// A received frame and what the port knows about it, for
/// [`Worker::process_burst`].
#[derive(Debug)]
pub struct Frame<'a> {
    pub data: &'a mut [u8],
    pub rx: RxInfo,
}

/// Facts about a received frame that only the port knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxInfo {
    /// The L4 checksum is partial (the kernel deferred it, as veth does).
    pub csum_partial: bool,
    /// The port (index into `cfg.ports`) the frame arrived on; `None`
    /// when not known, which skips the port's VLAN and source checks.
    pub port: Option<u32>,
}

/// Which servers are up: health checks in `lbd`, `@health` lines in
/// `lbctl eval`.
pub trait Health {
    fn is_up(&self, group: usize, server: usize) -> bool;

    /// A number that changes whenever [`Health::weight`] or
    /// [`Health::must_close`] changes for some server: workers read it once
    /// per burst and the rest only when it moved (see
    /// [`Worker::follow_servers`]).
    fn servers_epoch(&self) -> u64 {
        0
    }

    /// The effective weight of a server (slow start, drain), in
    /// 1/[`sched::WEIGHT_SCALE`] units of its configured weight; `None`:
    /// the configuration's (its weight, 0 if it is draining).
    fn weight(&self, group: usize, server: usize) -> Option<u32> {
        let _ = (group, server);
        None
    }

    /// Whether the open sessions of a server are to end now (its drain
    /// deadline passed).
    fn must_close(&self, group: usize, server: usize) -> bool {
        let _ = (group, server);
        false
    }
}

/// Every server is up.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllUp;

impl Health for AllUp {
    fn is_up(&self, _group: usize, _server: usize) -> bool {
        true
    }
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Seconds as [`Nanos`].
pub fn secs(s: f64) -> Nanos {
    // Truncation is the intent: traces give non-negative seconds.
    (s * NANOS_PER_SEC as f64).round() as u64
}

fn idx32(i: usize) -> u32 {
    u32::try_from(i).expect("configuration indices fit in u32")
}
