//! What a test does when the machine lacks one of its prerequisites (root,
//! a tool): on a developer's machine it says so and passes; under CI it
//! fails, so that a test that did not run never counts as one that passed.
//!
//! Shared by the test targets of lb-dataplane and bench (`#[path]`).

#![allow(dead_code)]

use std::io::Write as _;

/// Whether a test whose prerequisite is missing must fail rather than pass:
/// `CI` is `true` or `1`, or `LB_REQUIRE_ALL` is `1`. `var` reads the
/// environment.
pub fn required_by(var: impl Fn(&str) -> Option<String>) -> bool {
    let on = |name: &str, values: &[&str]| {
        var(name).is_some_and(|v| values.contains(&v.trim().to_ascii_lowercase().as_str()))
    };
    on("CI", &["true", "1"]) || on("LB_REQUIRE_ALL", &["1", "true"])
}

/// [`required_by`] for this process's environment.
pub fn required() -> bool {
    required_by(|name| std::env::var(name).ok())
}

/// The current test can not run here, because of `reason`: panics with it
/// under CI (see [`required`]); otherwise prints a `SKIPPED` line that
/// libtest's output capture does not hide, and the caller returns.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if required() {
        panic!(
            "{test}: {reason}; a prerequisite is missing and CI=true or \
             LB_REQUIRE_ALL=1 forbids skipping"
        );
    }
    // Straight to the file descriptor: libtest captures `eprintln!` of a
    // passing test, and this line is the only trace that it did not run.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
