//! The load balancer's data plane (`lbd`) and its control tool (`lbctl`).

pub mod access;
pub mod access_log;
pub mod alloc;
pub mod cluster;
pub mod conn;
pub mod control;
pub mod daemon;
pub mod eval;
pub mod exception;
pub mod health;
pub mod io;
pub mod l2;
pub mod lint;
pub mod metrics;
pub mod neigh;
pub mod reloader;
pub mod servers;
pub mod sockfile;
pub mod stats_text;
