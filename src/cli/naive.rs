//! The naive baseline: the seed's "before" client. A blocking `std::net::TcpStream`, one
//! command and one reply at a time, one Redis key per round trip: a chunk costs two round
//! trips in the two-key layouts (payload SET then metadata SET; metadata GET then payload
//! GET). It writes and reads the same LMCache byte format as slotline, so either client
//! reads what the other wrote.
//!
//! In cluster mode it loads the slot map with CLUSTER SLOTS when it connects, as
//! redis-py's cluster client does, and follows MOVED / ASK replies after that.
//!
//! Commands are encoded with `slotline::resp`; replies are read with a small streaming
//! reader, because `resp::parse_value` needs a whole reply buffered and would copy every
//! large payload once more.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use slotline::cluster::slot::hash_slot;
use slotline::config::{parse_url, Mode, ServerAddr};
use slotline::resp::{self, Value};
use slotline::{Error, KeyLayout, RemoteMetadata, Result};

/// Largest reply line (status, error, length header) accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Values up to this size are copied into the command buffer and sent with one write;
/// larger ones are written from the caller's buffer (redis-py's cut-off is 6000 bytes).
const COPY_LIMIT: usize = 16 * 1024;
/// Deepest nested array accepted (CLUSTER SLOTS needs 3).
const MAX_DEPTH: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A chunk as the naive client read it back.
#[derive(Debug)]
pub struct NaiveChunk {
    /// Decoded metadata (`None` in the raw layout).
    pub meta: Option<RemoteMetadata>,
    /// The payload.
    pub data: Vec<u8>,
}

/// One blocking connection per server it talks to, one request in flight.
pub struct NaiveClient {
    layout: KeyLayout,
    cluster: bool,
    seed: String,
    username: Option<String>,
    password: Option<String>,
    database: u32,
    conns: HashMap<String, Conn>,
    /// Slot -> index into `addrs`, learned from redirects.
    slots: Vec<Option<u16>>,
    addrs: Vec<String>,
    round_trips: u64,
    cmd: Vec<u8>,
    line: Vec<u8>,
}

impl std::fmt::Debug for NaiveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NaiveClient({}, cluster={})", self.seed, self.cluster)
    }
}

fn io_err(node: &str, source: std::io::Error) -> Error {
    Error::Io {
        node: node.to_string(),
        source,
    }
}

fn proto(node: &str, reason: impl Into<String>) -> Error {
    Error::Protocol {
        node: node.to_string(),
        reason: reason.into(),
    }
}

impl NaiveClient {
    /// Connects to the first server of `url` (TCP only, no TLS). `mode` applies when the
    /// URL does not say (several seeds or `redis-cluster://` mean cluster).
    pub fn connect(url: &str, mode: Mode, layout: KeyLayout) -> Result<NaiveClient> {
        let p = parse_url(url)?;
        if p.tls {
            return Err(Error::Invalid(
                "the naive client speaks plain TCP only; use a redis:// URL".into(),
            ));
        }
        let seed = match p.seeds.first() {
            Some(a @ ServerAddr::Tcp { .. }) => a.to_string(),
            Some(ServerAddr::Unix { .. }) => {
                return Err(Error::Invalid(
                    "the naive client speaks TCP only; use a redis://host:port URL".into(),
                ))
            }
            None => return Err(Error::Invalid(format!("no server address in {url}"))),
        };
        let cluster = match p.mode {
            Some(m) => m == Mode::Cluster,
            None => p.seeds.len() > 1 || mode == Mode::Cluster,
        };
        let mut c = NaiveClient {
            layout,
            cluster,
            seed: seed.clone(),
            username: p.username,
            password: p.password,
            database: if cluster { 0 } else { p.database.unwrap_or(0) },
            conns: HashMap::new(),
            slots: if cluster {
                vec![None; 16384]
            } else {
                Vec::new()
            },
            addrs: Vec::new(),
            round_trips: 0,
            cmd: Vec::with_capacity(4096),
            line: Vec::with_capacity(128),
        };
        c.conn(&seed)?;
        if cluster {
            c.load_slots()?;
        }
        Ok(c)
    }

