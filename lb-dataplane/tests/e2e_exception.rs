//! The exception path on AF_PACKET ports, end to end in the namespace
//! topology (scripts/netns.sh): see `exception_common`.
//!
//! Needs root, iproute2, ethtool, curl, nginx, python3 and nft (CI
//! installs them); elsewhere it prints `SKIPPED …` and passes, or fails
//! under CI.

mod common;
mod exception_common;

use common::{seed_config, Topo};
use exception_common::{keep_kernel_off, run_case, with_tap};

#[test]
fn control_traffic_reaches_the_kernel_through_the_tap_on_af_packet() {
    if let Some(why) = exception_common::unsupported() {
        common::skip::skip(&why);
        return;
    }
    let _g = common::lock();
    let mut t = Topo::up();
    keep_kernel_off(&t, "lb-ext");
    let config = with_tap(&seed_config("", "", (100, 100)));
    assert!(config.contains("tap = \"lbd-ext\""), "{config}");
    t.start_lbd_with(&config, &["--metrics", "127.0.0.1:9464"]);
    run_case(&mut t);
}
