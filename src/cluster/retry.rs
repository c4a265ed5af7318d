//! What to do with a unit whose request failed: the redirect and retry decision as a
//! pure function of the failure, the attempts spent and the time left (in the spirit of
//! redis-rs's `RetryMethod`). The shard carries the answer out; nothing here does I/O.

use std::time::Duration;

use super::{parse_redirect, Redirect, MAX_REDIRECTS};
use crate::addr::ServerAddr;

/// Tries per unit across connection failures before the error reaches the caller.
pub(crate) const MAX_ATTEMPTS: u8 = 3;

/// Error replies after which the same request may succeed shortly.
const TRANSIENT: [&str; 4] = ["TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING"];

/// How a unit's request failed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure<'a> {
    /// The server answered with this error reply; the second field is the node that
    /// sent it (an empty redirect host means that node's host).
    Reply(&'a str, Option<&'a ServerAddr>),
    /// The connection failed before the reply; `retryable` for I/O and protocol
    /// errors (not for authentication or a closing engine). `sent`: the command's
    /// bytes all reached the kernel, so the server may have run it; `idempotent`:
    /// running it twice does no harm (MGET, EXISTS).
    Conn {
        retryable: bool,
        sent: bool,
        idempotent: bool,
    },
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RetryMethod {
    /// The slot moved for good: note the new owner and send there.
    Moved { slot: u16, addr: ServerAddr },
    /// The slot is migrating: send to `addr` once, after ASKING.
    Ask { addr: ServerAddr },
    /// Route afresh after `after`; `refresh` asks for a topology refresh first.
    WaitAndRetry { after: Duration, refresh: bool },
    /// Send again where routing says now (a connection failed).
    Reconnect,
    /// Give the error to the caller; `auth` when it is an authentication error.
    Fail { auth: bool },
    /// A write (or raw command) was sent and never answered: it may or may not have
    /// been applied, and sending it again could apply it twice. Fail it with an
    /// "outcome unknown" error.
    OutcomeUnknown,
}

