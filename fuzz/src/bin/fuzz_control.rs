//! `cargo afl fuzz` target: [`lb_fuzz::control`].

fn main() {
    afl::fuzz!(|data: &[u8]| lb_fuzz::control(data));
}
