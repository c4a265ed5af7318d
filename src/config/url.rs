//! Redis URLs: `redis://`, `rediss://`, `redis-cluster://`, `unix://`, several seeds,
//! credentials and database, and masking the password for logs and errors.

use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::redact::{mask_url, scrub, url_secrets};
use super::{Mode, Secret, ServerAddr};
use crate::addr::parse_seed;
use crate::error::{Error, Result};

/// The pieces of a Redis URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// `Some(Cluster)` for `redis-cluster://`; `None` when the URL does not say.
    pub mode: Option<Mode>,
    /// Every address listed, in order.
    pub seeds: Vec<ServerAddr>,
    /// `rediss://`.
    pub tls: bool,
    /// Percent-decoded user name; `None` if absent or empty.
    pub username: Option<String>,
    /// Percent-decoded password; `None` if absent or empty.
    pub password: Option<Secret>,
    /// Database from the path (`/N`) or `?db=N`.
    pub database: Option<u32>,
    /// `redis-sentinel://`: the name of the master the sentinels (`seeds`) watch.
    pub sentinel: Option<String>,
}

/// Parses a Redis URL as LMCache and the enhanced connector accept them.
///
/// Forms: `redis://[user:pass@]host[:port][/db]`, `rediss://...` (TLS),
/// `redis://h1:p1,h2:p2` (several seeds), `redis-cluster://h1:p1,h2:p2`,
/// `unix:///path/to.sock[?db=N]` (also `redis+unix://`), IPv6 as `[::1]:6379`.
/// The query may carry `db`, `username` and `password`.
///
/// `redis-sentinel://[user:pass@]h1:p1,h2:p2[/name]` lists sentinels (port 26379 by
/// default) watching the master called `name`. LMCache's own sentinel connector takes
/// the same URL without the name and reads it from env `REDIS_SERVICE_NAME`, default
/// `redismaster`; so does this parser when the path is empty. The credentials are the
/// data nodes' (sentinels are asked without AUTH, as LMCache does). Errors are [`Error::Url`] with
/// the password masked.
///
/// ```
/// use slotline::{parse_url, Mode, ServerAddr};
/// let p = parse_url("redis-cluster://a:7000,b:7001").unwrap();
/// assert_eq!(p.mode, Some(Mode::Cluster));
/// assert_eq!(p.seeds[1], ServerAddr::Tcp { host: "b".into(), port: 7001 });
/// let e = parse_url("redis://u:hunter2@host:0").unwrap_err().to_string();
/// assert!(e.contains("u:***@host") && !e.contains("hunter2"));
/// ```
pub fn parse_url(url: &str) -> Result<ParsedUrl> {
    // Reasons quote pieces of the URL (a host, a port, a parameter name); a password
    // with an unencoded '?', '/', '&' or '@' can end up in any of them.
    let secrets = url_secrets(url);
    let fail = |reason: &str| Error::Url {
        url: mask_url(url),
        reason: scrub(reason, &secrets),
    };
    if url.is_empty() {
        return Err(fail("empty URL"));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(fail("URL contains whitespace"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(fail(
            "missing scheme; expected redis://, rediss://, redis-cluster:// or unix://",
        ));
    };
    let mut sentinel = false;
    let (tls, mode, unix) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, None, false),
        "rediss" => (true, None, false),
        "redis-cluster" => (false, Some(Mode::Cluster), false),
        "unix" | "redis+unix" => (false, None, true),
        "redis-sentinel" | "redis+sentinel" => {
            sentinel = true;
            (false, Some(Mode::Standalone), false)
        }
        "rediss-sentinel" => {
            return Err(fail("TLS through Redis Sentinel is not supported yet; use redis-sentinel:// or point a rediss:// URL at the master"));
        }
        _ => {
            return Err(fail(&format!(
                "unknown scheme {scheme:?}; expected redis://, rediss://, redis-cluster:// or unix://"
            )));
        }
    };

    // Standard URL structure: the authority ends at the first '/' or '?', and the
    // user info is split off at the last '@' inside it (a password with '/' or '?' must
    // be percent-encoded).
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(auth_end);
    let (path, query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (after, None),
    };
    if path.contains('@') {
        // Most likely a password with an unencoded '/' or '?': echoing the pieces
        // would leak it. A socket path holding '@' must encode it too, or the
        // remainder of such a password would become the socket path.
        return Err(fail("unexpected '@' after the host; percent-encode '/', '?' and '@' in the user name and password (%2F, %3F, %40)"));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };

    let mut username = None;
    let mut password = None;
    if let Some(ui) = userinfo {
        let (user, pass) = match ui.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        username = decode_text(user).map_err(|r| fail(&format!("user name: {r}")))?;
        if let Some(p) = pass {
            password = decode_text(p).map_err(|r| fail(&format!("password: {r}")))?;
        }
    }

    let mut database = None;
    let mut master_name = None;
    let seeds = if sentinel {
        if hosts.is_empty() {
            return Err(fail("missing sentinel host"));
        }
        let seeds = hosts
            .split(',')
            .map(|h| {
                parse_seed(h).map(|a| match a {
                    // A sentinel's port, not a data node's, when none is written.
                    ServerAddr::Tcp { host, port } if !h.ends_with(&format!(":{port}")) => {
                        ServerAddr::Tcp {
                            host,
                            port: SENTINEL_PORT,
                        }
                    }
                    a => a,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(|r| fail(&r))?;
        let name_text = path.strip_prefix('/').unwrap_or(path);
        let name = match decode_text(name_text).map_err(|r| fail(&format!("master name: {r}")))? {
            Some(n) => n,
            None => std::env::var(SERVICE_NAME_ENV)
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string()),
        };
        if name.contains(['/', '\r', '\n', ' ']) {
            return Err(fail(&format!(
                "master name {name:?} contains '/', a space or a line break"
            )));
        }
        master_name = Some(name);
        seeds
    } else if unix {
        if !hosts.is_empty() && !hosts.eq_ignore_ascii_case("localhost") {
            // The "host" is not echoed: with an unencoded '/' in a password it holds
            // part of the password.
            return Err(fail(
                "a unix:// URL takes no host; write unix:///path/to.sock",
            ));
        }
        if path.is_empty() || path == "/" {
            return Err(fail("missing socket path; write unix:///path/to.sock"));
        }
        let bytes = percent_decode(path).map_err(|r| fail(&format!("socket path: {r}")))?;
        vec![ServerAddr::Unix {
            path: PathBuf::from(std::ffi::OsString::from_vec(bytes)),
        }]
    } else {
        if hosts.is_empty() {
            return Err(fail("missing host"));
        }
        let seeds = hosts
            .split(',')
            .map(parse_seed)
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(|r| fail(&r))?;
        let db_text = path.strip_prefix('/').unwrap_or(path);
        if !db_text.is_empty() {
            database = Some(parse_db(db_text).map_err(|r| fail(&r))?);
        }
        seeds
    };

    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "db" => {
                    let db = parse_db(v).map_err(|r| fail(&r))?;
                    if database.is_some_and(|d| d != db) {
                        return Err(fail(&format!(
                            "database given twice: in the path and as db={v}"
                        )));
                    }
                    database = Some(db);
                }
                "username" | "user" | "password" => {
                    let (what, slot) = match k {
                        "password" => ("password", &mut password),
                        _ => ("user name", &mut username),
                    };
                    let given = decode_text(v).map_err(|r| fail(&format!("{what}: {r}")))?;
                    if slot.is_some() && given.is_some() && *slot != given {
                        return Err(fail(&format!("{what} given twice, with different values")));
                    }
                    *slot = slot.take().or(given);
                }
                _ if k.contains(['@', ':']) => {
                    return Err(fail("unexpected '@' or ':' in the query; percent-encode '?' and '@' in the user name and password (%3F, %40)"));
                }
                _ => {
                    return Err(fail(&format!(
                        "unknown URL parameter {k:?}; supported: db, username, password"
                    )));
                }
            }
        }
    }

    Ok(ParsedUrl {
        mode,
        seeds,
        tls,
        username,
        password: password.map(Secret::from),
        database,
        sentinel: master_name,
    })
}

