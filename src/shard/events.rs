//! The shard's side of the two backends and of its connections: handing dirty
//! connections to the backend (`flush_dirty`: seal, send, arm the reply's receive),
//! acting on what the backend reports (io_uring completions, `on_cqe`; epoll readiness,
//! `on_ready`), reading replies (`process`, through `cmd`) and applying them to their
//! units, and the one way a connection fails ([`Shard::fail_conn`], with the kernel's
//! late return of a closed connection's receive in [`Shard::settle_zombie`]).

use std::io;

use crate::batch::Slot;
use crate::error::Error;
use crate::resp::{ArrayOutcome, Value};

use super::cmd::{self, recv_cap, Read};
use super::conn::{ConnState, HandshakeStep, PartRef, PendKind, Pending};
use super::handle::Backend;
use super::{epoll, uring, Shard};

/// Why a connection fails: the argument of [`Shard::fail_conn`], which builds the
/// error its units get.
pub(super) enum Cause {
    /// A send (or a TLS seal) could not be started: counts against the server.
    Send(io::Error),
    /// An operation on the socket failed, or the server closed it.
    Io(io::Error),
    /// No progress in time: `what` (connect, tls handshake, reply) timed out. Counts
    /// against the server.
    Stalled(&'static str),
    /// The server's bytes cannot be read as the replies owed.
    Protocol(String),
    /// TLS failed, for this reason (handshake or session). Counts against the server.
    Tls(String),
    /// A required handshake step was refused: the error its units get. Counts against
    /// the server.
    Refused(Error),
    /// The shard is shutting down.
    Closed,
}

impl Shard {
    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = self.pool.take_dirty();
        for &cid in &dirty {
            let Some(conn) = self.pool.conn_mut(cid) else {
                continue;
            };
            if matches!(conn.state(), ConnState::Dead | ConnState::Connecting) {
                continue;
            }
            conn.rx_mut().cap = recv_cap(conn, self.parts.slots());
            // A receive is armed only while a reply is owed: one armed on an idle
            // connection would take the next reply's first bytes whatever their size,
            // before the cap above can keep a large value's bytes out of the receive
            // buffer. A server closing an idle connection shows at its next use.
            let owed = !conn.pending().is_empty() || conn.tls_handshaking();
            let r = conn.seal().and_then(|_| match &mut self.backend {
                Backend::Uring(u) => {
                    u.send(cid, conn)
                        .and_then(|_| if owed { u.recv(cid, conn) } else { Ok(()) })
                }
                Backend::Epoll(_) => epoll::flush(conn, &self.calls).map(|_| ()),
            });
            if let Err(e) = r {
                self.fail_conn(cid, Cause::Send(e));
            }
        }
        dirty.clear();
        self.pool.restore_dirty(dirty);
    }

