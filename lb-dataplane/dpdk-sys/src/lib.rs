//! Raw bindings to the system's DPDK (found with `pkg-config libdpdk`,
//! linked as shared libraries so that EAL can `dlopen` its drivers).
//!
//! Everything is generated at build time into `OUT_DIR` from `shim.h`; the
//! `lb_rte_*` functions come from `shim.c` and export DPDK's static-inline
//! fast path (RX/TX bursts, mbuf helpers, `rte_errno`, `rte_lcore_id()`).
//! The `LB_RTE_*` constants carry flag values that bindgen cannot expand.
//!
//! Without the `link` feature this crate is empty and needs no DPDK; the
//! safe layer is `lb_dataplane::io::dpdk`.

#[cfg(feature = "link")]
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    unnecessary_transmutes,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks
)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

#[cfg(feature = "link")]
pub use bindings::*;
