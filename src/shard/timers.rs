//! The shard's timer: on every tick (`TICK` while work is in flight) due cluster
//! retries are routed again, parts past their deadline expire, connections that stopped
//! answering (or never connected, or never finished their TLS handshake) fail, servers
//! known down are probed, and expired backoffs are lifted.

use std::io;
use std::time::Instant;

use super::conn::{ConnState, PartRef};
use super::Shard;
use crate::error::Error;

impl Shard {
    pub(super) fn tick(&mut self, now: Instant) {
        // Delayed cluster retries that are due go back to their queues, routed afresh.
        if !self.delayed.is_empty() {
            let due: Vec<(Instant, PartRef, u32)>;
            (due, self.delayed) = std::mem::take(&mut self.delayed)
                .into_iter()
                .partition(|(t, _, _)| *t <= now);
            for (_, pr, u) in due {
                self.reroute(pr, u);
            }
        }
        // Parts past their deadline: unresolved units time out.
        for idx in 0..self.parts.len() {
            if self.parts[idx]
                .as_ref()
                .is_some_and(|p| now >= p.batch.deadline)
            {
                self.expire(idx, now);
            }
        }
        // Connections that stopped answering or never connected.
        let request_timeout = self.cfg.request_timeout;
        let connect_timeout = self.cfg.connect_timeout;
        for cid in 0..self.conns.len() {
            let Some(c) = self.conns[cid].as_ref() else {
                continue;
            };
            let stalled = match c.state {
                ConnState::Connecting => now.duration_since(c.since) > connect_timeout,
                // TCP connect and TLS handshake together get the connect timeout.
                _ if c.tls_handshaking() => now.duration_since(c.since) > connect_timeout,
                ConnState::Dead => false,
                _ => c
                    .pending
                    .front()
                    .is_some_and(|p| now.duration_since(p.sent_at) > request_timeout),
            };
            if stalled {
                let node = self.nodes[c.node].addr.to_string();
                // A slow handshake is a timeout like a slow connect (retried), not a
                // certificate problem; it still counts as a failed handshake.
                let what = if c.state == ConnState::Connecting {
                    "connect"
                } else if c.tls_handshaking() {
                    self.metrics.tls_handshake(false);
                    "tls handshake"
                } else {
                    "reply"
                };
                let err = Error::Io {
                    node,
                    source: io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out")),
                };
                self.fail_conn(cid, err, true);
            }
        }
        self.probe_down_nodes(now);
        // Nodes whose backoff expired: their waiting parts can go again.
        if self
            .nodes
            .iter()
            .any(|n| n.retry_at.is_some_and(|t| t <= now))
        {
            for n in &mut self.nodes {
                if n.retry_at.is_some_and(|t| t <= now) && !n.down {
                    n.retry_at = None;
                }
            }
        }
    }
}
