//! Reading YAML values leniently, as PyYAML (which LMCache uses) would: `yes`/`on`,
//! `4_194_304`, numbers given as strings; every error names the key and the value.
//! The readers at the top are the key table's `read` column.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use yaml_rust2::yaml::{Hash as Mapping, Yaml as Value};

use super::{mask_url, Deadlines, IoBackend, Mode, Secret, MASK};
use crate::error::{Error, Result};
use crate::layout::KeyLayout;
use crate::priority::{Priority, PriorityWeights};

/// A key set by hand from several sources (the URL, `cores`, the TTL's).
pub(super) fn by_hand<T>(_: &Section<'_>, _: &str) -> Result<Option<T>> {
    Ok(None)
}

/// A value of a key table type as read from one key of a [`Section`]; `None`: not given.
pub(super) trait FromSetting: Sized {
    fn read(s: &Section<'_>, key: &str) -> Result<Option<Self>>;
}

macro_rules! from_setting {
    ($($t:ty => |$s:ident, $k:ident| $e:expr;)*) => {$(
        impl FromSetting for $t {
            fn read($s: &Section<'_>, $k: &str) -> Result<Option<Self>> {
                $e
            }
        }
    )*};
}

from_setting! {
    bool => |s, key| s.boolean(key);
    u32 => |s, key| s.int(key);
    usize => |s, key| s.int(key);
    Option<usize> => |s, key| Ok(s.int(key)?.map(Some));
    String => |s, key| s.text(key, Shown::Plain);
    // A name or a password: empty means not given, and no error shows a password.
    Option<String> => |s, key| Ok(s.text(key, Shown::Plain)?.filter(|t| !t.is_empty()).map(Some));
    Option<Secret> => |s, key| {
        let t = s.text(key, Shown::Secret)?.filter(|t| !t.is_empty());
        Ok(t.map(|t| Some(Secret::from(t))))
    };
    Option<PathBuf> => |s, key| {
        let t = s.text(key, Shown::Plain)?.filter(|t| !t.is_empty());
        Ok(t.map(|t| Some(PathBuf::from(t))))
    };
    Duration => |s, key| Ok(s.int::<u64>(key)?.map(Duration::from_millis));
    Mode => |s, key| s.parsed(key);
    IoBackend => |s, key| s.parsed(key);
    KeyLayout => |s, key| s.parsed(key);
    PriorityWeights => |s, key| s.get(key).map(parse_priority_weights).transpose();
    Deadlines => |s, key| s.get(key).map(parse_deadlines).transpose();
}

/// `tls_insecure_skip_verify`, or its older name `tls_insecure`; both given must agree.
pub(super) fn tls_insecure(extra: &Section<'_>, _key: &str) -> Result<Option<bool>> {
    let given = ["tls_insecure_skip_verify", "tls_insecure"]
        .map(|k| Ok((extra.name(k), extra.boolean(k)?)));
    agree(
        given.into_iter().collect::<Result<_>>()?,
        bool::to_string,
        "it",
    )
}

/// The first value given of `(key, value)` pairs; another one given must be equal, or
/// the error names the first key and value, and the other's.
pub(super) fn agree<T: PartialEq>(
    given: Vec<(String, Option<T>)>,
    show: impl Fn(&T) -> String,
    what: &str,
) -> Result<Option<T>> {
    let mut chosen: Option<(String, T)> = None;
    for (key, v) in given {
        match (v, &chosen) {
            (Some(v), Some((first, c))) if v != *c => {
                let why = format!("differs from {key} = {}; give {what} once", show(&v));
                return Err(Error::config(first, show(c), why));
            }
            (Some(v), None) => chosen = Some((key, v)),
            _ => {}
        }
    }
    Ok(chosen.map(|(_, v)| v))
}

/// `extra_config.cores: "numa:N"`: the CPUs of NUMA node N as read under `root`
/// (`/sys/devices/system/node/nodeN/cpulist`), and N.
pub(super) fn parse_numa_cores(s: &str, root: &std::path::Path) -> Result<(Vec<usize>, usize)> {
    const KEY: &str = "extra_config.cores";
    let node = s
        .strip_prefix("numa:")
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<usize>().ok())
        .ok_or_else(|| Error::config(KEY, s, "expected \"numa:N\" with N a NUMA node number"))?;
    let cpus = crate::numa::node_cpus(root, node).map_err(|r| Error::config(KEY, s, r))?;
    Ok((cpus, node))
}

