//! Per-class request deadlines that scale with the bytes a request moves
//! (`extra_config.deadlines`), capped by `request_timeout_ms`.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::priority::Priority;

/// The YAML key of [`Deadlines`].
pub(crate) const DEADLINES_KEY: &str = "extra_config.deadlines";

/// Largest base deadline or per-MiB time accepted (one hour).
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// How long a request of each class may take: a base per class plus `per_mib` for every
/// MiB of payload it sends or expects, never more than the configuration's
/// `request_timeout` (the cap, and the key older configurations set).
///
/// The defaults: a healthy Redis answers a small read in well under a millisecond, so
/// the base budgets cover queueing behind other classes on a loaded host and one
/// reconnect, and stay below a second for the classes a serving engine waits on
/// (PEEK 500 ms, PREFETCH 750 ms, GET 900 ms; LMCache gives a whole retrieval 10 s).
/// A PUT (2 s) is off the critical path and may queue behind other writes. 100 ms per
/// MiB is a 10 MiB/s floor, far below any network or loopback rate: only a transfer
/// that has stalled, not a large one, runs out of time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// PEEK (`exists`, `contains_prefix`) base (`peek_ms`, default 500).
    pub peek: Duration,
    /// PREFETCH base (`prefetch_ms`, default 750).
    pub prefetch: Duration,
    /// GET base (`get_ms`, default 900).
    pub get: Duration,
    /// PUT (and delete) base (`put_ms`, default 2000).
    pub put: Duration,
    /// Added per MiB of payload sent or expected (`per_mib_ms`, default 100).
    pub per_mib: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            peek: Duration::from_millis(500),
            prefetch: Duration::from_millis(750),
            get: Duration::from_millis(900),
            put: Duration::from_millis(2000),
            per_mib: Duration::from_millis(100),
        }
    }
}

impl fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = self
            .fields()
            .map(|(name, d, _)| format!("{name}: {}", d.as_millis()));
        write!(f, "{{{}}}", fields.join(", "))
    }
}

impl Deadlines {
    /// The same deadline `d` for every class, whatever the size (what a single
    /// `request_timeout` meant before per-class deadlines).
    pub fn uniform(d: Duration) -> Deadlines {
        Deadlines {
            peek: d,
            prefetch: d,
            get: d,
            put: d,
            per_mib: Duration::ZERO,
        }
    }

    /// The base deadline of `class`.
    pub fn base(&self, class: Priority) -> Duration {
        match class {
            Priority::Peek => self.peek,
            Priority::Prefetch => self.prefetch,
            Priority::Get => self.get,
            Priority::Put => self.put,
        }
    }

    /// The deadline of a request of `class` moving `bytes` of payload, at most `cap`.
    pub fn budget(&self, class: Priority, bytes: u64, cap: Duration) -> Duration {
        const MIB: u64 = 1 << 20;
        let ns = self.per_mib.as_nanos().saturating_mul(u128::from(bytes)) / u128::from(MIB);
        let scaled = Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
        self.base(class).saturating_add(scaled).min(cap)
    }

    /// The fields by their key name, with their least value in milliseconds.
    fn fields(&self) -> [(&'static str, Duration, u128); 5] {
        [
            ("peek_ms", self.peek, 1),
            ("prefetch_ms", self.prefetch, 1),
            ("get_ms", self.get, 1),
            ("put_ms", self.put, 1),
            ("per_mib_ms", self.per_mib, 0),
        ]
    }

    /// Checks every value is within 1 ms ..= 1 h (`per_mib` may be 0).
    pub(crate) fn validate(&self) -> Result<()> {
        for (name, d, min) in self.fields() {
            if d.as_millis() < min || d > MAX_DEADLINE {
                let max = MAX_DEADLINE.as_millis();
                let why = format!("must be between {min} and {max} milliseconds");
                return Err(Error::config(
                    &format!("{DEADLINES_KEY}.{name}"),
                    d.as_millis(),
                    why,
                ));
            }
        }
        Ok(())
    }

    /// Sets the field named `name` (`peek_ms`, ...) to `ms`; `false` for an unknown name.
    pub(crate) fn set(&mut self, name: &str, ms: u64) -> bool {
        let field = match name {
            "peek_ms" => &mut self.peek,
            "prefetch_ms" => &mut self.prefetch,
            "get_ms" => &mut self.get,
            "put_ms" => &mut self.put,
            "per_mib_ms" => &mut self.per_mib,
            _ => return false,
        };
        *field = Duration::from_millis(ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_scales_with_bytes_and_is_capped() {
        let d = Deadlines::default();
        let cap = Duration::from_secs(30);
        assert_eq!(d.budget(Priority::Peek, 0, cap), Duration::from_millis(500));
        assert_eq!(d.budget(Priority::Get, 0, cap), Duration::from_millis(900));
        let ten_mib = d.budget(Priority::Put, 10 << 20, cap);
        assert!(ten_mib == Duration::from_millis(3000), "{ten_mib:?}");
        assert_eq!(d.budget(Priority::Put, 1 << 40, cap), cap);
        assert_eq!(
            d.budget(Priority::Get, 0, Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        let u = Deadlines::uniform(Duration::from_secs(7));
        assert_eq!(
            u.budget(Priority::Peek, 1 << 30, cap),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut d = Deadlines::default();
        assert!(d.validate().is_ok());
        assert!(d.set("get_ms", 0));
        let e = d.validate().unwrap_err().to_string();
        assert!(e.contains("extra_config.deadlines.get_ms"), "{e}");
        let mut d = Deadlines::default();
        d.set("per_mib_ms", 0);
        assert!(d.validate().is_ok());
        d.set("put_ms", 3_600_001);
        assert!(d.validate().is_err());
        assert!(!d.set("post_ms", 1));
    }
}
