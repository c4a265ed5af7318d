//! The `parallel` peer: a model of LMCache's native C++ RESP client. `N` threads, each
//! with one blocking connection, one GET or SET per Redis key (the payload key in the
//! `raw` layout; payload and metadata keys, one command each, in the two-key layouts),
//! the keys of a batch split across the threads. Values are written from the
//! workload's buffers; reads land in buffers allocated once per run and reused across
//! batches: the bulk header is read, then the value is `read_exact`-ed into the buffer.
//! Nothing proportional to the value is allocated per call.
//!
//! Against a cluster (issue 19: peers run against the bench's clusters too) each thread
//! holds one connection per master and sends each key's command to its slot's master,
//! from the slot map loaded once per run (no redirects: the bench's clusters do not
//! reshard). LMCache's native client itself talks to one standalone server.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use slotline::{parse_url, ServerAddr};

use super::*;

/// Values up to this size are copied into the command buffer and sent with one write;
/// larger ones go out from the value's own buffer in one `writev`.
const COPY_LIMIT: usize = 16 * 1024;
/// Bytes the reply reader buffers around headers; a value's body past what this holds
/// is read straight into its destination.
const HEADER_BUF: usize = 4096;
/// Room for one encoded metadata value (LMCache's header is a few dozen bytes).
const META_BUF: usize = 256;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The parallel client as a [`Peer`].
pub struct ParallelPeer {
    url: String,
    mode: Mode,
    conns: usize,
}

impl ParallelPeer {
    /// `conns` threads with one connection each per caller thread.
    pub fn new(url: &str, mode: Mode, conns: usize) -> ParallelPeer {
        ParallelPeer {
            url: url.to_string(),
            mode,
            conns: conns.max(1),
        }
    }
}

/// One blocking connection with a small header buffer.
struct Conn {
    stream: TcpStream,
    rbuf: Box<[u8]>,
    pos: usize,
    end: usize,
    cmd: Vec<u8>,
}