/// `extra_config.cores`: a shard count, a CPU list, or a range string such as "0-3,6".
pub(super) fn parse_cores(v: &Value) -> Result<(Option<Vec<usize>>, Option<usize>)> {
    let bad = |reason: &str| Error::config("extra_config.cores", render(v), reason);
    let shapes = "expected a shard count, a CPU list or a range string like \"0-3,6\"";
    let number = |v: &Value| match v {
        Value::Integer(n) => usize::try_from(*n).ok(),
        Value::String(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    };
    match v {
        Value::Integer(_) => number(v)
            .map(|n| (None, Some(n)))
            .ok_or_else(|| bad(shapes)),
        Value::String(s)
            if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) =>
        {
            let n = number(v).ok_or_else(|| bad("shard count out of range"))?;
            Ok((None, Some(n)))
        }
        Value::String(s) => {
            let cpus = crate::numa::parse_cpu_list(s.trim()).map_err(|r| bad(&r))?;
            Ok((Some(cpus), None))
        }
        Value::Array(items) => {
            let cpu = |i: &Value| {
                let why = format!("list entry {} is not a CPU number", render(i));
                number(i).ok_or_else(|| bad(&why))
            };
            Ok((Some(items.iter().map(cpu).collect::<Result<_>>()?), None))
        }
        _ => Err(bad(shapes)),
    }
}

/// A nested mapping `v` of the settings under `prefix` (`extra_config.<key>.`) whose
/// keys are all among `names`; `example` shows the shape expected.
fn nested<'a>(
    v: &'a Value,
    prefix: &'static str,
    example: impl std::fmt::Display,
    names: &[&str],
    unknown: &str,
) -> Result<Section<'a>> {
    let Value::Hash(map) = v else {
        let why = format!("expected a mapping such as {example}, found {}", kind(v));
        return Err(Error::config(prefix.trim_end_matches('.'), render(v), why));
    };
    let known = |k: &Value| k.as_str().is_some_and(|k| names.contains(&k));
    if let Some((k, val)) = map.iter().find(|(k, _)| !known(k)) {
        return Err(Error::config(
            &format!("{prefix}{}", render(k)),
            render(val),
            unknown,
        ));
    }
    Ok(Section { map, prefix })
}

/// `extra_config.priority_weights`: a mapping of class name to weight, such as
/// `{peek: 8, prefetch: 4, get: 2, put: 1}`; classes not named keep their default.
fn parse_priority_weights(v: &Value) -> Result<PriorityWeights> {
    let unknown = "unknown class (expected peek, prefetch, get or put)";
    let names = Priority::ALL.map(Priority::name);
    let s = nested(
        v,
        "extra_config.priority_weights.",
        PriorityWeights::default(),
        &names,
        unknown,
    )?;
    let mut weights = PriorityWeights::default();
    for class in Priority::ALL {
        match s.int::<u32>(class.name())? {
            Some(0) => {
                let why = "must be at least 1 (a class with weight 0 would starve)";
                return Err(Error::config(&s.name(class.name()), 0, why));
            }
            Some(w) => *weights.of_mut(class) = w,
            None => {}
        }
    }
    Ok(weights)
}

/// `extra_config.deadlines`: a mapping such as `{get_ms: 900, per_mib_ms: 100}`;
/// fields not named keep their default (bounds are checked by `Config::validate`).
fn parse_deadlines(v: &Value) -> Result<Deadlines> {
    const NAMES: [&str; 5] = ["peek_ms", "prefetch_ms", "get_ms", "put_ms", "per_mib_ms"];
    let unknown = "unknown field (expected peek_ms, prefetch_ms, get_ms, put_ms or per_mib_ms)";
    let example = format!("{:?}", Deadlines::default());
    let s = nested(v, "extra_config.deadlines.", example, &NAMES, unknown)?;
    let mut d = Deadlines::default();
    for name in NAMES {
        if let Some(ms) = s.int::<u64>(name)? {
            d.set(name, ms);
        }
    }
    Ok(d)
}

/// A positive number of seconds.
pub(super) fn parse_ttl(key: &str, text: &str) -> Result<u64> {
    match parse_integer(text) {
        Some(n) if n > 0 => u64::try_from(n).map_err(|_| "TTL is out of range"),
        _ => Err("must be a positive integer number of seconds"),
    }
    .map_err(|why| Error::config(key, text, why))
}

/// A decimal integer with an optional sign. '_' between digits is allowed because
/// PyYAML, which LMCache uses, reads `4_194_304` as an integer.
pub(super) fn parse_integer(s: &str) -> Option<i128> {
    let t = s.trim();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let b = digits.as_bytes();
    let well_formed = b.first().is_some_and(u8::is_ascii_digit)
        && b.last().is_some_and(u8::is_ascii_digit)
        && b.iter().all(|&c| c.is_ascii_digit() || c == b'_');
    if !well_formed {
        return None;
    }
    let n: i128 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -n } else { n })
}

/// How a value of the wrong type is shown in the error naming it.
#[derive(Clone, Copy)]
pub(super) enum Shown {
    /// As written.
    Plain,
    /// Not at all (`***`): a password.
    Secret,
    /// With every string masked by [`mask_url`]: a Redis URL, which may carry a password
    /// even when given in the wrong shape (such as a list).
    Url,
}

/// One mapping of the YAML document, with typed, error-naming accessors.
pub(super) struct Section<'a> {
    pub(super) map: &'a Mapping,
    pub(super) prefix: &'static str,
}

