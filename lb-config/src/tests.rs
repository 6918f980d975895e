//! Diagnostics tests: each check, its exact position and message.

use super::*;

fn errs(text: &str) -> Vec<String> {
    match parse_str(text, "t.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const ALB_SEED: &str = include_str!("../../examples/alb-seed.toml");

#[test]
fn alb_seed_parses() {
    let cfg = match parse_str(ALB_SEED, "alb-seed.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let lines: Vec<u32> = cfg.security_groups[0]
        .rules
        .iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, vec![38, 47]);
}
