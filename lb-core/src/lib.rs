//! The load balancer's per-packet logic: packet views, security groups,
//! sessions, scheduling, NAT and the pipeline that ties them together.
//!
//! Nothing here does I/O or reads a clock: time is a parameter.
// No unsafe code: the classifier's SIMD steps are the `lb-simd` crate.
#![forbid(unsafe_code)]

pub mod acl;
pub mod conntrack;
pub mod flow;
pub mod model;
pub mod nat;
pub mod packet;
pub mod pipeline;
pub mod sched;
pub mod synproxy;

/// Time in nanoseconds since an origin the caller chooses (the data plane
/// uses a monotonic clock, `lbctl eval` the trace's own timestamps).
pub type Nanos = u64;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: Nanos = 1_000_000_000;