impl Conn {
    fn open(addr: &str, password: Option<&str>, user: Option<&str>, db: u32) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut c = Conn {
            stream,
            rbuf: vec![0u8; HEADER_BUF].into_boxed_slice(),
            pos: 0,
            end: 0,
            cmd: Vec::with_capacity(COPY_LIMIT + 1024),
        };
        if let Some(pw) = password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = user {
                args.push(u.as_bytes());
            }
            args.push(pw.as_bytes());
            c.simple(&args)?;
        }
        if db != 0 {
            let db = db.to_string();
            c.simple(&[b"SELECT", db.as_bytes()])?;
        }
        Ok(c)
    }

    /// Sends a small command and expects a simple-string reply.
    fn simple(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.cmd.clear();
        slotline_testkit::client::encode_command(&mut self.cmd, args);
        self.stream.write_all(&self.cmd)?;
        self.expect_ok()
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.rbuf.len() {
            self.rbuf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let n = self.stream.read(&mut self.rbuf[self.end..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// One reply line without its CRLF, as (type byte, range of the rest in `rbuf`).
    fn line(&mut self) -> io::Result<(u8, Range<usize>)> {
        loop {
            if let Some(i) = self.rbuf[self.pos..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let start = self.pos;
                self.pos += i + 2;
                return Ok((self.rbuf[start], start + 1..start + i));
            }
            if self.end - self.pos == self.rbuf.len() {
                return Err(bad("reply line longer than the header buffer"));
            }
            self.fill()?;
        }
    }

    fn expect_ok(&mut self) -> io::Result<()> {
        match self.line()? {
            (b'+', _) => Ok(()),
            (b'-', r) => Err(bad(&String::from_utf8_lossy(&self.rbuf[r]))),
            (t, _) => Err(bad(&format!("unexpected reply type {:?}", t as char))),
        }
    }

    /// SET `key` `value`: header and small values from the command buffer, a large
    /// value from its own memory, in one `writev` where the kernel takes it all.
    fn set(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        use slotline_testkit::client::{encode_array_header, encode_bulk, encode_bulk_header};
        self.cmd.clear();
        encode_array_header(&mut self.cmd, 3);
        encode_bulk(&mut self.cmd, b"SET");
        encode_bulk(&mut self.cmd, key);
        if value.len() <= COPY_LIMIT {
            encode_bulk(&mut self.cmd, value);
            self.stream.write_all(&self.cmd)?;
        } else {
            encode_bulk_header(&mut self.cmd, value.len());
            write_all_vectored(&mut self.stream, &[&self.cmd, value, b"\r\n"])?;
        }
        self.expect_ok()
    }

    /// GET `key` into `dest`: `Ok(Some(len))` on a hit of exactly `dest.len()` bytes,
    /// `Ok(None)` on a miss; any other length is an error (the value is drained).
    fn get_into(&mut self, key: &[u8], dest: &mut [u8]) -> io::Result<Option<usize>> {
        self.cmd.clear();
        slotline_testkit::client::encode_command(&mut self.cmd, &[b"GET", key]);
        self.stream.write_all(&self.cmd)?;
        let (t, r) = self.line()?;
        let head = &self.rbuf[r];
        match t {
            b'$' if head == b"-1" => return Ok(None),
            b'$' => {}
            b'-' => return Err(bad(&String::from_utf8_lossy(head))),
            t => return Err(bad(&format!("unexpected reply type {:?}", t as char))),
        }
        let len: usize = std::str::from_utf8(head)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad bulk length"))?;
        if len != dest.len() {
            self.skip(len + 2)?;
            return Err(bad(&format!(
                "GET returned {len} bytes, the buffer holds {}",
                dest.len()
            )));
        }
        // What the header read already pulled in, then the rest straight into `dest`.
        let have = (self.end - self.pos).min(len);
        dest[..have].copy_from_slice(&self.rbuf[self.pos..self.pos + have]);
        self.pos += have;
        self.stream.read_exact(&mut dest[have..])?;
        self.skip(2)?;
        Ok(Some(len))
    }

    /// Discards `n` bytes of the stream.
    fn skip(&mut self, mut n: usize) -> io::Result<()> {
        while n > 0 {
            if self.pos == self.end {
                self.fill()?;
            }
            let k = (self.end - self.pos).min(n);
            self.pos += k;
            n -= k;
        }
        Ok(())
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// `write_all` over several buffers with `writev`, resuming after partial writes.
fn write_all_vectored(s: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&parts[idx][off..])
            .chain(parts[idx + 1..].iter().copied())
            .map(IoSlice::new)
            .collect();
        let mut n = match s.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while idx < parts.len() && n >= parts[idx].len() - off {
            n -= parts[idx].len() - off;
            idx += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}

/// What one thread does with its share of a batch.
enum Job {
    Put {
        batch: usize,
        range: Range<usize>,
    },
    Get {
        batch: usize,
        range: Range<usize>,
        bufs: Vec<Vec<u8>>,
        metas: Vec<Vec<u8>>,
    },
}

/// A thread's read buffers: payload buffers and metadata buffers, one each per key of
/// its share of a batch.
type ReadBufs = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// A thread's answer: its buffers back and, for reads, per key the metadata length
/// (0 in `raw`) and whether the chunk was found.
struct Done {
    thread: usize,
    bufs: Option<ReadBufs>,
    found: Vec<(usize, bool)>,
    err: Option<String>,
}

/// The per-run keys and values the threads share (reference-counted, built at open).
struct Shared {
    payload_keys: Vec<Vec<u8>>,
    meta_keys: Vec<Option<Vec<u8>>>,
    values: Vec<Bytes>,
    meta_bytes: Vec<u8>,
    batch: usize,
}

/// A thread's connections: one per master, and per hash slot the index of its master's
/// (empty for a standalone server: everything to the one connection).
struct Conns {
    conns: Vec<Conn>,
    route: Arc<[u16]>,
}

impl Conns {
    fn to(&mut self, key: &[u8]) -> io::Result<&mut Conn> {
        let i = if self.route.is_empty() {
            0
        } else {
            let slot = slotline::hash_slot(key);
            usize::from(self.route[usize::from(slot)])
        };
        self.conns.get_mut(i).ok_or_else(|| {
            bad(&format!(
                "no connection for {}",
                String::from_utf8_lossy(key)
            ))
        })
    }
}

fn serve(
    t: usize,
    mut conn: Conns,
    sh: Arc<Shared>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    commands: Arc<AtomicU64>,
) {
    for job in jobs {
        let mut out = Done {
            thread: t,
            bufs: None,
            found: Vec::new(),
            err: None,
        };
        let mut sent = 0u64;
        let r: io::Result<()> = match job {
            Job::Put { batch, range } => (|| {
                for i in range {
                    let k = batch * sh.batch + i;
                    let pk = &sh.payload_keys[k];
                    conn.to(pk)?.set(pk, &sh.values[k])?;
                    sent += 1;
                    if let Some(mk) = &sh.meta_keys[k] {
                        conn.to(mk)?.set(mk, &sh.meta_bytes)?;
                        sent += 1;
                    }
                }
                Ok(())
            })(),
            Job::Get {
                batch,
                range,
                mut bufs,
                mut metas,
            } => {
                let r = (|| {
                    for (j, i) in range.enumerate() {
                        let k = batch * sh.batch + i;
                        let mut meta_len = 0;
                        if let Some(mk) = &sh.meta_keys[k] {
                            // LMCache's read: metadata first; a miss ends the chunk.
                            let got = get_meta(conn.to(mk)?, mk, &mut metas[j]);
                            sent += 1;
                            match got? {
                                Some(n) => meta_len = n,
                                None => {
                                    out.found.push((0, false));
                                    continue;
                                }
                            }
                        }
                        let pk = &sh.payload_keys[k];
                        let hit = conn.to(pk)?.get_into(pk, &mut bufs[j])?;
                        sent += 1;
                        out.found.push((meta_len, hit.is_some()));
                    }
                    Ok(())
                })();
                out.bufs = Some((bufs, metas));
                r
            }
        };
        commands.fetch_add(sent, Ordering::Relaxed);
        out.err = r.err().map(|e| e.to_string());
        if done.send(out).is_err() {
            return;
        }
    }
}

/// GET of a metadata key into `m` (up to its length); `Ok(Some(len))` on a hit.
fn get_meta(conn: &mut Conn, key: &[u8], m: &mut [u8]) -> io::Result<Option<usize>> {
    conn.cmd.clear();
    slotline_testkit::client::encode_command(&mut conn.cmd, &[b"GET", key]);
    conn.stream.write_all(&conn.cmd)?;
    let (t, r) = conn.line()?;
    let head = &conn.rbuf[r];
    match t {
        b'$' if head == b"-1" => Ok(None),
        b'$' => {
            let len: usize = std::str::from_utf8(head)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad bulk length"))?;
            if len > m.len() {
                conn.skip(len + 2)?;
                return Err(bad(&format!("metadata of {len} bytes")));
            }
            let have = (conn.end - conn.pos).min(len);
            m[..have].copy_from_slice(&conn.rbuf[conn.pos..conn.pos + have]);
            conn.pos += have;
            conn.stream.read_exact(&mut m[have..len])?;
            conn.skip(2)?;
            Ok(Some(len))
        }
        b'-' => Err(bad(&String::from_utf8_lossy(head))),
        t => Err(bad(&format!("unexpected reply type {:?}", t as char))),
    }
}

struct ParallelWorker {
    jobs: Vec<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Per thread: its read buffers and metadata buffers while it is idle.
    bufs: Vec<Option<ReadBufs>>,
    /// Per thread: outcome of its last read (metadata length, found).
    found: Vec<Vec<(usize, bool)>>,
    batch: usize,
    commands: Arc<AtomicU64>,
}

impl ParallelWorker {
    /// The keys of a batch thread `t` serves: contiguous shares, the first ones one key
    /// larger when the batch does not divide evenly.
    fn range(&self, t: usize) -> Range<usize> {
        share(self.batch, self.jobs.len(), t)
    }

    fn collect(&mut self) -> Result<(), String> {
        let mut err = None;
        for _ in 0..self.jobs.len() {
            let d = self
                .done
                .recv()
                .map_err(|_| "a parallel-peer thread died".to_string())?;
            if d.bufs.is_some() {
                self.bufs[d.thread] = d.bufs;
            }
            self.found[d.thread] = d.found;
            if err.is_none() {
                err = d.err;
            }
        }
        err.map_or(Ok(()), Err)
    }
}

/// Keys `[start, end)` of a batch of `batch` keys that thread `t` of `n` serves.
pub fn share(batch: usize, n: usize, t: usize) -> Range<usize> {
    let n = n.max(1);
    let (q, r) = (batch / n, batch % n);
    let start = t * q + t.min(r);
    start..start + q + usize::from(t < r)
}

impl Worker for ParallelWorker {
    fn put(&mut self, _wl: &Workload<'_>, b: usize) -> Result<(), String> {
        for t in 0..self.jobs.len() {
            let range = self.range(t);
            self.jobs[t]
                .send(Job::Put { batch: b, range })
                .map_err(|_| "a parallel-peer thread died".to_string())?;
        }
        self.collect()
    }

    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String> {
        for t in 0..self.jobs.len() {
            let range = self.range(t);
            let (bufs, metas) = self.bufs[t]
                .take()
                .ok_or_else(|| "read buffers lost".to_string())?;
            self.jobs[t]
                .send(Job::Get {
                    batch: b,
                    range,
                    bufs,
                    metas,
                })
                .map_err(|_| "a parallel-peer thread died".to_string())?;
        }
        self.collect()?;
        for t in 0..self.jobs.len() {
            let first = self.range(t).start;
            let Some((bufs, metas)) = &self.bufs[t] else {
                return Err("read buffers lost".into());
            };
            for (j, &(meta_len, hit)) in self.found[t].iter().enumerate() {
                if !hit {
                    v.check(first + j, None, None);
                    continue;
                }
                if !wl.has_meta() {
                    v.check(first + j, Some(&bufs[j]), None);
                    continue;
                }
                match RemoteMetadata::decode(&metas[j][..meta_len]) {
                    Ok(m) if m.payload_len() == bufs[j].len() => {
                        v.check(first + j, Some(&bufs[j]), Some(&m))
                    }
                    _ => v.check(first + j, None, None),
                }
            }
        }
        Ok(())
    }

    fn round_trips(&self) -> Option<u64> {
        Some(self.commands.load(Ordering::Relaxed))
    }
}

impl Drop for ParallelWorker {
    fn drop(&mut self) {
        // Closing the job channels ends the threads.
        self.jobs.clear();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Peer for ParallelPeer {
    fn name(&self) -> String {
        "parallel".into()
    }

    fn read(&self) -> &'static str {
        "get-into"
    }

    fn tag(&self) -> String {
        "parallel".into()
    }

    fn open(&mut self, n: usize, wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String> {
        let p = parse_url(&self.url).map_err(|e| e.to_string())?;
        if p.tls {
            return Err("the parallel peer speaks plain TCP only".into());
        }
        let cluster =
            self.mode == Mode::Cluster || p.seeds.len() > 1 || p.mode == Some(Mode::Cluster);
        let (addrs, route): (Vec<String>, Arc<[u16]>) = if cluster {
            let c = NaiveClient::connect(&self.url, Mode::Cluster, KeyLayout::Raw)
                .map_err(|e| e.to_string())?;
            let (addrs, slots) = c.slot_map();
            let route = slots
                .iter()
                .enumerate()
                .map(|(s, o)| o.ok_or_else(|| format!("slot {s} has no master")))
                .collect::<Result<Vec<u16>, String>>()?;
            (addrs.to_vec(), route.into())
        } else {
            match p.seeds.first() {
                Some(a @ ServerAddr::Tcp { .. }) => (vec![a.to_string()], Arc::from(Vec::new())),
                _ => return Err("the parallel peer needs a redis://host:port URL".into()),
            }
        };
        let shared = Arc::new(Shared {
            payload_keys: wl.keys.iter().map(|k| wl.layout.payload_key(k)).collect(),
            meta_keys: wl.keys.iter().map(|k| wl.layout.metadata_key(k)).collect(),
            values: (0..wl.keys.len())
                .map(|i| wl.data.value(i).clone())
                .collect(),
            meta_bytes: wl.data.meta_bytes.clone(),
            batch: wl.batch,
        });
        let mut workers: Vec<Box<dyn Worker>> = Vec::with_capacity(n);
        for _ in 0..n {
            let (done_tx, done_rx) = mpsc::channel();
            // Per caller thread: the bench sums its workers' counts.
            let counter = Arc::new(AtomicU64::new(0));
            let mut w = ParallelWorker {
                jobs: Vec::new(),
                done: done_rx,
                threads: Vec::new(),
                bufs: Vec::new(),
                found: Vec::new(),
                batch: wl.batch,
                commands: counter.clone(),
            };
            for t in 0..self.conns {
                let conns = addrs
                    .iter()
                    .map(|addr| {
                        Conn::open(
                            addr,
                            p.password.as_deref(),
                            p.username.as_deref(),
                            p.database.unwrap_or(0),
                        )
                        .map_err(|e| format!("{addr}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let conn = Conns {
                    conns,
                    route: route.clone(),
                };
                let (tx, rx) = mpsc::channel();
                let (sh, done, commands) = (shared.clone(), done_tx.clone(), counter.clone());
                let h = std::thread::Builder::new()
                    .name(format!("bench-parallel-{t}"))
                    .spawn(move || serve(t, conn, sh, rx, done, commands))
                    .map_err(|e| e.to_string())?;
                let keys = share(wl.batch, self.conns, t).len();
                w.jobs.push(tx);
                w.threads.push(h);
                w.bufs.push(Some((
                    vec![vec![0u8; wl.data.value_size]; keys],
                    vec![vec![0u8; META_BUF]; keys],
                )));
                w.found.push(Vec::with_capacity(keys));
            }
            workers.push(Box::new(w));
        }
        Ok(workers)
    }

    fn note(&self) -> Option<String> {
        Some(format!(
            "parallel: {} thread(s) per caller thread, each with one blocking connection per \
             master, one GET/SET per Redis key, reads into preallocated buffers",
            self.conns
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_once() {
        for (batch, n) in [(128, 8), (16, 8), (3, 8), (10, 3), (1, 1)] {
            let mut next = 0;
            for t in 0..n {
                let r = share(batch, n, t);
                assert_eq!(r.start, next, "batch {batch} n {n} t {t}");
                next = r.end;
            }
            assert_eq!(next, batch);
        }
    }
}