/// Decides for a unit that has now spent `attempts` tries (this one included), with
/// `in_time` telling whether its deadline is still ahead.
pub(crate) fn classify(failure: Failure<'_>, attempts: u8, in_time: bool) -> RetryMethod {
    match failure {
        Failure::Conn {
            retryable,
            sent,
            idempotent,
        } => {
            if retryable && sent && !idempotent {
                RetryMethod::OutcomeUnknown
            } else if retryable && attempts < MAX_ATTEMPTS && in_time {
                RetryMethod::Reconnect
            } else {
                RetryMethod::Fail { auth: false }
            }
        }
        Failure::Reply(msg, from) => {
            let auth = msg.starts_with("NOAUTH") || msg.starts_with("WRONGPASS");
            let redirect = parse_redirect(msg, from);
            let transient = TRANSIENT.iter().any(|p| msg.starts_with(p));
            if !(redirect.is_some() || transient) || attempts > MAX_REDIRECTS || !in_time {
                return RetryMethod::Fail { auth };
            }
            match redirect {
                Some(Redirect::Moved { slot, addr }) => RetryMethod::Moved { slot, addr },
                Some(Redirect::Ask { addr, .. }) => RetryMethod::Ask { addr },
                _ => RetryMethod::WaitAndRetry {
                    // Bounded exponential backoff: 20, 40, 80, ... ms, at most 250 ms.
                    after: Duration::from_millis((20u64 << attempts.min(4)).min(250)),
                    // TRYAGAIN is a resharding in progress; the others may be failovers.
                    refresh: !msg.starts_with("TRYAGAIN"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> ServerAddr {
        ServerAddr::Tcp {
            host: "10.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn redirects_are_followed_within_budget_and_deadline() {
        let moved = Failure::Reply("MOVED 3999 10.0.0.1:6381", None);
        assert_eq!(
            classify(moved, 1, true),
            RetryMethod::Moved {
                slot: 3999,
                addr: addr(6381)
            }
        );
        assert_eq!(
            classify(Failure::Reply("ASK 3999 10.0.0.1:6382", None), 2, true),
            RetryMethod::Ask { addr: addr(6382) }
        );
        assert_eq!(
            classify(moved, MAX_REDIRECTS + 1, true),
            RetryMethod::Fail { auth: false }
        );
        assert_eq!(classify(moved, 1, false), RetryMethod::Fail { auth: false });
    }

    #[test]
    fn empty_redirect_host_is_the_senders() {
        let from = addr(7000);
        assert_eq!(
            classify(Failure::Reply("MOVED 3999 :6381", Some(&from)), 1, true),
            RetryMethod::Moved {
                slot: 3999,
                addr: addr(6381)
            }
        );
        assert_eq!(
            classify(Failure::Reply("ASK 3999 :6382", Some(&from)), 1, true),
            RetryMethod::Ask { addr: addr(6382) }
        );
        // Unknown sender: the redirect cannot be followed and reaches the caller.
        assert_eq!(
            classify(Failure::Reply("MOVED 3999 :6381", None), 1, true),
            RetryMethod::Fail { auth: false }
        );
    }

    #[test]
    fn transient_errors_wait_with_bounded_backoff() {
        let r = classify(Failure::Reply("TRYAGAIN Multiple keys", None), 1, true);
        assert_eq!(
            r,
            RetryMethod::WaitAndRetry {
                after: Duration::from_millis(40),
                refresh: false
            }
        );
        for msg in [
            "CLUSTERDOWN Hash slot not served",
            "MASTERDOWN x",
            "LOADING y",
        ] {
            match classify(Failure::Reply(msg, None), 5, true) {
                RetryMethod::WaitAndRetry { after, refresh } => {
                    assert_eq!(after, Duration::from_millis(250));
                    assert!(refresh, "{msg}");
                }
                other => panic!("{msg}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_replies_fail_and_auth_is_named() {
        assert_eq!(
            classify(Failure::Reply("WRONGTYPE Operation", None), 1, true),
            RetryMethod::Fail { auth: false }
        );
        assert_eq!(
            classify(
                Failure::Reply("NOAUTH Authentication required.", None),
                1,
                true
            ),
            RetryMethod::Fail { auth: true }
        );
        assert_eq!(
            classify(Failure::Reply("WRONGPASS invalid", None), 1, true),
            RetryMethod::Fail { auth: true }
        );
    }

    #[test]
    fn connection_failures_retry_a_few_times() {
        let f = Failure::Conn {
            retryable: true,
            sent: true,
            idempotent: true,
        };
        assert_eq!(classify(f, 1, true), RetryMethod::Reconnect);
        assert_eq!(classify(f, 2, true), RetryMethod::Reconnect);
        assert_eq!(
            classify(f, MAX_ATTEMPTS, true),
            RetryMethod::Fail { auth: false }
        );
        assert_eq!(classify(f, 1, false), RetryMethod::Fail { auth: false });
        assert_eq!(
            classify(
                Failure::Conn {
                    retryable: false,
                    sent: false,
                    idempotent: true
                },
                1,
                true
            ),
            RetryMethod::Fail { auth: false }
        );
    }

    #[test]
    fn sent_unanswered_writes_are_never_resent() {
        let conn = |sent, idempotent| Failure::Conn {
            retryable: true,
            sent,
            idempotent,
        };
        // Sent and not idempotent (SET, MSET, DEL, a raw command): outcome unknown,
        // whatever the budget and deadline say.
        for (attempts, in_time) in [(1, true), (MAX_ATTEMPTS, true), (1, false)] {
            assert_eq!(
                classify(conn(true, false), attempts, in_time),
                RetryMethod::OutcomeUnknown
            );
        }
        // Never wholly sent: the server cannot have run it, so it is resent.
        assert_eq!(
            classify(conn(false, false), 1, true),
            RetryMethod::Reconnect
        );
        assert_eq!(
            classify(conn(false, false), MAX_ATTEMPTS, true),
            RetryMethod::Fail { auth: false }
        );
        // Reads are resent even when sent.
        assert_eq!(classify(conn(true, true), 1, true), RetryMethod::Reconnect);
    }
}
