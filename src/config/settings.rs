//! Explicit settings (from YAML) merged with a parsed URL into a validated [`Config`].

use super::keys::Settings;
use super::{Config, Mode, ParsedUrl, ServerAddr, MASK};
use crate::error::{Error, Result};
use crate::layout::KeyLayout;

/// Merges a parsed URL with explicit settings and validates the result.
pub(super) fn build(url: ParsedUrl, mut s: Settings) -> Result<Config> {
    let mode = match (url.mode, s.mode.take()) {
        (Some(Mode::Cluster), Some(Mode::Standalone)) => {
            return Err(Error::config(
                "extra_config.redis_mode",
                Mode::Standalone,
                "conflicts with the redis-cluster:// URL",
            ));
        }
        (_, Some(m)) | (Some(m), None) => m,
        // Only the enhanced connector writes several seeds in a redis:// URL, and for
        // it they are always cluster seeds.
        (None, None) if url.seeds.len() > 1 => Mode::Cluster,
        (None, None) => Mode::Standalone,
    };
    if mode == Mode::Standalone && url.seeds.len() > 1 && url.sentinel.is_none() {
        return Err(Error::config(
            "extra_config.redis_mode",
            Mode::Standalone,
            format!(
                "the URL lists {} servers; standalone mode needs exactly one (use redis_mode: cluster for cluster seeds)",
                url.seeds.len()
            ),
        ));
    }
    let tcp_seeds = url
        .seeds
        .iter()
        .all(|a| matches!(a, ServerAddr::Tcp { .. }));
    // redis-cluster:// is LMCache's own cluster connector (plain layout); redis://
    // seeds in cluster mode are the enhanced connector's, which uses hash tags.
    let default_layout = if mode == Mode::Cluster && url.mode.is_none() && tcp_seeds {
        KeyLayout::Hashtag
    } else {
        KeyLayout::Lmcache
    };

    let username = one(
        "redis_username",
        url.username,
        s.username.take().flatten(),
        |b| b.clone(),
        |a| format!("the user name {a:?}"),
    )?;
    let password = one(
        "redis_password",
        url.password,
        s.password.take().flatten(),
        |_| MASK.to_string(),
        |_| "the password".to_string(),
    )?;
    let (db, given_db) = (url.database, s.database.take());
    let database = one("redis_database", db, given_db, u32::to_string, |a| {
        format!("database {a}")
    })?;

    let use_tls = s.tls.take().unwrap_or(false);
    let mut cfg = Config {
        mode,
        tls: url.tls || use_tls,
        seeds: url.seeds,
        username,
        password,
        database: database.unwrap_or(0),
        key_layout: default_layout,
        sentinel_master: url.sentinel,
        ..Config::default()
    };
    s.apply(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}

/// The URL's value or the one given under `key`; both given must be equal, else the
/// error shows the given one and names the URL's (`in_url`).
fn one<T: PartialEq>(
    key: &str,
    from_url: Option<T>,
    given: Option<T>,
    shown: impl Fn(&T) -> String,
    in_url: impl Fn(&T) -> String,
) -> Result<Option<T>> {
    match (from_url, given) {
        (Some(a), Some(b)) if a != b => Err(Error::config(
            &format!("extra_config.{key}"),
            shown(&b),
            format!("differs from {} in the URL; give it once", in_url(&a)),
        )),
        (a, b) => Ok(a.or(b)),
    }
}
