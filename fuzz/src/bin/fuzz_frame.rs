//! `cargo afl fuzz` target: [`lb_fuzz::frame`].

fn main() {
    afl::fuzz!(|data: &[u8]| lb_fuzz::frame(data));
}