/// Sentinels' default port.
pub const SENTINEL_PORT: u16 = 26379;
/// Where LMCache's sentinel connector reads the master's name from.
pub const SERVICE_NAME_ENV: &str = "REDIS_SERVICE_NAME";
/// LMCache's default master name.
pub const DEFAULT_SERVICE_NAME: &str = "redismaster";

fn parse_db(s: &str) -> std::result::Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("database {s:?} is not a number"));
    }
    s.parse::<u32>()
        .map_err(|_| format!("database {s} is out of range"))
}

/// Percent-decodes URL text; `None` for the empty string, as redis-py does.
fn decode_text(s: &str) -> std::result::Result<Option<String>, String> {
    let bytes = percent_decode(s)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| "not valid UTF-8 after percent-decoding".to_string())?;
    Ok(if text.is_empty() { None } else { Some(text) })
}

fn percent_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).and_then(|&c| (c as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    // Two hex digits are at most 0xFF, so the cast is exact.
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                // The escaped text is not echoed: it may be part of a password.
                _ => return Err("invalid percent-escape (expected %XX)".to_string()),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::tcp;
    use super::*;

    #[track_caller]
    fn url_err(url: &str, reason_part: &str) {
        let e = parse_url(url).expect_err(url);
        match &e {
            Error::Url { reason, .. } => {
                assert!(
                    reason.contains(reason_part),
                    "{url}: reason {reason:?} lacks {reason_part:?}"
                )
            }
            other => panic!("{url}: expected Error::Url, got {other:?}"),
        }
    }

    // --- URLs ---

    #[test]
    fn rediss_turns_tls_on_for_every_seed() {
        let p = parse_url("rediss://h1:7000,h2:7001").unwrap();
        assert!(p.tls);
        assert_eq!(p.seeds, vec![tcp("h1", 7000), tcp("h2", 7001)]);
        assert!(parse_url("REDISS://[::1]:6390").unwrap().tls);
        let c = crate::Config::from_url("rediss://127.0.0.1:6390").unwrap();
        assert!(c.tls && !c.tls_insecure);
        assert_eq!(
            (c.tls_ca_file, c.tls_cert_file, c.tls_key_file),
            (None, None, None)
        );
        // Redis serves no TLS on a unix socket.
        let c = crate::Config {
            tls: true,
            ..crate::Config::from_url("unix:///tmp/r.sock").unwrap()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("TLS needs a TCP address"), "{e}");
    }

    #[test]
    fn url_forms() {
        let p = parse_url("redis://localhost:6379").unwrap();
        assert_eq!(p.seeds, vec![tcp("localhost", 6379)]);
        assert_eq!((p.mode, p.tls, p.database), (None, false, None));
        assert_eq!((p.username, p.password), (None, None));

        assert_eq!(
            parse_url("redis://cache").unwrap().seeds,
            vec![tcp("cache", 6379)]
        );
        assert_eq!(
            parse_url("REDIS://cache/").unwrap().seeds,
            vec![tcp("cache", 6379)]
        );

        let p = parse_url("redis://alice:s3cr%40t@db.example.com:6380/3").unwrap();
        assert_eq!(p.username.as_deref(), Some("alice"));
        assert_eq!(p.password.as_deref(), Some("s3cr@t"));
        assert_eq!(p.database, Some(3));
        assert_eq!(p.seeds, vec![tcp("db.example.com", 6380)]);

        let p = parse_url("redis://:pw@host").unwrap();
        assert_eq!((p.username, p.password.as_deref()), (None, Some("pw")));
        let p = parse_url("redis://onlyuser@host").unwrap();
        assert_eq!(
            (p.username.as_deref(), p.password),
            (Some("onlyuser"), None)
        );
        // An unencoded '@' in the password still works: the last '@' ends user info.
        let p = parse_url("redis://u:p@ss@host").unwrap();
        assert_eq!(p.password.as_deref(), Some("p@ss"));

        let p = parse_url("rediss://u:p@redis-123.cloud.example:16379").unwrap();
        assert!(p.tls);
        assert_eq!(p.seeds, vec![tcp("redis-123.cloud.example", 16379)]);

        let p = parse_url("redis://localhost:7000,localhost:7001,localhost:7002").unwrap();
        assert_eq!(p.mode, None);
        assert_eq!(
            p.seeds,
            vec![
                tcp("localhost", 7000),
                tcp("localhost", 7001),
                tcp("localhost", 7002)
            ]
        );

        let p = parse_url("redis-cluster://h1:7000,h2:7001").unwrap();
        assert_eq!(p.mode, Some(Mode::Cluster));
        assert_eq!(p.seeds, vec![tcp("h1", 7000), tcp("h2", 7001)]);

        let p = parse_url("unix:///var/run/redis/redis.sock").unwrap();
        assert_eq!(
            p.seeds,
            vec![ServerAddr::Unix {
                path: "/var/run/redis/redis.sock".into()
            }]
        );
        let p = parse_url("unix:///tmp/r.sock?db=2").unwrap();
        assert_eq!(p.database, Some(2));
        assert_eq!(
            p.seeds,
            vec![ServerAddr::Unix {
                path: "/tmp/r.sock".into()
            }]
        );
        let p = parse_url("redis+unix:///tmp/r%20s.sock").unwrap();
        assert_eq!(
            p.seeds,
            vec![ServerAddr::Unix {
                path: "/tmp/r s.sock".into()
            }]
        );
        let p = parse_url("unix://:pw@/tmp/r.sock?db=1").unwrap();
        assert_eq!(p.password.as_deref(), Some("pw"));
        let p = parse_url("unix:///tmp/r.sock?password=pw&username=bob").unwrap();
        assert_eq!(p.password.as_deref(), Some("pw"));
        assert_eq!(p.username.as_deref(), Some("bob"));

        let p = parse_url("redis://[::1]:6379").unwrap();
        assert_eq!(p.seeds, vec![tcp("::1", 6379)]);
        assert_eq!(p.seeds[0].to_string(), "[::1]:6379");
        assert_eq!(
            parse_url("redis://[fe80::1%eth0]").unwrap().seeds,
            vec![tcp("fe80::1%eth0", 6379)]
        );
        assert_eq!(
            parse_url("redis://10.0.0.5:7001").unwrap().seeds[0].to_string(),
            "10.0.0.5:7001"
        );
        assert_eq!(parse_url("redis://h/0?db=0").unwrap().database, Some(0));
    }

    #[test]
    fn sentinel_urls() {
        let p = parse_url("redis-sentinel://u:pw@s1:26380,s2,[::1]:6379/cache?db=2").unwrap();
        assert_eq!(p.mode, Some(Mode::Standalone));
        assert_eq!(p.sentinel.as_deref(), Some("cache"));
        assert_eq!(
            p.seeds,
            vec![tcp("s1", 26380), tcp("s2", SENTINEL_PORT), tcp("::1", 6379)]
        );
        assert_eq!(
            (p.username.as_deref(), p.password.as_deref()),
            (Some("u"), Some("pw"))
        );
        assert_eq!(p.database, Some(2));
        // LMCache's form: no name in the URL; REDIS_SERVICE_NAME or "redismaster".
        let p = parse_url("redis+sentinel://localhost:26379,localhost:26380").unwrap();
        let want = std::env::var(SERVICE_NAME_ENV)
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        assert_eq!(p.sentinel, Some(want));
        let c = crate::Config::from_url("redis-sentinel://a:1,b:2/m").unwrap();
        assert_eq!(
            (c.mode, c.sentinel_master.as_deref()),
            (Mode::Standalone, Some("m"))
        );
        assert_eq!(c.seeds.len(), 2);
        assert!(parse_url("redis://h").unwrap().sentinel.is_none());
    }

    #[test]
    fn url_errors() {
        url_err("", "empty URL");
        url_err("redis://host :6379", "whitespace");
        url_err(" redis://host", "whitespace");
        url_err("localhost:6379", "missing scheme");
        url_err("http://host", "unknown scheme \"http\"");
        url_err("lm://localhost:65432", "unknown scheme");
        url_err("rediss-sentinel://h1:26379", "TLS through Redis Sentinel");
        url_err("redis-sentinel://", "missing sentinel host");
        url_err("redis-sentinel://h:1/a%20b", "contains");
        url_err("redis://", "missing host");
        url_err("redis://:6379", "empty host");
        url_err("redis://u:p@", "missing host");
        url_err("redis://h1:1,,h2:2", "empty host in the server list");
        url_err("redis://h1:1,", "empty host in the server list");
        url_err("redis://host:0", "port 0");
        url_err("redis://host:", "empty port");
        url_err("redis://host:abc", "port \"abc\" is not a number");
        url_err("redis://host:-1", "not a number");
        url_err("redis://host:65536", "out of range");
        url_err("redis://host:99999999999999999999", "out of range");
        url_err("redis://host/abc", "database \"abc\" is not a number");
        url_err("redis://host/1/2", "is not a number");
        url_err("redis://host/99999999999", "out of range");
        url_err("redis://host/1?db=2", "database given twice");
        url_err("redis://host?db=x", "is not a number");
        url_err(
            "redis://host?timeout=3",
            "unknown URL parameter \"timeout\"",
        );
        url_err("redis://::1:6379", "brackets");
        url_err("redis://[::1", "missing ']'");
        url_err("redis://[nothex]:1", "is not an IPv6 address");
        url_err("redis://[::1]x", "expected ':port'");
        url_err("redis://ho$t:1", "invalid character");
        url_err("redis://u:%zz@host", "password: invalid percent-escape");
        url_err("redis://%ff@host", "not valid UTF-8");
        url_err("unix://", "missing socket path");
        url_err("unix:///", "missing socket path");
        url_err("unix://somehost/tmp/x.sock", "takes no host");
        url_err("unix://:@/pw/@/tmp/s.sock", "unexpected '@'");
        assert_eq!(
            parse_url("unix:///tmp/a%40b.sock").unwrap().seeds,
            vec![ServerAddr::Unix {
                path: "/tmp/a@b.sock".into()
            }]
        );
    }

    #[test]
    fn url_errors_mask_password() {
        for url in [
            "redis://user:hunter2@host:0",
            "redis://user:hunter2@host:abc/x",
            "redis://:hunter2@",
            "redis://u:hun/ter2@host",
            "redis://u:hun?ter2@host",
            "unix://u:hun/ter2@/tmp/s",
            "redis://u:hunter2@host?password=hunter2&db=x",
            "unix:///tmp/s?password=hunter2&bogus=1",
            "redis-sentinel://u:hunter2@h:0/m",
            // An unencoded '?' in the user info, '&' in a query password.
            "redis://:hunter2?x@h:1",
            "redis://h:1?password=hunter2&hunter2",
            "redis://h:1?password=hun&hunter2=1",
        ] {
            let e = parse_url(url).expect_err(url);
            let msg = e.to_string();
            assert!(!msg.contains("hunter2"), "{msg}");
            assert!(msg.contains("***"), "{msg}");
        }
    }
}
