//! The load balancer's data plane (`lbd`) and its control tool (`lbctl`).

pub mod eval;
pub mod lint;
pub mod io;
pub mod control;
pub mod daemon;
pub mod health;
pub mod l2;
pub mod neigh;
pub mod stats_text;
