//! Property test: a password never shows in what the configuration code renders (error
//! Display and Debug, `Config`'s Debug, log lines), wherever it is given and however
//! badly it is quoted.
//!
//! A password is checked by its 3-character pieces. Only pieces holding one of the
//! `MARKERS` are checked: they never occur in slotline's own messages, so a hit is a
//! leak and not, say, "red" of "redis://" shared with the password.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use super::yaml::from_yaml_with_env;
use super::{parse_url, Config};

/// Characters that never occur in slotline's messages (see the module comment).
const MARKERS: &str = "QJZKWéж";
/// The characters that break URLs and YAML, plus a few harmless ones.
const OTHERS: &str = "?/&@:%=#,;!*~+-_.[]{}'\" 0189abc";

fn password() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = MARKERS.chars().chain(OTHERS.chars()).collect();
    proptest::collection::vec(proptest::sample::select(alphabet), 3..24)
        .prop_map(|cs| cs.into_iter().collect())
}

/// The 3-character pieces of `p` that hold a marker.
fn pieces(p: &str) -> Vec<String> {
    let cs: Vec<char> = p.chars().collect();
    cs.windows(3)
        .filter(|w| w.iter().any(|c| MARKERS.contains(*c)))
        .map(|w| w.iter().collect())
        .collect()
}

/// Every rendering of `r` that a user or a log could see.
fn renderings(r: &crate::Result<Config>) -> Vec<String> {
    match r {
        Ok(cfg) => vec![format!("{cfg:?}")],
        Err(e) => vec![e.to_string(), format!("{e:?}")],
    }
}

/// A YAML double-quoted scalar holding `s`.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Collects the message and fields of every event into one string.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        event.record(&mut Fields(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Every input form for `p`, each run through the code that reads it; returns what was
/// rendered, log lines included.
fn render_all(p: &str) -> Vec<(String, String)> {
    let mut inputs: Vec<(String, crate::Result<Config>)> = Vec::new();
    let urls = [
        format!("redis://:{p}@h:1"),
        format!("redis://user:{p}@h:1/0"),
        format!("rediss://u:{p}@h1:1,h2:2"),
        format!("unix://:{p}@/tmp/s.sock"),
        format!("redis://h:1?password={p}"),
        format!("redis://h:1?password={p}&db=0"),
        format!("redis://h:1?db=0&password={p}"),
        format!("redis://u@h:1?password={p}&username=u"),
    ];
    let mut parsed = Vec::new();
    for url in &urls {
        parsed.push((url.clone(), parse_url(url).map(|u| format!("{u:?}"))));
        inputs.push((url.clone(), Config::from_url(url)));
        let q = quoted(url);
        for text in [
            format!("remote_url: {q}\n"),
            format!("remote_url: [{q}]\n"),
            format!("remote_url:\n  - {q}\n  - redis://h:2\n"),
            format!("extra_config:\n  url: [{q}]\n"),
            format!("extra_config:\n  url: {q}\n  remote_url: redis://other:1\n"),
            // Both set: one log line (same server) or another (different servers).
            format!("remote_url: {q}\nextra_config:\n  url: {q}\n"),
            format!("remote_url: redis://x:1\nextra_config:\n  url: {q}\n"),
        ] {
            inputs.push((text.clone(), from_yaml_with_env(&text, None)));
        }
    }
    let q = quoted(p);
    for text in [
        format!("remote_url: redis://h:1\nextra_config:\n  redis_password: {q}\n"),
        format!("remote_url: redis://h:1\nextra_config:\n  redis_password: {p}\n"),
        format!("remote_url: redis://h:1\nextra_config:\n  redis_password: [{q}]\n"),
        format!("remote_url: redis://:x@h:1\nextra_config:\n  redis_password: {q}\n"),
        format!("remote_url: redis://h:1\nextra_config:\n  redis_username: u\n  redis_password: {q}\n  chunk_size: 0\n"),
    ] {
        inputs.push((text.clone(), from_yaml_with_env(&text, None)));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (input, r) in &inputs {
        for s in renderings(r) {
            out.push((input.clone(), s));
        }
    }
    for (input, r) in parsed {
        match r {
            Ok(s) => out.push((input, s)),
            Err(e) => out.extend([(input.clone(), e.to_string()), (input, format!("{e:?}"))]),
        }
    }
    out
}

/// Runs `render_all` with a subscriber capturing the log lines it emits.
fn render_all_logged(p: &str) -> Vec<(String, String)> {
    let capture = Capture::default();
    let mut out = tracing::subscriber::with_default(capture.clone(), || render_all(p));
    let logged = capture.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    out.push(("(log lines)".to_string(), logged));
    out
}

#[test]
fn log_capture_works() {
    // The capture must see the config code's log lines, or the property proves nothing
    // about them.
    let text = "remote_url: redis://:QJZ@h:1\nextra_config:\n  url: redis://:QJZ@h:1\n";
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        from_yaml_with_env(text, None).unwrap();
    });
    let logged = capture.0.lock().unwrap().clone();
    assert!(logged.contains("written twice"), "{logged:?}");
    assert!(
        logged.contains("redis://:***@h:1") && !logged.contains("QJZ"),
        "{logged:?}"
    );
}

#[test]
fn known_leaks() {
    for p in ["QJZ?x", "QJ&ZK", "QJZ@K/W", "@/Q/"] {
        check(p);
    }
}

#[track_caller]
fn check(p: &str) {
    let pieces = pieces(p);
    for (input, shown) in render_all_logged(p) {
        for piece in &pieces {
            assert!(
                !shown.contains(piece.as_str()),
                "password {p:?}: piece {piece:?} shows in {shown:?} (input {input:?})"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn passwords_never_rendered(p in password()) {
        check(&p);
    }
}
