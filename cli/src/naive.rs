//! The naive baseline: the seed's "before" client. A blocking `std::net::TcpStream`, one
//! command and one reply at a time, one Redis key per round trip: a chunk costs two round
//! trips in the two-key layouts (payload SET then metadata SET; metadata GET then payload
//! GET). It writes and reads the same LMCache byte format as slotline, so either client
//! reads what the other wrote.
//!
//! In cluster mode it loads the slot map with CLUSTER SLOTS when it connects, as
//! redis-py's cluster client does, and follows MOVED / ASK replies after that.
//!
//! Commands are encoded and replies decoded by the test kit's client
//! ([`slotline_testkit::Client`], built on `redis-protocol`); large values are sent from
//! the caller's buffer and received without a copy out of the read buffer.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use slotline::hash_slot;
use slotline::{parse_url, Mode, ServerAddr};
use slotline::{Error, KeyLayout, RemoteMetadata, Result};
use slotline_testkit::client::{
    encode_array_header, encode_bulk, encode_bulk_header, encode_command, OwnedFrame,
};
use slotline_testkit::{parse_cluster_nodes, BytesFrame, Client, Resp2Frame};

/// Values up to this size are copied into the command buffer and sent with one write;
/// larger ones are written from the caller's buffer (redis-py's cut-off is 6000 bytes).
const COPY_LIMIT: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;

/// A chunk as the naive client read it back.
#[derive(Debug)]
pub struct NaiveChunk {
    /// Decoded metadata (`None` in the raw layout).
    pub meta: Option<RemoteMetadata>,
    /// The payload.
    pub data: Bytes,
}

/// One blocking connection per server it talks to, one request in flight.
pub struct NaiveClient {
    layout: KeyLayout,
    cluster: bool,
    seed: String,
    username: Option<String>,
    password: Option<String>,
    database: u32,
    conns: HashMap<String, Client>,
    /// Slot -> index into `addrs`, learned from redirects.
    slots: Vec<Option<u16>>,
    addrs: Vec<String>,
    round_trips: u64,
    cmd: Vec<u8>,
}

impl std::fmt::Debug for NaiveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NaiveClient({}, cluster={})", self.seed, self.cluster)
    }
}

fn proto(node: &str, reason: impl Into<String>) -> Error {
    Error::Protocol {
        node: node.to_string(),
        reason: reason.into(),
    }
}

/// A test-kit client error in the engine's terms, so that the bench reports both alike.
fn kit(e: slotline_testkit::Error) -> Error {
    use slotline_testkit::Error as K;
    match e {
        K::Io { node, source } => Error::Io { node, source },
        K::Auth { node, message } => Error::Auth { node, message },
        K::Server { node, message } => Error::Server { node, message },
        K::Protocol { node, reason } => Error::Protocol { node, reason },
        K::Timeout { after, what } => Error::Timeout { after, what },
        K::Local(m) => Error::Invalid(m),
    }
}

/// The text of an error reply.
fn error_text(v: &BytesFrame) -> Option<String> {
    match v {
        BytesFrame::Error(e) => Some(e.to_string()),
        _ => None,
    }
}

