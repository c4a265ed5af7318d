//! Name resolution off the shard threads. A shard asks [`lookup`], which answers from a
//! process-wide cache and never blocks: a name not cached yet is resolved on a
//! short-lived `slotline-resolve` thread while the shard keeps serving other work and
//! asks again on its next turn. Cached answers are refreshed in the background once
//! stale. The engine resolves its seeds up front ([`resolve_now`], on the caller's
//! thread), so the first connections need not wait.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A resolved name is looked up again in the background after this long.
const FRESH: Duration = Duration::from_secs(30);
/// A failed lookup is tried again after this long.
const FAILED_FRESH: Duration = Duration::from_secs(1);

/// The answer of [`lookup`].
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// Every address the name resolved to, in the resolver's order.
    Ready(Arc<[SocketAddr]>),
    /// Being resolved; ask again shortly.
    Pending,
    /// The last lookup failed (the reason).
    Failed(String),
}

struct Entry {
    answer: Lookup,
    at: Instant,
    refreshing: bool,
}

type Cache = Mutex<HashMap<(String, u16), Entry>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// An IP literal needs no lookup.
fn literal(host: &str, port: u16) -> Option<Arc<[SocketAddr]>> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>()
        .ok()
        .map(|ip| Arc::from(vec![SocketAddr::new(ip, port)]))
}

fn resolve(host: &str, port: u16) -> Lookup {
    match (host, port).to_socket_addrs() {
        Ok(a) => {
            let a: Vec<SocketAddr> = a.collect();
            if a.is_empty() {
                Lookup::Failed(format!("{host} did not resolve"))
            } else {
                Lookup::Ready(a.into())
            }
        }
        Err(e) => Lookup::Failed(format!("{host} did not resolve: {e}")),
    }
}

fn store(host: &str, port: u16, answer: Lookup) {
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    // A refresh that failed keeps the last good answer (a resolver hiccup must not
    // take a reachable server away); it is tried again soon.
    let keep = matches!(answer, Lookup::Failed(_))
        && c.get(&(host.to_string(), port))
            .is_some_and(|e| matches!(e.answer, Lookup::Ready(_)));
    let e = c.entry((host.to_string(), port)).or_insert(Entry {
        answer: Lookup::Pending,
        at: Instant::now(),
        refreshing: false,
    });
    if keep {
        e.at = Instant::now() - FRESH + FAILED_FRESH;
    } else {
        e.answer = answer;
        e.at = Instant::now();
    }
    e.refreshing = false;
}

/// Resolves `host` now, on this thread, and caches the answer.
pub(crate) fn resolve_now(host: &str, port: u16) -> Lookup {
    if let Some(a) = literal(host, port) {
        return Lookup::Ready(a);
    }
    let answer = resolve(host, port);
    store(host, port, answer.clone());
    answer
}

/// The cached addresses of `host`, never blocking (see the module doc).
pub(crate) fn lookup(host: &str, port: u16) -> Lookup {
    if let Some(a) = literal(host, port) {
        return Lookup::Ready(a);
    }
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    let key = (host.to_string(), port);
    let (answer, start) = match c.get_mut(&key) {
        Some(e) => {
            let limit = match e.answer {
                Lookup::Failed(_) => FAILED_FRESH,
                _ => FRESH,
            };
            let start = !e.refreshing && e.at.elapsed() > limit;
            e.refreshing |= start;
            (e.answer.clone(), start)
        }
        None => {
            c.insert(
                key,
                Entry {
                    answer: Lookup::Pending,
                    at: Instant::now(),
                    refreshing: true,
                },
            );
            (Lookup::Pending, true)
        }
    };
    drop(c);
    if start {
        let name = host.to_string();
        let r = std::thread::Builder::new()
            .name("slotline-resolve".into())
            .spawn(move || store(&name, port, resolve(&name, port)));
        if let Err(e) = r {
            // No thread: the next lookup tries again.
            tracing::warn!(error = %e, "could not start a resolver thread");
            let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = c.get_mut(&(host.to_string(), port)) {
                e.refreshing = false;
            }
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_need_no_lookup() {
        match lookup("127.0.0.1", 7) {
            Lookup::Ready(a) => assert_eq!(&a[..], &["127.0.0.1:7".parse().unwrap()]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(lookup("::1", 7), Lookup::Ready(_)));
    }

    #[test]
    fn names_resolve_in_the_background() {
        let mut answer = lookup("localhost", 6379);
        let t0 = Instant::now();
        while matches!(answer, Lookup::Pending) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
            answer = lookup("localhost", 6379);
        }
        match answer {
            Lookup::Ready(a) => assert!(a.iter().all(|s| s.ip().is_loopback()), "{a:?}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve_now("no-such-host.invalid", 1),
            Lookup::Failed(_)
        ));
    }
}