    pub(super) fn on_cqe(&mut self, ev: uring::Cqe) {
        match ev {
            uring::Cqe::Doorbell => {}
            uring::Cqe::Notified { cid } => self.on_notified(cid),
            uring::Cqe::Connect { cid, res } => {
                if !self.live_or_reap(cid) {
                    return;
                }
                let Some(conn) = self.pool.conn_mut(cid) else {
                    return;
                };
                let r = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    conn.stream().connect_result()
                };
                match r {
                    Ok(true) => self.on_connected(cid),
                    Ok(false) => {
                        if let Backend::Uring(u) = &mut self.backend {
                            if let Err(e) = u.poll_connect(cid, conn) {
                                self.fail_conn(cid, Cause::Io(e));
                            }
                        }
                    }
                    Err(e) => self.fail_conn(cid, Cause::Io(e)),
                }
            }
            uring::Cqe::Sent { cid, res, fixed } => {
                if !self.live_or_reap(cid) {
                    return;
                }
                if res < 0 {
                    let e = io::Error::from_raw_os_error(-res);
                    return self.fail_conn(cid, Cause::Io(e));
                }
                if fixed {
                    self.metrics.sent_fixed(res as usize);
                }
                if let Some(conn) = self.pool.conn_mut(cid) {
                    conn.on_sent(res as usize);
                }
                self.pool.mark_dirty(cid);
            }
            uring::Cqe::Recv { cid, res, buf } => {
                // The kernel is done with `buf`: it goes back to the connection (or is
                // freed here if the connection is gone).
                let Some(conn) = self.pool.conn_mut(cid) else {
                    return;
                };
                let (direct, region) = (buf.direct, buf.region);
                let n = usize::try_from(res).unwrap_or(0);
                let _orphan = conn.rx_mut().restore(buf, n);
                if conn.state() == ConnState::Dead {
                    return self.settle_zombie(cid, direct);
                }
                if res <= 0 {
                    let e = if res == 0 {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
                    } else {
                        io::Error::from_raw_os_error(-res)
                    };
                    return self.fail_conn(cid, Cause::Io(e));
                }
                self.metrics.received(n);
                if direct {
                    self.metrics.recv_direct(n);
                }
                if region {
                    self.metrics.recv_fixed(n);
                }
                if !self.tls_received(cid) {
                    return;
                }
                self.process(cid);
                if let Some(conn) = self.pool.conn_mut(cid) {
                    if conn.state() != ConnState::Dead {
                        conn.trim();
                        self.pool.mark_dirty(cid);
                    }
                }
            }
        }
    }

    pub(super) fn on_ready(&mut self, ev: epoll::Ev) {
        let epoll::Ev::Ready {
            cid,
            readable,
            writable,
            closed,
        } = ev
        else {
            return;
        };
        let Some(conn) = self.pool.conn_mut(cid) else {
            return;
        };
        if conn.state() == ConnState::Connecting && (writable || readable) {
            match conn.stream().connect_result() {
                Ok(true) => self.on_connected(cid),
                Ok(false) => return,
                Err(e) => return self.fail_conn(cid, Cause::Io(e)),
            }
        }
        if readable {
            loop {
                let Some(conn) = self.pool.conn_mut(cid) else {
                    return;
                };
                if conn.state() == ConnState::Dead {
                    return;
                }
                conn.rx_mut().cap = recv_cap(conn, self.parts.slots());
                match epoll::read_once(conn, &self.calls) {
                    Ok(Some((0, _, _))) => {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed the connection",
                        );
                        return self.fail_conn(cid, Cause::Io(e));
                    }
                    Ok(Some((n, direct, more))) => {
                        self.metrics.received(n);
                        if direct {
                            self.metrics.recv_direct(n);
                        }
                        if !self.tls_received(cid) {
                            return;
                        }
                        self.process(cid);
                        if !more && !closed {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.fail_conn(cid, Cause::Io(e)),
                }
            }
            if let Some(c) = self.pool.conn_mut(cid) {
                c.trim();
            }
        }
        if writable {
            self.pool.mark_dirty(cid);
        }
    }

    /// After a receive on connection `cid`: decrypts what arrived (no-op on a plain
    /// connection). `false` when the connection failed on it.
    fn tls_received(&mut self, cid: usize) -> bool {
        let Some(conn) = self.pool.conn_mut(cid) else {
            return false;
        };
        let Some(r) = conn.open() else {
            return true;
        };
        match r {
            Ok(opened) => {
                let copied = conn.tls_take_copied();
                self.metrics.recv_staged(copied);
                if opened.established {
                    conn.on_tls_established();
                    self.metrics.tls_handshake(true);
                    let node = conn.node();
                    tracing::debug!(shard = self.id, node = %self.pool.node(node).addr, cid, "tls established");
                }
                if opened.wants_write || opened.established {
                    self.pool.mark_dirty(cid);
                }
                true
            }
            Err(e) => {
                self.fail_conn(cid, Cause::Tls(crate::tls::explain(&e)));
                false
            }
        }
    }

    /// Reads every complete reply the connection holds.
    pub(super) fn process(&mut self, cid: usize) {
        loop {
            let Some(conn) = self.pool.conn_mut(cid) else {
                return;
            };
            if conn.state() == ConnState::Dead {
                return;
            }
            let cx = cmd::ReadCx {
                cfg: &self.cfg,
                avg_value: &mut self.avg_value,
                probed: &mut self.probed,
                values: &self.values,
                metrics: &self.metrics,
            };
            match cmd::read_reply(conn, &mut self.parts, cx) {
                Read::More => return,
                Read::Protocol(reason) => return self.fail_conn(cid, Cause::Protocol(reason)),
                Read::Mget(p, outcome) => {
                    match outcome {
                        ArrayOutcome::Done(_) => {}
                        ArrayOutcome::Nil => {
                            for &u in &p.units {
                                if let Some(part) = p.part.and_then(|pr| self.parts.get_mut(pr)) {
                                    part.resolve(u, Slot::Nil);
                                }
                            }
                        }
                        ArrayOutcome::Error(msg) => {
                            for &u in &p.units {
                                self.unit_error(cid, p.part, u, &msg);
                            }
                        }
                    }
                    if let Some(pr) = p.part {
                        self.maybe_complete(pr.idx as usize);
                    }
                }
                Read::Reply(p, v) => {
                    if !self.on_reply(cid, p, v) {
                        return;
                    }
                }
            }
        }
    }

    /// Applies one complete reply to what waited for it. Returns `false` when the
    /// connection is gone (failed by a handshake error).
    fn on_reply(&mut self, cid: usize, mut p: Pending, v: Value) -> bool {
        match p.kind {
            PendKind::Handshake { step } => return self.handshake_reply(cid, step, v),
            PendKind::Asking => {}
            PendKind::Command => {
                self.release(cid, p.weight);
                if let (Some(pr), Some(&u)) = (p.part, p.units.first()) {
                    self.settle(cid, pr, u, v, Slot::Value);
                    self.maybe_complete(pr.idx as usize);
                }
            }
            PendKind::AllUnits => {
                self.release(cid, p.weight);
                if let Some(pr) = p.part {
                    for &u in &p.units {
                        self.settle(cid, pr, u, v.clone(), |_| Slot::Ok);
                    }
                    self.maybe_complete(pr.idx as usize);
                }
            }
            PendKind::PerUnit { next } => {
                let u = p.units.get(next).copied();
                if let (Some(pr), Some(u)) = (p.part, u) {
                    self.settle(cid, pr, u, v, |v| match v {
                        Value::Int(i) => Slot::Int(i),
                        Value::Simple(_) => Slot::Ok,
                        other => Slot::Value(other),
                    });
                }
                let Some(conn) = self.pool.conn_mut(cid) else {
                    return false;
                };
                if next + 1 < p.units.len() {
                    p.kind = PendKind::PerUnit { next: next + 1 };
                    conn.put_back(p);
                } else {
                    conn.release(p.weight);
                    if let Some(pr) = p.part {
                        self.maybe_complete(pr.idx as usize);
                    }
                }
            }
            PendKind::Mget => {
                // MGET replies are read by the array reader and never reach here; if
                // one did, the stream is out of step.
                let reason = "MGET reply in the per-reply path".to_string();
                self.fail_conn(cid, Cause::Protocol(reason));
                return false;
            }
        }
        true
    }

    fn release(&mut self, cid: usize, weight: usize) {
        if let Some(conn) = self.pool.conn_mut(cid) {
            conn.release(weight);
        }
    }

    /// The reply to a handshake step. An error fails the connection when the step is
    /// required (AUTH, SELECT) or the server asks for authentication; an optional
    /// step's error (CLIENT SETNAME refused by a proxy) is logged once per server and
    /// shard, and ignored. Returns `false` when the connection failed.
    fn handshake_reply(&mut self, cid: usize, step: HandshakeStep, v: Value) -> bool {
        let Some(conn) = self.pool.conn(cid) else {
            return false;
        };
        let node = conn.node();
        if let Value::Error(msg) = &v {
            let message = String::from_utf8_lossy(msg).into_owned();
            let auth = message.starts_with("WRONGPASS") || message.starts_with("NOAUTH");
            let addr = self.pool.node(node).addr.to_string();
            if step.required() || auth {
                let message = format!("{} refused: {message}", step.name());
                let err = if step == HandshakeStep::Auth || auth {
                    Error::Auth {
                        node: addr,
                        message,
                    }
                } else {
                    Error::Server {
                        node: addr,
                        message,
                    }
                };
                self.fail_conn(cid, Cause::Refused(err));
                return false;
            }
            let n = self.pool.node_mut(node);
            if n.refused_steps.contains(&step) {
                tracing::debug!(shard = self.id, node = %addr, step = step.name(), reply = %message, "optional handshake step refused again");
            } else {
                n.refused_steps.push(step);
                tracing::warn!(shard = self.id, node = %addr, step = step.name(), reply = %message, "server refused an optional handshake step; continuing without it (logged once per server and shard)");
            }
        }
        let Some(conn) = self.pool.conn_mut(cid) else {
            return false;
        };
        conn.handshake_step_done();
        true
    }

    /// Resolves a unit with its reply: an error reply goes through [`Self::unit_error`]
    /// (redirects, retries), a reply of the wrong shape for the command (`+OK` for a
    /// write, an integer for EXISTS / DEL) fails the unit as a counted protocol error,
    /// anything else becomes the slot `ok` makes of it.
    fn settle(
        &mut self,
        cid: usize,
        pr: PartRef,
        u: u32,
        v: Value,
        ok: impl FnOnce(Value) -> Slot,
    ) {
        if let Value::Error(msg) = &v {
            return self.unit_error(cid, Some(pr), u, msg);
        }
        let Some(part) = self.parts.get_mut(pr) else {
            return;
        };
        let (unknown, reason) = match cmd::reply_kind_ok(&part.batch.op, &v) {
            Ok(()) => return part.resolve(u, ok(v)),
            Err(e) => e,
        };
        // The failure path only: the node's name is formatted here, not per reply.
        let node = self.pool.addr_of(cid);
        self.metrics.error("protocol");
        // A write that reached the server and got a nonsense answer may or may not
        // have been applied; a read is simply failed.
        let err = if unknown {
            Error::OutcomeUnknown { node, reason }
        } else {
            Error::Protocol { node, reason }
        };
        if let Some(part) = self.parts.get_mut(pr) {
            part.resolve(u, Slot::Err(err));
        }
    }

    /// Connection `cid` connected: it handshakes, and its server is reachable.
    pub(super) fn on_connected(&mut self, cid: usize) {
        let Some((node, was_down)) = self.pool.connected(cid) else {
            return;
        };
        if was_down {
            let addr = &self.pool.node(node).addr;
            tracing::info!(shard = self.id, node = %addr, "server is reachable again");
        }
    }

    /// A connection to `node` failed (or could not start): backoff, and in a cluster
    /// a look at the topology (a dead node may mean a failover).
    pub(super) fn node_failed(&mut self, node: usize, e: &dyn std::fmt::Display) {
        self.pool.backoff(node, e);
        self.metrics.error("reconnect");
        let n = self.pool.node(node);
        tracing::warn!(shard = self.id, node = %n.addr, error = %e, failures = n.failures, "connection to server failed");
        self.router.request_refresh();
    }

    /// The error a connection failing for `cause` gives its units, and whether the
    /// failure counts against its server; counts and logs it. `None` when a TLS failure
    /// finds the connection gone.
    fn failure(&mut self, cid: usize, cause: Cause) -> Option<(Error, bool)> {
        let node = self.pool.addr_of(cid);
        let io = |source| Error::Io {
            node: node.clone(),
            source,
        };
        Some(match cause {
            Cause::Send(e) => {
                self.count_efault(&e);
                (io(e), true)
            }
            Cause::Io(e) => {
                self.count_efault(&e);
                (io(e), false)
            }
            Cause::Stalled(what) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"));
                (io(e), true)
            }
            Cause::Protocol(reason) => {
                tracing::error!(shard = self.id, node = %node, reason = %reason, "protocol error; closing connection");
                self.metrics.error("protocol");
                (Error::Protocol { node, reason }, false)
            }
            Cause::Tls(reason) => {
                let conn = self.pool.conn(cid)?;
                // A server refusing the client certificate says so only after the
                // client finished its side (TLS 1.3), before any reply: still the
                // handshake.
                let stage = if !conn.tls_established() || conn.state() != ConnState::Ready {
                    self.metrics.tls_handshake(false);
                    "handshake"
                } else {
                    "session"
                };
                let err = Error::Tls {
                    node,
                    stage,
                    reason,
                };
                self.metrics.error("tls");
                tracing::error!(shard = self.id, error = %err, "closing connection");
                (err, true)
            }
            Cause::Refused(err) => {
                tracing::error!(shard = self.id, error = %err, "connection handshake failed");
                (err, true)
            }
            Cause::Closed => (Error::Closed, false),
        })
    }

    /// Closes connection `cid` for `cause`: the one way a connection fails. Its
    /// unanswered units are retried elsewhere or failed, its server backs off when
    /// the failure counts against it (a failed connect first tries the server's next
    /// address), and its socket is released: now for epoll, once the kernel returns
    /// every buffer for io_uring (the connection is a zombie until then).
    ///
    /// A reply whose payload destination is lent to an in-flight receive stays on the
    /// closed connection with its units until the kernel returns the receive
    /// ([`Self::settle_zombie`]): only then may the destination (a caller's buffer) go
    /// back to its unit and the unit be retried or failed.
    pub(super) fn fail_conn(&mut self, cid: usize, cause: Cause) {
        let Some((err, counts)) = self.failure(cid, cause) else {
            return;
        };
        let Some(conn) = self.pool.conn_mut(cid) else {
            return;
        };
        let Some(closed) = conn.close(&err) else {
            return;
        };
        let node = conn.node();
        self.pool.detach(node, cid);
        if closed.was_connecting && self.pool.next_address(node) {
            // Another address of the server is left: the next connect tries it at
            // once (e.g. `localhost` as ::1 then 127.0.0.1).
        } else if counts || closed.was_connecting {
            // A connect that failed (refused, or no answer within connect_timeout):
            // the server is down until a probe connects.
            self.pool.node_mut(node).down |= closed.was_connecting;
            self.node_failed(node, &err);
        }
        if let (Some((i, dest)), Some(p)) = (closed.returned, closed.pending.first()) {
            self.return_dest(p, i, dest);
        }
        self.fail_pending(closed.pending, &err, closed.written);
        if let Some(zombies) = self.pool.reap(cid, &mut self.backend, true) {
            self.metrics.zombies(zombies);
        }
    }

    /// The kernel returned a receive of a closed connection: the reply it held back
    /// (see [`Self::fail_conn`]) gives its destination back and its units are retried or
    /// failed now; the connection is freed once nothing else is outstanding.
    fn settle_zombie(&mut self, cid: usize, direct: bool) {
        let Some(conn) = self.pool.conn_mut(cid) else {
            return;
        };
        let (held, err) = conn.settle();
        if direct {
            self.metrics.kernel_late_release();
        }
        if let (Some((i, dest)), Some(p)) = (held.returned, held.pending.first()) {
            self.return_dest(p, i, dest);
        }
        if let Some(err) = err {
            self.fail_pending(held.pending, &err, held.written);
        }
        self.reap(cid);
    }

    /// `true` when connection `cid` exists and is not closed; a closed one is freed
    /// here once the kernel holds nothing of it.
    fn live_or_reap(&mut self, cid: usize) -> bool {
        match self.pool.conn(cid) {
            None => false,
            Some(c) if c.state() == ConnState::Dead => {
                self.reap(cid);
                false
            }
            Some(_) => true,
        }
    }

    /// Frees what closed connection `cid` no longer needs (see [`super::pool::Pool::reap`]).
    fn reap(&mut self, cid: usize) {
        if let Some(zombies) = self.pool.reap(cid, &mut self.backend, false) {
            self.metrics.zombies(zombies);
        }
    }

    /// A zero-copy notification of connection `cid` arrived: a closed connection
    /// waiting only for those is freed with the last one.
    fn on_notified(&mut self, cid: usize) {
        if self.pool.is_bare_zombie(cid) {
            self.reap(cid);
        }
    }

    /// Counts an epoll-side syscall that failed with EFAULT: a kernel read or write
    /// into memory that is no longer valid (io_uring counts its completions itself).
    fn count_efault(&self, e: &io::Error) {
        if matches!(self.backend, Backend::Epoll(_)) && e.raw_os_error() == Some(libc::EFAULT) {
            self.metrics.efaults(1);
        }
    }
}