/// A short rendering of a reply for error messages.
fn show(v: &BytesFrame) -> String {
    format!("{:?}", v.to_owned_frame())
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
            password: p.password.map(String::from),
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
            BytesFrame::Array(r) => r,
            v => {
                return Err(proto(
                    &seed,
                    format!("unexpected reply to CLUSTER SLOTS: {}", show(&v)),
                ))
            }
        };
        for r in ranges {
            let BytesFrame::Array(items) = r else {
                continue;
            };
            let (
                Some(BytesFrame::Integer(start)),
                Some(BytesFrame::Integer(end)),
                Some(BytesFrame::Array(master)),
            ) = (items.first(), items.get(1), items.get(2))
            else {
                continue;
            };
            let (Some(host), Some(BytesFrame::Integer(port))) = (master.first(), master.get(1))
            else {
                continue;
            };
            let host = match host.as_str() {
                Some(h) if !h.is_empty() && h != "?" => h.to_string(),
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

    fn conn(&mut self, addr: &str) -> Result<&mut Client> {
        if !self.conns.contains_key(addr) {
            let c = self.open(addr)?;
            self.conns.insert(addr.to_string(), c);
        }
        self.conns
            .get_mut(addr)
            .ok_or_else(|| proto(addr, "connection vanished"))
    }

    fn open(&mut self, addr: &str) -> Result<Client> {
        let mut conn = Client::connect(addr, IO_TIMEOUT).map_err(kit)?;
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
            let what = String::from_utf8_lossy(&args[0]).into_owned();
            if let OwnedFrame::Error(e) = conn.call_raw(&refs).map_err(kit)? {
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

    /// The cluster's masters as loaded at connect time (CLUSTER SLOTS), and per hash
    /// slot the index of its master in that list (None: no owner known). Empty in
    /// standalone mode.
    pub fn slot_map(&self) -> (&[String], &[Option<u16>]) {
        (&self.addrs, &self.slots)
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
    fn request(&mut self, key: Option<&[u8]>, parts: &[&[u8]]) -> Result<BytesFrame> {
        let mut addr = self.addr_for(key);
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let result = (|| {
                let conn = self.conn(&addr)?;
                if asking {
                    conn.exchange(&[b"*1\r\n$6\r\nASKING\r\n"], "ASKING")
                        .map_err(kit)?;
                }
                conn.exchange(parts, "request").map_err(kit)
            })();
            self.round_trips += 1 + u64::from(asking);
            let v = match result {
                Ok(v) => v,
                Err(e) => {
                    // The stream may hold half a reply: never reuse it.
                    self.conns.remove(&addr);
                    return Err(e);
                }
            };
            let Some(msg) = error_text(&v) else {
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
    pub fn command(&mut self, args: &[&[u8]]) -> Result<BytesFrame> {
        let mut cmd = std::mem::take(&mut self.cmd);
        cmd.clear();
        encode_command(&mut cmd, args);
        let r = self.request(args.get(1).copied(), &[&cmd]);
        self.cmd = cmd;
        r
    }

    fn set(&mut self, key: &[u8], value: &[u8], ttl: Option<u64>) -> Result<()> {
        let mut cmd = std::mem::take(&mut self.cmd);
        cmd.clear();
        let ttl = ttl.map(|t| t.to_string());
        let r = if value.len() <= COPY_LIMIT {
            match &ttl {
                Some(t) => encode_command(&mut cmd, &[b"SET", key, value, b"EX", t.as_bytes()]),
                None => encode_command(&mut cmd, &[b"SET", key, value]),
            }
            self.request(Some(key), &[&cmd])
        } else {
            encode_array_header(&mut cmd, if ttl.is_some() { 5 } else { 3 });
            encode_bulk(&mut cmd, b"SET");
            encode_bulk(&mut cmd, key);
            encode_bulk_header(&mut cmd, value.len());
            let head = cmd.len();
            cmd.extend_from_slice(b"\r\n");
            if let Some(t) = &ttl {
                encode_bulk(&mut cmd, b"EX");
                encode_bulk(&mut cmd, t.as_bytes());
            }
            let (h, t) = cmd.split_at(head);
            self.request(Some(key), &[h, value, t])
        };
        self.cmd = cmd;
        match r? {
            BytesFrame::SimpleString(_) => Ok(()),
            v => Err(self.unexpected("SET", key, &v)),
        }
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>> {
        match self.command(&[b"GET", key])? {
            BytesFrame::BulkString(b) => Ok(Some(b)),
            BytesFrame::Null => Ok(None),
            v => Err(self.unexpected("GET", key, &v)),
        }
    }

    fn unexpected(&self, what: &str, key: &[u8], v: &BytesFrame) -> Error {
        match error_text(v) {
            Some(message) => Error::Server {
                node: self.addr_for(Some(key)),
                message: format!("{what} {}: {message}", String::from_utf8_lossy(key)),
            },
            None => proto(
                &self.addr_for(Some(key)),
                format!("unexpected reply to {what}: {}", show(v)),
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

    /// Data commands (GET, SET, MGET, MSET, EXISTS, DEL, ...) the server executed so
    /// far, summed over every master in cluster mode, from INFO commandstats.
    pub fn data_commands(&mut self) -> Result<u64> {
        let mut total = 0;
        for addr in self.masters()? {
            let r = self.conn(&addr).and_then(|c| {
                c.exchange(&[b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n"], "INFO")
                    .map_err(kit)
            })?;
            self.round_trips += 1;
            match r {
                BytesFrame::BulkString(b) => total += data_calls(&String::from_utf8_lossy(&b)),
                v => {
                    return Err(proto(
                        &addr,
                        format!("unexpected reply to INFO: {}", show(&v)),
                    ))
                }
            }
        }
        Ok(total)
    }

    /// The seed, or the healthy masters in cluster mode (CLUSTER NODES).
    fn masters(&mut self) -> Result<Vec<String>> {
        Ok(if self.cluster {
            let seed = self.seed.clone();
            let text = match self.command(&[b"CLUSTER", b"NODES"])? {
                BytesFrame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                v => {
                    return Err(proto(
                        &seed,
                        format!("unexpected reply to CLUSTER NODES: {}", show(&v)),
                    ))
                }
            };
            masters_from_nodes(&text, &seed)
        } else {
            vec![self.seed.clone()]
        })
    }

    /// Empties every database of the server, or of every master in cluster mode (found
    /// with CLUSTER NODES).
    pub fn flush_all(&mut self) -> Result<()> {
        let targets = self.masters()?;
        for addr in targets {
            let r = self.conn(&addr).and_then(|c| {
                c.exchange(&[b"*1\r\n$8\r\nFLUSHALL\r\n"], "FLUSHALL")
                    .map_err(kit)
            });
            self.round_trips += 1;
            if let Some(message) = error_text(&r?) {
                return Err(Error::Server {
                    node: addr,
                    message: format!("FLUSHALL: {message}"),
                });
            }
        }
        Ok(())
    }
}

/// Commands that read or write keys, as INFO commandstats names them.
const DATA_COMMANDS: &[&str] = &[
    "get", "set", "mget", "mset", "exists", "del", "unlink", "setex", "psetex", "getex", "expire",
    "pexpire",
];

/// Sum of `calls=` over the data commands of INFO commandstats output
/// (`cmdstat_get:calls=12,usec=...`).
fn data_calls(info: &str) -> u64 {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| DATA_COMMANDS.contains(name))
        .filter_map(|(_, rest)| {
            rest.split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Addresses of the masters in CLUSTER NODES output that are not failing. The node that
/// answered (`myself`) may list its address as `:port`; `seed` fills in the host.
fn masters_from_nodes(text: &str, seed: &str) -> Vec<String> {
    let seed_host = seed.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    parse_cluster_nodes(text)
        .into_iter()
        .filter(|n| n.is_healthy_master())
        .filter_map(|n| match n.addr.rsplit_once(':') {
            Some(("", port)) => Some(format!("{seed_host}:{port}")),
            Some(_) => Some(n.addr),
            None => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_calls_from_commandstats() {
        let info = "# Commandstats\r\ncmdstat_mset:calls=3,usec=10,usec_per_call=3.3\r\n\
                    cmdstat_info:calls=9,usec=1\r\ncmdstat_get:calls=4,usec=2\r\n";
        assert_eq!(data_calls(info), 7);
    }

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