impl<'a> Section<'a> {
    pub(super) fn new(map: &'a Mapping, prefix: &'static str) -> Self {
        Section { map, prefix }
    }

    /// The value of `key`; `null` counts as absent.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        let v = self.map.get(&Value::String(key.to_string()));
        v.filter(|v| !v.is_null())
    }

    pub(super) fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The error naming `key` and `value`.
    fn fail(&self, key: &str, value: impl std::fmt::Display, why: impl Into<String>) -> Error {
        Error::config(&self.name(key), value, why)
    }

    /// A string; numbers are accepted as their decimal text (unquoted numeric
    /// passwords are common in YAML).
    pub(super) fn text(&self, key: &str, shown: Shown) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s) | Value::Real(s)) => Ok(Some(s.clone())),
            Some(Value::Integer(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.fail(
                key,
                match shown {
                    Shown::Plain => render(v),
                    Shown::Secret => MASK.to_string(),
                    Shown::Url => render_with(v, &mask_url),
                },
                format!("expected a string, found {}", kind(v)),
            )),
        }
    }

    /// `true`/`false`, also as strings in any ASCII case. `yes`/`no`/`on`/`off` are
    /// accepted too because LMCache loads its YAML with PyYAML (YAML 1.1), where they
    /// are booleans, while a YAML 1.2 parser hands them over as strings.
    pub(super) fn boolean(&self, key: &str) -> Result<Option<bool>> {
        let word =
            |s: &str, words: [&str; 3]| words.iter().any(|w| s.trim().eq_ignore_ascii_case(w));
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if word(s, ["true", "yes", "on"]) => Ok(Some(true)),
            Some(Value::String(s)) if word(s, ["false", "no", "off"]) => Ok(Some(false)),
            Some(v) => Err(self.fail(key, render(v), "expected true or false")),
        }
    }

    /// A non-negative integer, also as a string ("256").
    pub(super) fn int<T: TryFrom<i128>>(&self, key: &str) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v {
            Value::Integer(n) => Some(i128::from(*n)),
            // Integers beyond i64 arrive as reals; they are then "too large" below.
            Value::String(s) | Value::Real(s) => parse_integer(s),
            _ => None,
        }
        .ok_or_else(|| self.fail(key, render(v), "expected a non-negative integer"))
        .and_then(|n| match T::try_from(n) {
            _ if n < 0 => Err(self.fail(key, n, "must not be negative")),
            Ok(t) => Ok(Some(t)),
            Err(_) => Err(self.fail(key, n, "is too large")),
        })
    }

    /// A positive number of seconds.
    pub(super) fn ttl(&self, key: &str) -> Result<Option<u64>> {
        let ttl = |v| parse_ttl(&self.name(key), &render(v));
        self.get(key).map(ttl).transpose()
    }

    /// A string parsed with `FromStr`; errors are re-keyed to the full YAML path.
    pub(super) fn parsed<T: FromStr<Err = Error>>(&self, key: &str) -> Result<Option<T>> {
        let text = self.text(key, Shown::Plain)?;
        text.map(|t| t.parse::<T>())
            .transpose()
            .map_err(|e| match e {
                Error::Config { value, reason, .. } => self.fail(key, value, reason),
                other => other,
            })
    }
}

/// Resolves YAML merge keys (`<<: *base`, `<<: [*a, *b]`) in place, as PyYAML does:
/// keys given in the mapping itself win, then earlier merged mappings over later ones.
pub(super) fn apply_merge(v: &mut Value) -> std::result::Result<(), String> {
    let map = match v {
        Value::Array(items) => return items.iter_mut().try_for_each(apply_merge),
        Value::Hash(map) => map,
        _ => return Ok(()),
    };
    map.values_mut().try_for_each(apply_merge)?;
    let sources = match map.remove(&Value::String("<<".to_string())) {
        None => vec![],
        Some(Value::Hash(m)) => vec![m],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Hash(m) => Ok(m),
                v => Err(format!(
                    "a merge key (<<) lists {}, expected mappings",
                    kind(&v)
                )),
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(v) => {
            let shapes = "expected a mapping or a list of mappings";
            return Err(format!("a merge key (<<) holds {}, {shapes}", kind(&v)));
        }
    };
    for (k, val) in sources.into_iter().flatten() {
        map.entry(k).or_insert(val);
    }
    Ok(())
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) | Value::Real(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Hash(_) => "a mapping",
        Value::Alias(_) | Value::BadValue => "an invalid value",
    }
}

/// A short rendering of a YAML value for error messages.
pub(super) fn render(v: &Value) -> String {
    render_with(v, &str::to_string)
}

/// [`render`] with every string passed through `text`.
pub(super) fn render_with(v: &Value, text: &dyn Fn(&str) -> String) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(n) => n.to_string(),
        Value::Real(s) => s.clone(),
        Value::String(s) => text(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(|i| render_with(i, text)).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Hash(_) => "{...}".to_string(),
        Value::Alias(_) | Value::BadValue => "!invalid".to_string(),
    }
}