    /// Fills the slot map from CLUSTER SLOTS (master of each range).
    fn load_slots(&mut self) -> Result<()> {
        let seed = self.seed.clone();
        let seed_host = seed
            .rsplit_once(':')
            .map_or("127.0.0.1", |(h, _)| h)
            .to_string();
        let ranges = match self.command(&[b"CLUSTER", b"SLOTS"])? {
            Value::Array(r) => r,
            v => {
                return Err(proto(
                    &seed,
                    format!("unexpected reply to CLUSTER SLOTS: {v}"),
                ))
            }
        };
        for r in ranges {
            let Value::Array(items) = r else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (items.first(), items.get(1), items.get(2))
            else {
                continue;
            };
            let (Some(host), Some(Value::Int(port))) = (master.first(), master.get(1)) else {
                continue;
            };
            let host = match host.as_text() {
                Some(h) if !h.is_empty() && h != "?" => h,
                _ => seed_host.clone(),
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            for slot in (*start).max(0)..=(*end).min(16383) {
                if let Ok(slot) = u16::try_from(slot) {
                    self.learn(slot, &addr);
                }
            }
        }
        Ok(())
    }

    /// Round trips made so far (one per command, redirects included).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    fn conn(&mut self, addr: &str) -> Result<&mut Conn> {
        if !self.conns.contains_key(addr) {
            let c = self.open(addr)?;
            self.conns.insert(addr.to_string(), c);
        }
        self.conns
            .get_mut(addr)
            .ok_or_else(|| proto(addr, "connection vanished"))
    }

