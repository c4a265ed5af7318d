//! The shard's side of the two backends: handing dirty connections to the backend
//! (`flush_dirty`: seal, send, arm the reply's receive) and acting on what the backend
//! reports, io_uring completions (`on_cqe`) and epoll readiness (`on_ready`). Received
//! bytes go on to the reply readers (`cmd`), failures to the pool (`pool`).

use std::io;

use super::cmd::recv_cap;
use super::conn::ConnState;
use super::handle::Backend;
use super::{epoll, uring, Shard};
use crate::error::Error;

impl Shard {
    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        // Express connections (small frames, see `pick_conn`) go first: a send copies
        // its bytes into the socket before the call returns, and a PEEK must not wait
        // for megabytes of PUT copied ahead of it.
        let conns = &self.conns;
        dirty.sort_by_key(|&cid| !conns[cid].as_ref().is_some_and(|c| c.express));
        for cid in dirty.drain(..) {
            let Some(conn) = self.conns[cid].as_mut() else {
                continue;
            };
            if matches!(conn.state, ConnState::Dead | ConnState::Connecting) {
                continue;
            }
            conn.rx.cap = recv_cap(conn, &self.parts);
            // A receive is armed only while a reply is owed: one armed on an idle
            // connection would take the next reply's first bytes whatever their size,
            // before the cap above can keep a large value's bytes out of the receive
            // buffer. A server closing an idle connection shows at its next use.
            let owed = !conn.pending.is_empty() || conn.tls_handshaking();
            let r = conn.seal().and_then(|_| match &mut self.backend {
                Backend::Uring(u) => {
                    u.send(cid, conn)
                        .and_then(|_| if owed { u.recv(cid, conn) } else { Ok(()) })
                }
                Backend::Epoll(_) => epoll::flush(conn, &self.calls).map(|_| ()),
            });
            if let Err(e) = r {
                self.count_efault(&e);
                let Some(conn) = self.conns[cid].as_ref() else {
                    continue;
                };
                let node = self.nodes[conn.node].addr.to_string();
                self.fail_conn(cid, Error::Io { node, source: e }, true);
            }
        }
        self.dirty = dirty;
    }

    pub(super) fn on_cqe(&mut self, ev: uring::Cqe) {
        match ev {
            uring::Cqe::Doorbell => {}
            uring::Cqe::Notified { cid } => self.on_notified(cid),
            uring::Cqe::Connect { cid, res } => {
                if !self.live_or_reap(cid) {
                    return;
                }
                let Some(conn) = self.conns[cid].as_mut() else {
                    return;
                };
                let r = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    conn.stream.connect_result()
                };
                match r {
                    Ok(true) => self.on_connected(cid),
                    Ok(false) => {
                        if let Backend::Uring(u) = &mut self.backend {
                            if let Err(e) = u.poll_connect(cid, conn) {
                                self.io_failed(cid, e);
                            }
                        }
                    }
                    Err(e) => self.io_failed(cid, e),
                }
            }
            uring::Cqe::Sent { cid, res, fixed } => {
                if !self.live_or_reap(cid) {
                    return;
                }
                if res < 0 {
                    return self.io_failed(cid, io::Error::from_raw_os_error(-res));
                }
                if fixed {
                    self.metrics.sent_fixed(res as usize);
                }
                if let Some(conn) = self.conns[cid].as_mut() {
                    conn.on_sent(res as usize);
                }
                self.dirty.push(cid);
            }
            uring::Cqe::Recv { cid, res, buf } => {
                // The kernel is done with `buf`: it goes back to the connection (or is
                // freed here if the connection is gone).
                let Some(conn) = self.conns[cid].as_mut() else {
                    return;
                };
                let (direct, region) = (buf.direct, buf.region);
                let n = usize::try_from(res).unwrap_or(0);
                let _orphan = conn.rx.restore(buf, n);
                if conn.state == ConnState::Dead {
                    return self.settle_zombie(cid, direct);
                }
                if res <= 0 {
                    let e = if res == 0 {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
                    } else {
                        io::Error::from_raw_os_error(-res)
                    };
                    return self.io_failed(cid, e);
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
                if let Some(conn) = self.conns[cid].as_mut() {
                    if conn.state != ConnState::Dead {
                        conn.trim();
                        self.dirty.push(cid);
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
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        if conn.state == ConnState::Connecting && (writable || readable) {
            match conn.stream.connect_result() {
                Ok(true) => self.on_connected(cid),
                Ok(false) => return,
                Err(e) => return self.io_failed(cid, e),
            }
        }
        if readable {
            loop {
                let Some(conn) = self.conns[cid].as_mut() else {
                    return;
                };
                if conn.state == ConnState::Dead {
                    return;
                }
                conn.rx.cap = recv_cap(conn, &self.parts);
                match epoll::read_once(conn, &self.calls) {
                    Ok(Some((0, _, _))) => {
                        return self.io_failed(
                            cid,
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "server closed the connection",
                            ),
                        )
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
                    Err(e) => return self.io_failed(cid, e),
                }
            }
            if let Some(c) = self.conns[cid].as_mut() {
                c.trim();
            }
        }
        if writable {
            self.dirty.push(cid);
        }
    }
}
