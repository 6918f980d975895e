//! The library part of the benchmarks: what integration tests call
//! in-process (the traffic generator of `bench gen`), and `bench
//! dataplane` with its traffic process.

pub mod dataplane;
pub mod gen;