    fn open(&mut self, addr: &str) -> Result<Conn> {
        let sock = addr
            .to_socket_addrs()
            .map_err(|e| io_err(addr, e))?
            .next()
            .ok_or_else(|| proto(addr, "address resolves to nothing"))?;
        let s = TcpStream::connect_timeout(&sock, IO_TIMEOUT).map_err(|e| io_err(addr, e))?;
        let setup = |s: &TcpStream| -> std::io::Result<TcpStream> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.try_clone()
        };
        let writer = setup(&s).map_err(|e| io_err(addr, e))?;
        let mut conn = Conn {
            reader: BufReader::with_capacity(64 * 1024, s),
            writer,
        };
        let mut hello: Vec<Vec<Vec<u8>>> = Vec::new();
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => {
                hello.push(vec![b"AUTH".to_vec(), u.clone().into(), p.clone().into()])
            }
            (None, Some(p)) => hello.push(vec![b"AUTH".to_vec(), p.clone().into()]),
            _ => {}
        }
        if self.database != 0 {
            hello.push(vec![b"SELECT".to_vec(), self.database.to_string().into()]);
        }
        for args in hello {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut buf = Vec::new();
            resp::write_command(&mut buf, &refs);
            let v = exchange(&mut conn, addr, &[&buf], &mut self.line)?;
            if let Some(e) = v.as_error() {
                let what = String::from_utf8_lossy(&args[0]).into_owned();
                return Err(if what == "AUTH" {
                    Error::Auth {
                        node: addr.to_string(),
                        message: e,
                    }
                } else {
                    Error::Server {
                        node: addr.to_string(),
                        message: e,
                    }
                });
            }
        }
        Ok(conn)
    }

    fn addr_for(&self, key: Option<&[u8]>) -> String {
        if !self.cluster {
            return self.seed.clone();
        }
        key.and_then(|k| self.slots[usize::from(hash_slot(k))])
            .and_then(|i| self.addrs.get(usize::from(i)).cloned())
            .unwrap_or_else(|| self.seed.clone())
    }

    fn learn(&mut self, slot: u16, addr: &str) {
        let idx = match self.addrs.iter().position(|a| a == addr) {
            Some(i) => i,
            None => {
                self.addrs.push(addr.to_string());
                self.addrs.len() - 1
            }
        };
        if let (Some(s), Ok(i)) = (self.slots.get_mut(usize::from(slot)), u16::try_from(idx)) {
            *s = Some(i);
        }
    }

    /// Sends one request (its encoded parts, written in order) to the owner of `key` and
    /// returns the reply, following cluster redirects. Error replies are returned as
    /// values.
    fn request(&mut self, key: Option<&[u8]>, parts: &[&[u8]]) -> Result<Value> {
        let mut addr = self.addr_for(key);
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut line = std::mem::take(&mut self.line);
            let result = (|| {
                let conn = self.conn(&addr)?;
                if asking {
                    exchange(conn, &addr, &[b"*1\r\n$6\r\nASKING\r\n"], &mut line)?;
                }
                exchange(conn, &addr, parts, &mut line)
            })();
            self.line = line;
            self.round_trips += 1 + u64::from(asking);
            let v = match result {
                Ok(v) => v,
                Err(e) => {
                    // The stream may hold half a reply: never reuse it.
                    self.conns.remove(&addr);
                    return Err(e);
                }
            };
            let Some(msg) = v.as_error() else {
                return Ok(v);
            };
            let mut words = msg.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("MOVED"), Some(slot), Some(to)) if self.cluster => {
                    if let Ok(slot) = slot.parse::<u16>() {
                        self.learn(slot, to);
                    }
                    addr = to.to_string();
                    asking = false;
                }
                (Some("ASK"), Some(_), Some(to)) if self.cluster => {
                    addr = to.to_string();
                    asking = true;
                }
                _ => return Ok(v),
            }
        }
        Err(Error::Cluster(format!(
            "more than {MAX_REDIRECTS} redirects for one request"
        )))
    }

    /// One command from its arguments; the routing key is the second argument.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Value> {
        let mut cmd = std::mem::take(&mut self.cmd);
        cmd.clear();
        resp::write_command(&mut cmd, args);
        let r = self.request(args.get(1).copied(), &[&cmd]);
        self.cmd = cmd;
        r
    }

    fn set(&mut self, key: &[u8], value: &[u8], ttl: Option<u64>) -> Result<()> {
        let mut cmd = std::mem::take(&mut self.cmd);
        cmd.clear();
        let r = if value.len() <= COPY_LIMIT {
            resp::write_set(&mut cmd, key, value, ttl);
            self.request(Some(key), &[&cmd])
        } else {
            resp::write_set_prefix(&mut cmd, key, value.len(), ttl);
            let head = cmd.len();
            resp::write_set_suffix(&mut cmd, ttl);
            let (h, t) = cmd.split_at(head);
            self.request(Some(key), &[h, value, t])
        };
        self.cmd = cmd;
        match r? {
            Value::Simple(_) => Ok(()),
            v => Err(self.unexpected("SET", key, &v)),
        }
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.command(&[b"GET", key])? {
            Value::Bulk(b) => Ok(Some(b)),
            Value::Nil => Ok(None),
            v => Err(self.unexpected("GET", key, &v)),
        }
    }

    fn unexpected(&self, what: &str, key: &[u8], v: &Value) -> Error {
        match v.as_error() {
            Some(message) => Error::Server {
                node: self.addr_for(Some(key)),
                message: format!("{what} {}: {message}", String::from_utf8_lossy(key)),
            },
            None => proto(
                &self.addr_for(Some(key)),
                format!("unexpected reply to {what}: {v}"),
            ),
        }
    }

    /// Stores a chunk: payload SET, then (two-key layouts) metadata SET.
    pub fn put_chunk(
        &mut self,
        key: &[u8],
        meta: &[u8],
        payload: &[u8],
        ttl: Option<u64>,
    ) -> Result<()> {
        let pk = self.layout.payload_key(key);
        self.set(&pk, payload, ttl)?;
        if let Some(mk) = self.layout.metadata_key(key) {
            self.set(&mk, meta, ttl)?;
        }
        Ok(())
    }

    /// Reads a chunk by LMCache's rules: metadata GET (a miss ends it), payload GET, and
    /// a payload whose length differs from the metadata is a miss.
    pub fn get_chunk(&mut self, key: &[u8]) -> Result<Option<NaiveChunk>> {
        let Some(mk) = self.layout.metadata_key(key) else {
            let data = self.get(&self.layout.payload_key(key))?;
            return Ok(data.map(|data| NaiveChunk { meta: None, data }));
        };
        let Some(mbytes) = self.get(&mk)? else {
            return Ok(None);
        };
        let Ok(meta) = RemoteMetadata::decode(&mbytes) else {
            return Ok(None);
        };
        let Some(data) = self.get(&self.layout.payload_key(key))? else {
            return Ok(None);
        };
        if data.len() != meta.payload_len() {
            return Ok(None);
        }
        Ok(Some(NaiveChunk {
            meta: Some(meta),
            data,
        }))
    }

    /// Empties every database of the server, or of every master in cluster mode (found
    /// with CLUSTER NODES).
    pub fn flush_all(&mut self) -> Result<()> {
        let targets = if self.cluster {
            let seed = self.seed.clone();
            let text = match self.command(&[b"CLUSTER", b"NODES"])? {
                Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                v => {
                    return Err(proto(
                        &seed,
                        format!("unexpected reply to CLUSTER NODES: {v}"),
                    ))
                }
            };
            masters_from_nodes(&text, &seed)
        } else {
            vec![self.seed.clone()]
        };
        for addr in targets {
            let mut line = std::mem::take(&mut self.line);
            let r = self
                .conn(&addr)
                .and_then(|c| exchange(c, &addr, &[b"*1\r\n$8\r\nFLUSHALL\r\n"], &mut line));
            self.line = line;
            self.round_trips += 1;
            let v = r?;
            if let Some(message) = v.as_error() {
                return Err(Error::Server {
                    node: addr,
                    message: format!("FLUSHALL: {message}"),
                });
            }
        }
        Ok(())
    }
}

