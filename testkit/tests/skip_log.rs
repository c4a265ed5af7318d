//! `skip!` records the skip where CI looks (`SLOTLINE_SKIP_LOG`) under the test's own
//! name, and returns from the test. The only test of this binary: it sets the variable.

use slotline_testkit::harness::{TestDir, SKIP_LOG_ENV};

fn skipping_body(cannot_run: bool, ran_past: &mut bool) {
    if cannot_run {
        slotline_testkit::skip!("reason {} with\ttab", 42);
    }
    *ran_past = true;
}

#[test]
fn skip_is_recorded_under_the_test_name() {
    let dir = TestDir::new();
    let log = dir.join("skips.log");
    let outer = std::env::var_os(SKIP_LOG_ENV);
    std::env::set_var(SKIP_LOG_ENV, &log);
    let mut ran_past = false;
    skipping_body(true, &mut ran_past);
    skipping_body(true, &mut ran_past);
    match outer {
        Some(v) => std::env::set_var(SKIP_LOG_ENV, v),
        None => std::env::remove_var(SKIP_LOG_ENV),
    }
    assert!(!ran_past, "skip! must return from the test");
    skipping_body(false, &mut ran_past);
    assert!(ran_past);
    let text = std::fs::read_to_string(&log).expect("the skip log was written");
    let line = "skip_log::skip_is_recorded_under_the_test_name\treason 42 with tab\n";
    assert_eq!(text, line.repeat(2), "one line per skip, appended");
}
