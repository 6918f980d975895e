//! `cargo afl fuzz` target: [`lb_fuzz::config`].

fn main() {
    afl::fuzz!(|data: &[u8]| lb_fuzz::config(data));
}
