//! The library part of the benchmarks: what integration tests call
//! in-process (the traffic generator of `bench gen`).

pub mod gen;
