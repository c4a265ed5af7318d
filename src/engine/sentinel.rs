//! Standalone behind Redis Sentinel: finding the master at start and following a
//! failover on the `slotline-sentinel` thread.
//!
//! Shards never talk to sentinels. A connection failure or a READONLY reply requests a
//! refresh (`Router::request_refresh`); the thread then asks the sentinels (at most
//! every `MIN_GAP`), checks with ROLE that the address they give is a master, and
//! moves new requests there (`Router::set_master`). Requests already sent to the old
//! master finish or fail there: nothing is resent (a write that may have applied is
//! never retried).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::ServerAddr;
use crate::error::{Error, Result};
use crate::resp::Value;
use crate::sentinel::ask_master;

use super::Engine;

/// Sentinels are asked at most this often, however many failures request it.
const MIN_GAP: Duration = Duration::from_millis(250);
/// How often a healthy master is checked anyway.
const PERIOD: Duration = Duration::from_secs(5);
/// How often while the master is failing or not a master.
const UNSETTLED: Duration = Duration::from_millis(500);

impl Engine {
    /// Checks that the standalone server (the master the sentinels named) says it
    /// is a master.
    pub(super) fn check_master(&self, at: &ServerAddr) -> Result<()> {
        let role = self.command_at(at, &[b"ROLE"])?;
        match role {
            Value::Array(v) if matches!(v.first(), Some(Value::Bulk(r)) if r == b"master") => {
                Ok(())
            }
            other => Err(Error::Server {
                node: at.to_string(),
                message: format!("the sentinels named it the master but its ROLE is {other:?}"),
            }),
        }
    }

    /// Starts the thread following the sentinels' master (see the module doc).
    pub(super) fn start_sentinel_thread(&self, name: String) {
        let weak = Arc::downgrade(&self.inner);
        let router = self.inner.router.clone();
        let sentinels = self.inner.cfg.seeds.clone();
        let timeout = self.inner.cfg.connect_timeout;
        let r = std::thread::Builder::new()
            .name("slotline-sentinel".into())
            .spawn(move || {
                let mut last = Instant::now();
                let mut period = PERIOD;
                loop {
                    if !router.wait_refresh(period) {
                        break;
                    }
                    let since = last.elapsed();
                    if since < MIN_GAP {
                        std::thread::sleep(MIN_GAP - since);
                    }
                    last = Instant::now();
                    let Some(inner) = weak.upgrade() else { break };
                    let engine = Engine { inner };
                    let settled = engine.follow_master(&sentinels, &name, timeout);
                    period = if settled { PERIOD } else { UNSETTLED };
                }
            });
        if let Err(e) = r {
            tracing::error!(error = %e, "could not start the sentinel thread; a failover will not be followed");
        }
    }

    /// One look: asks the sentinels, moves to the master they name if it answers
    /// as one. Returns whether the current master is healthy.
    fn follow_master(&self, sentinels: &[ServerAddr], name: &str, timeout: Duration) -> bool {
        let router = &self.inner.router;
        let current = router.addr(router.master());
        let named = match ask_master(sentinels, name, timeout) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "asking the sentinels failed; will retry");
                return false;
            }
        };
        if named == current {
            // The sentinels have not (yet) moved it: is it still a working master?
            return self.check_master(&current).is_ok();
        }
        if let ServerAddr::Tcp { host, port } = &named {
            crate::resolver::resolve_now(host, *port);
        }
        match self.check_master(&named) {
            Ok(()) => {
                router.set_master(&named);
                tracing::warn!(from = %current, to = %named, master = name, "sentinels moved the master; new requests go to the new one");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the sentinels' new master is not ready; will retry");
                false
            }
        }
    }
}
