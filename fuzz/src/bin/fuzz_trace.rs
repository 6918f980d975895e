//! `cargo afl fuzz` target: [`lb_fuzz::trace`].

fn main() {
    afl::fuzz!(|data: &[u8]| lb_fuzz::trace(data));
}
