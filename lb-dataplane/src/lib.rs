//! The load balancer's data plane (`lbd`) and its control tool (`lbctl`).

pub mod eval;
pub mod lint;
pub mod io;
