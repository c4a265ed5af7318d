//! Hiding credentials in everything the configuration code renders: [`mask_url`] for
//! URLs and [`scrub`] for messages that may quote pieces of a URL.
//!
//! Both work from one over-approximation of where a password can sit in a URL
//! ([`secret_ranges`]), because a password with an unencoded `?`, `/`, `&` or `@` makes
//! the URL ambiguous: the parser cannot tell where the password ends, so the mask must
//! not rely on the parser either.

use std::ops::Range;

use super::MASK;

/// The query key whose value is a password (matched ignoring ASCII case).
const PASSWORD_KEY: &str = "password=";

/// Byte ranges of `url` that may hold a password, sorted and disjoint:
/// - the user info from its first `:` up to the *last* `@` of the whole URL (an
///   unencoded `/`, `?` or `@` in the password moves the real end of the user info
///   past where a parser would put it);
/// - everything after the first `password=` to the end of the URL (an unencoded `&` in
///   the value makes its end unknowable).
fn secret_ranges(url: &str) -> Vec<Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let mut ranges = Vec::with_capacity(2);
    if let Some(at) = rest.rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            ranges.push(start + colon + 1..start + at);
        }
    }
    // ASCII lower-casing keeps every byte index, so positions carry over to `url`.
    if let Some(i) = url.to_ascii_lowercase().find(PASSWORD_KEY) {
        ranges.push(i + PASSWORD_KEY.len()..url.len());
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// The pieces of `url` that may be (part of) a password; what [`scrub`] hides.
pub(crate) fn url_secrets(url: &str) -> Vec<&str> {
    secret_ranges(url).into_iter().map(|r| &url[r]).collect()
}

/// `url` with everything that may be a password replaced by `***`, for error messages
/// and logs.
///
/// Deliberately over-masks: everything from the first ':' after the scheme up to the
/// last '@' is hidden, so even a malformed URL with an unencoded '/', '?' or '@' in the
/// password never leaks it; so is everything after `password=` in the query, since an
/// unencoded '&' in the password leaves no way to know where it ends.
///
/// ```
/// use slotline::mask_url;
/// assert_eq!(mask_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
/// assert_eq!(mask_url("redis://h:1"), "redis://h:1");
/// assert_eq!(mask_url("redis://:a?b@h:1"), "redis://:***@h:1");
/// assert_eq!(mask_url("redis://h:1?db=2&password=a&b"), "redis://h:1?db=2&password=***");
/// ```
pub fn mask_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for r in secret_ranges(url) {
        out.push_str(&url[at..r.start]);
        out.push_str(MASK);
        at = r.end;
    }
    out.push_str(&url[at..]);
    out
}

/// `text` with every run of three or more characters that also occurs in one of
/// `secrets` replaced by `***`.
///
/// For messages built from pieces of a URL (a host, a port, a parameter name) that a
/// misplaced password may have ended up in. Runs shorter than three characters are
/// kept, so that single separators and digits shared with a password do not garble
/// the message.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    const MIN_RUN: usize = 3;
    let secrets: Vec<&str> = secrets
        .iter()
        .copied()
        .filter(|s| s.chars().nth(MIN_RUN - 1).is_some())
        .collect();
    if secrets.is_empty() {
        return text.to_string();
    }
    // Char boundaries of `text`, plus its end.
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = bounds.len() - 1;
    let found = |from: usize, to: usize| secrets.iter().any(|s| s.contains(&text[from..to]));
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars {
        let mut end = None;
        let mut j = i + MIN_RUN;
        // A run inside a secret stays inside it when shortened, so the longest run
        // starting at `i` is found by extending one character at a time.
        while j <= chars && found(bounds[i], bounds[j]) {
            end = Some(j);
            j += 1;
        }
        match end {
            Some(j) => {
                out.push_str(MASK);
                i = j;
            }
            None => {
                out.push_str(&text[bounds[i]..bounds[i + 1]]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_forms() {
        assert_eq!(mask_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(mask_url("redis://u@h"), "redis://u@h");
        assert_eq!(mask_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            mask_url("redis://h:1?password=x&db=1"),
            "redis://h:1?password=***"
        );
        assert_eq!(
            mask_url("redis://h:1?db=1&PASSWORD=x"),
            "redis://h:1?db=1&PASSWORD=***"
        );
        assert_eq!(mask_url("no scheme:pw@h"), "no scheme:***@h");
        // Unencoded '?', '/' and '@' in the user info.
        assert_eq!(mask_url("redis://:hunter2?x@h:1"), "redis://:***@h:1");
        assert_eq!(mask_url("redis://u:a/b@c@h:1/0"), "redis://u:***@h:1/0");
        // '@' in a query password: both rules overlap and are merged.
        assert_eq!(mask_url("redis://h:1?password=abc@def"), "redis://h:***");
        assert_eq!(mask_url(""), "");
    }

    #[test]
    fn scrub_hides_runs_of_three() {
        let secrets = url_secrets("redis://:hunter2?x@h:1");
        assert_eq!(secrets, vec!["hunter2?x"]);
        assert_eq!(
            scrub("\":hunter2\": empty host", &secrets),
            "\":***\": empty host"
        );
        assert_eq!(scrub("key \"ter\" and hu", &secrets), "key \"***\" and hu");
        assert_eq!(scrub("nothing here", &secrets), "nothing here");
        assert_eq!(scrub("abc", &["ab"]), "abc");
        assert_eq!(scrub("zé€x", &["é€x"]), "z***");
    }
}