/// Addresses of the masters in CLUSTER NODES output that are not failing. The node that
/// answered (`myself`) may list its address as `:port`; `seed` fills in the host.
fn masters_from_nodes(text: &str, seed: &str) -> Vec<String> {
    let seed_host = seed.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (f.get(1), f.get(2)) else {
            continue;
        };
        if !flags.split(',').any(|x| x == "master") || flags.contains("fail") {
            continue;
        }
        // "host:port@bus[,hostname]"
        let addr = addr.split(['@', ',']).next().unwrap_or("");
        let addr = match addr.rsplit_once(':') {
            Some(("", port)) => format!("{seed_host}:{port}"),
            Some(_) => addr.to_string(),
            None => continue,
        };
        out.push(addr);
    }
    out
}

/// Writes the request parts and reads one reply.
fn exchange(conn: &mut Conn, node: &str, parts: &[&[u8]], line: &mut Vec<u8>) -> Result<Value> {
    for p in parts {
        conn.writer.write_all(p).map_err(|e| io_err(node, e))?;
    }
    read_value(&mut conn.reader, node, line, 0)
}

fn read_line(r: &mut BufReader<TcpStream>, node: &str, line: &mut Vec<u8>) -> Result<()> {
    line.clear();
    r.by_ref()
        .take(MAX_LINE)
        .read_until(b'\n', line)
        .map_err(|e| io_err(node, e))?;
    if line.is_empty() {
        return Err(io_err(
            node,
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ),
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(proto(
            node,
            "reply line not terminated by CRLF (or too long)",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

fn parse_int(node: &str, digits: &[u8]) -> Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            proto(
                node,
                format!("bad integer {:?}", String::from_utf8_lossy(digits)),
            )
        })
}

fn read_value(
    r: &mut BufReader<TcpStream>,
    node: &str,
    line: &mut Vec<u8>,
    depth: usize,
) -> Result<Value> {
    read_line(r, node, line)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(proto(node, "empty reply line"));
    };
    match kind {
        b'+' => Ok(Value::Simple(rest.to_vec())),
        b'-' => Ok(Value::Error(rest.to_vec())),
        b':' => Ok(Value::Int(parse_int(node, rest)?)),
        b'$' => {
            let n = parse_int(node, rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= resp::MAX_BULK_LEN)
                .ok_or_else(|| proto(node, format!("bulk length {n} too large")))?;
            let mut data = vec![0u8; n];
            r.read_exact(&mut data).map_err(|e| io_err(node, e))?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).map_err(|e| io_err(node, e))?;
            if &crlf != b"\r\n" {
                return Err(proto(node, "bulk string not terminated by CRLF"));
            }
            Ok(Value::Bulk(data))
        }
        b'*' => {
            let n = parse_int(node, rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            if depth >= MAX_DEPTH {
                return Err(proto(node, "reply nested too deeply"));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= resp::MAX_ARRAY_LEN)
                .ok_or_else(|| proto(node, format!("array length {n} too large")))?;
            let mut items = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                items.push(read_value(r, node, line, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        other => Err(proto(
            node,
            format!("unexpected reply type byte {:?}", char::from(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_parsed_from_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected
67ed :30002@40002 myself,master - 0 0 2 connected 5461-10922
292f 127.0.0.1:30003@40003,host master - 0 1 3 connected 10923-16383
e7d1 127.0.0.1:30001@40001 master,fail - 0 1 1 disconnected
";
        assert_eq!(
            masters_from_nodes(text, "127.0.0.1:30002"),
            vec!["127.0.0.1:30002".to_string(), "127.0.0.1:30003".to_string()]
        );
    }
}
