//! RESP2 hot path: an encoder that writes commands into reusable buffers, a
//! complete-frame parser for small replies, and a resumable array reader that lands
//! each bulk payload straight in its destination.
//!
//! The array reader exists because an MGET reply of 256 values of 32 MiB must not be
//! buffered twice: once the `$<len>\r\n` header of an element is seen, the reader asks a
//! [`BulkSink`] for the destination and copies (or lets the socket read) the payload
//! bytes directly there. Everything else (status, integers, errors, control-plane
//! arrays) is small and read by the bounded, resumable [`ReplyReader`] ([`parse_value`]
//! parses one whole frame, for tests and the fuzzer).

use std::fmt;

use crate::mem::Mem;

mod reply;

pub use reply::{ReplyLimits, ReplyReader};

/// Largest bulk string slotline accepts; Redis's own `proto-max-bulk-len` maximum.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Largest array slotline accepts in a reply.
pub const MAX_ARRAY_LEN: usize = 1 << 24;
/// Longest header or status line before the stream is declared garbage.
pub const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting accepted in control-plane replies (CLUSTER SHARDS nests 4 levels).
pub const MAX_DEPTH: usize = 16;

/// A bad byte stream. The connection that produced it cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn perr(msg: impl Into<String>) -> ProtoError {
    ProtoError(msg.into())
}

// ---------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------

/// Appends the decimal form of `n` without going through `fmt` (this runs per key).
pub fn write_uint(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

fn write_prefixed(out: &mut Vec<u8>, prefix: u8, n: usize) {
    out.push(prefix);
    write_uint(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// `*<n>\r\n`
pub fn write_array_header(out: &mut Vec<u8>, n: usize) {
    write_prefixed(out, b'*', n);
}

/// `$<len>\r\n`; the caller sends `len` payload bytes and `\r\n` after it.
pub fn write_bulk_header(out: &mut Vec<u8>, len: usize) {
    write_prefixed(out, b'$', len);
}

/// A complete bulk string.
pub fn write_bulk(out: &mut Vec<u8>, data: &[u8]) {
    write_bulk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A whole command from its arguments: `GET k` is `*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`.
pub fn write_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    write_array_header(out, args.len());
    for a in args {
        write_bulk(out, a);
    }
}

/// Everything of `SET key <value> [EX ttl]` that precedes the value bytes. The value
/// itself is sent from the caller's buffer (no copy), followed by [`write_set_suffix`].
pub fn write_set_prefix(out: &mut Vec<u8>, key: &[u8], value_len: usize, ttl: Option<u64>) {
    write_array_header(out, if ttl.is_some() { 5 } else { 3 });
    out.extend_from_slice(b"$3\r\nSET\r\n");
    write_bulk(out, key);
    write_bulk_header(out, value_len);
}

/// What follows the value bytes of a SET started by [`write_set_prefix`].
pub fn write_set_suffix(out: &mut Vec<u8>, ttl: Option<u64>) {
    out.extend_from_slice(b"\r\n");
    if let Some(ttl) = ttl {
        out.extend_from_slice(b"$2\r\nEX\r\n");
        let mut num = Vec::with_capacity(20);
        write_uint(&mut num, ttl);
        write_bulk(out, &num);
    }
}

/// A whole `SET key value [EX ttl]` into one buffer (small values, metadata).
#[cfg(test)]
pub fn write_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: Option<u64>) {
    write_set_prefix(out, key, value.len(), ttl);
    out.extend_from_slice(value);
    write_set_suffix(out, ttl);
}

// ---------------------------------------------------------------------------------
// Complete-frame parser (small replies)
// ---------------------------------------------------------------------------------

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(Vec<u8>),
    /// `-ERR ...`
    Error(Vec<u8>),
    /// `:1`
    Int(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*n`
    Array(Vec<Value>),
}

impl Value {
    /// The error text, if this is an error reply.
    pub fn as_error(&self) -> Option<String> {
        match self {
            Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        }
    }

    /// Bulk or simple string contents as text.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Simple(s) | Value::Bulk(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Simple(s) => write!(f, "{}", s.escape_ascii()),
            Value::Error(s) => write!(f, "(error) {}", s.escape_ascii()),
            Value::Int(i) => write!(f, "(integer) {i}"),
            Value::Bulk(s) => write!(f, "\"{}\"", s.escape_ascii()),
            Value::Nil => f.write_str("(nil)"),
            Value::Array(items) => {
                if items.is_empty() {
                    return f.write_str("(empty array)");
                }
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{}) {}", i + 1, v)?;
                }
                Ok(())
            }
        }
    }
}

/// Finds the `\r\n` ending the line that starts at `from`. `Ok(None)` means "need more".
fn find_line(buf: &[u8], from: usize) -> Result<Option<usize>, ProtoError> {
    let hay = &buf[from..];
    let limit = hay.len().min(MAX_LINE);
    match hay[..limit].iter().position(|&b| b == b'\n') {
        Some(p) => {
            if p == 0 || hay[p - 1] != b'\r' {
                return Err(perr("line not terminated by CRLF"));
            }
            Ok(Some(from + p - 1))
        }
        None if hay.len() >= MAX_LINE => Err(perr("header line longer than 64 KiB")),
        None => Ok(None),
    }
}

fn parse_int(line: &[u8]) -> Result<i64, ProtoError> {
    let bad = || perr(format!("bad integer {:?}", line.escape_ascii().to_string()));
    let (neg, digits) = match line.first() {
        Some(b'-') => (true, &line[1..]),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(bad());
    }
    // Accumulate in i128 so i64::MIN, whose magnitude exceeds i64::MAX, parses.
    let mut n: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        n = n * 10 + (d - b'0') as i128;
    }
    let n = if neg { -n } else { n };
    i64::try_from(n).map_err(|_| perr("integer overflow"))
}

/// Length header of a bulk (`$`) or array (`*`): `None` for the nil form `-1`.
fn parse_len(line: &[u8], max: usize, what: &str) -> Result<Option<usize>, ProtoError> {
    let n = parse_int(line)?;
    if n == -1 {
        return Ok(None);
    }
    if n < 0 || n as u64 > max as u64 {
        return Err(perr(format!("{what} length {n} out of range")));
    }
    Ok(Some(n as usize))
}

/// Parses one complete reply at the start of `buf`. Returns the value and the number of
/// bytes it took, `Ok(None)` if `buf` holds only part of it. The reference the
/// engine's [`ReplyReader`] is tested against (the engine itself uses the reader).
#[cfg(any(test, feature = "fuzzing"))]
pub fn parse_value(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtoError> {
    parse_at(buf, 0, 0)
}

#[cfg(any(test, feature = "fuzzing"))]
fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(perr("reply nested too deeply"));
    }
    if pos >= buf.len() {
        return Ok(None);
    }
    let Some(end) = find_line(buf, pos + 1)? else {
        return Ok(None);
    };
    let line = &buf[pos + 1..end];
    let next = end + 2;
    match buf[pos] {
        b'+' => Ok(Some((Value::Simple(line.to_vec()), next))),
        b'-' => Ok(Some((Value::Error(line.to_vec()), next))),
        b':' => Ok(Some((Value::Int(parse_int(line)?), next))),
        b'$' => match parse_len(line, MAX_BULK_LEN, "bulk")? {
            None => Ok(Some((Value::Nil, next))),
            Some(len) => {
                if buf.len() < next + len + 2 {
                    return Ok(None);
                }
                if &buf[next + len..next + len + 2] != b"\r\n" {
                    return Err(perr("bulk string not terminated by CRLF"));
                }
                Ok(Some((
                    Value::Bulk(buf[next..next + len].to_vec()),
                    next + len + 2,
                )))
            }
        },
        b'*' => match parse_len(line, MAX_ARRAY_LEN, "array")? {
            None => Ok(Some((Value::Nil, next))),
            Some(n) => {
                // Each element takes at least 3 bytes, so a short buffer cannot hold it;
                // this also keeps a hostile length from reserving memory up front.
                if buf.len().saturating_sub(next) < n.saturating_mul(3) {
                    return Ok(None);
                }
                let mut items = Vec::with_capacity(n);
                let mut at = next;
                for _ in 0..n {
                    match parse_at(buf, at, depth + 1)? {
                        Some((v, after)) => {
                            items.push(v);
                            at = after;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Value::Array(items), at)))
            }
        },
        b => Err(perr(format!("unexpected reply type byte 0x{b:02x}"))),
    }
}

// ---------------------------------------------------------------------------------
// Resumable array reader (MGET replies)
// ---------------------------------------------------------------------------------

/// Where the payload of one bulk element goes. The reader owns it while bytes arrive
/// and hands it back through [`BulkSink::finish`], so the buffer stays valid while the
/// kernel writes into it (an io_uring receive may be in flight).
#[derive(Debug)]
pub struct Dest {
    /// The buffer; bytes land in `buf[..len]`.
    pub buf: Mem,
    /// Number of payload bytes for this element.
    pub len: usize,
    /// `false` when the sink did not want the bytes (they are read and dropped).
    pub keep: bool,
}

impl Dest {
    /// A fresh allocation of exactly `len` bytes.
    pub fn alloc(len: usize) -> Dest {
        Dest {
            buf: Mem::Own(vec![0u8; len]),
            len,
            keep: true,
        }
    }

    /// Bytes to be read and thrown away (too large for the caller's buffer, say).
    pub fn discard(len: usize) -> Dest {
        Dest {
            buf: Mem::default(),
            len,
            keep: false,
        }
    }
}

/// Receives the elements of an array reply as they complete.
pub trait BulkSink {
    /// Element `index` is a bulk of `len` bytes: where should it land?
    fn begin(&mut self, index: usize, len: usize) -> Dest;
    /// Element `index` is complete; `dest` holds its bytes (when `dest.keep`).
    fn finish(&mut self, index: usize, dest: Dest);
    /// Element `index` is nil (a miss).
    fn nil(&mut self, index: usize);
    /// The reply announced `n` elements; called before any element is delivered, so
    /// a sink expecting another count can refuse the whole reply (an error here ends
    /// the read with that error and nothing delivered).
    fn array_len(&mut self, n: usize) -> Result<(), ProtoError> {
        let _ = n;
        Ok(())
    }
}

/// What the reader found at the end of a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum ArrayOutcome {
    /// The array of `n` elements was delivered to the sink.
    Done(usize),
    /// The server answered with an error instead of an array (MOVED, CROSSSLOT, ...).
    Error(Vec<u8>),
    /// `*-1`
    Nil,
}

#[derive(Debug)]
enum St {
    Header,
    Elem {
        i: usize,
        n: usize,
    },
    Payload {
        i: usize,
        n: usize,
        dest: Dest,
        filled: usize,
    },
    Trailer {
        i: usize,
        n: usize,
        dest: Dest,
    },
}

/// Decodes one `*n` reply of bulk strings, resumably: feed it any split of the stream.
#[derive(Debug)]
pub struct ArrayReader {
    st: St,
    /// The payload destination is lent out (to a receive the kernel performs) and must
    /// come back through [`ArrayReader::restore_window`] before the reader is fed again.
    lent: bool,
    /// Payload bytes copied out of the receive buffer since [`ArrayReader::take_staged`].
    staged: usize,
}

impl Default for ArrayReader {
    fn default() -> Self {
        ArrayReader {
            st: St::Header,
            lent: false,
            staged: 0,
        }
    }
}

impl ArrayReader {
    /// A reader waiting for the `*n` header.
    pub fn new() -> ArrayReader {
        ArrayReader::default()
    }

    /// Consumes what it can of `buf`. Returns the bytes consumed and, when the reply is
    /// complete, its outcome (the reader is then ready for the next reply).
    pub fn feed<S: BulkSink>(
        &mut self,
        buf: &[u8],
        sink: &mut S,
    ) -> Result<(usize, Option<ArrayOutcome>), ProtoError> {
        if self.lent {
            return Err(perr(
                "reader fed while its destination is lent to a receive",
            ));
        }
        let mut pos = 0;
        loop {
            match std::mem::replace(&mut self.st, St::Header) {
                St::Header => {
                    if pos >= buf.len() {
                        return Ok((pos, None));
                    }
                    let Some(end) = find_line(buf, pos + 1)? else {
                        return Ok((pos, None));
                    };
                    let line = &buf[pos + 1..end];
                    let kind = buf[pos];
                    pos = end + 2;
                    match kind {
                        b'*' => match parse_len(line, MAX_ARRAY_LEN, "array")? {
                            None => return Ok((pos, Some(ArrayOutcome::Nil))),
                            Some(n) => {
                                sink.array_len(n)?;
                                if n == 0 {
                                    return Ok((pos, Some(ArrayOutcome::Done(0))));
                                }
                                self.st = St::Elem { i: 0, n };
                            }
                        },
                        b'-' => return Ok((pos, Some(ArrayOutcome::Error(line.to_vec())))),
                        b => {
                            return Err(perr(format!(
                                "expected an array reply, got type byte 0x{b:02x}"
                            )))
                        }
                    }
                }
                St::Elem { i, n } => {
                    if i == n {
                        return Ok((pos, Some(ArrayOutcome::Done(n))));
                    }
                    if pos >= buf.len() {
                        self.st = St::Elem { i, n };
                        return Ok((pos, None));
                    }
                    let Some(end) = find_line(buf, pos + 1)? else {
                        self.st = St::Elem { i, n };
                        return Ok((pos, None));
                    };
                    let kind = buf[pos];
                    let line = &buf[pos + 1..end];
                    if kind != b'$' {
                        return Err(perr(format!(
                            "expected a bulk string in array, got type byte 0x{kind:02x}"
                        )));
                    }
                    let len = parse_len(line, MAX_BULK_LEN, "bulk")?;
                    pos = end + 2;
                    match len {
                        None => {
                            sink.nil(i);
                            self.st = St::Elem { i: i + 1, n };
                        }
                        Some(len) => {
                            let dest = sink.begin(i, len);
                            self.st = St::Payload {
                                i,
                                n,
                                dest,
                                filled: 0,
                            };
                        }
                    }
                }
                St::Payload {
                    i,
                    n,
                    mut dest,
                    mut filled,
                } => {
                    let take = (dest.len - filled).min(buf.len() - pos);
                    if dest.keep {
                        dest.buf[filled..filled + take].copy_from_slice(&buf[pos..pos + take]);
                        self.staged += take;
                    }
                    filled += take;
                    pos += take;
                    if filled < dest.len {
                        self.st = St::Payload { i, n, dest, filled };
                        return Ok((pos, None));
                    }
                    self.st = St::Trailer { i, n, dest };
                }
                St::Trailer { i, n, dest } => {
                    if buf.len() - pos < 2 {
                        self.st = St::Trailer { i, n, dest };
                        return Ok((pos, None));
                    }
                    if &buf[pos..pos + 2] != b"\r\n" {
                        return Err(perr("bulk string not terminated by CRLF"));
                    }
                    pos += 2;
                    sink.finish(i, dest);
                    self.st = St::Elem { i: i + 1, n };
                }
            }
        }
    }

    /// While a payload is being received: the part of its destination still to be
    /// filled, so the socket can read into it directly. `None` when no kept payload is
    /// in progress.
    pub fn direct_window(&mut self) -> Option<&mut [u8]> {
        match &mut self.st {
            St::Payload { dest, filled, .. } if dest.keep => Some(&mut dest.buf[*filled..dest.len]),
            _ => None,
        }
    }

    /// Payload bytes copied out of the receive buffer (not received straight into
    /// their destination) since the last call.
    pub fn take_staged(&mut self) -> usize {
        std::mem::take(&mut self.staged)
    }

    /// Where the reader stands: the index of the element whose header comes next, the
    /// bytes known to come before that header (the rest of a small payload in
    /// progress, its CRLF), and whether the array header itself is still to come.
    /// `None` while a large payload (one received straight into its destination) is
    /// in progress.
    pub fn upcoming(&self, direct_min: usize) -> Option<(usize, usize, bool)> {
        match &self.st {
            St::Header => Some((0, 0, true)),
            St::Elem { i, .. } => Some((*i, 0, false)),
            St::Trailer { i, .. } => Some((i + 1, 2, false)),
            St::Payload {
                i, dest, filled, ..
            } => (dest.len < direct_min).then_some((i + 1, dest.len - filled + 2, false)),
        }
    }

    /// Length of the kept payload in progress (0 if none).
    pub fn payload_len(&self) -> usize {
        match &self.st {
            St::Payload { dest, .. } if dest.keep => dest.len,
            _ => 0,
        }
    }

    /// Bytes of payload still expected by the element in progress (0 if none).
    pub fn payload_remaining(&self) -> usize {
        match &self.st {
            St::Payload { dest, filled, .. } => dest.len - filled,
            _ => 0,
        }
    }

    /// Records that `n` bytes were read straight into [`direct_window`](Self::direct_window).
    pub fn advance_direct(&mut self, n: usize) {
        if let St::Payload { dest, filled, .. } = &mut self.st {
            *filled = (*filled + n).min(dest.len);
        }
    }

    /// `true` between replies.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        matches!(self.st, St::Header)
    }

    /// Moves the unfilled destination of the payload in progress out of the reader, for
    /// a receive that writes into it while the reader cannot be touched. Returns the
    /// buffer and the offset where the receive must write (`buf[at..len]`), where `len`
    /// is the payload length. `None` when no kept payload is in progress or it is lent
    /// already.
    pub fn lend_window(&mut self) -> Option<(Mem, usize, usize)> {
        if self.lent {
            return None;
        }
        match &mut self.st {
            St::Payload { dest, filled, .. } if dest.keep && *filled < dest.len => {
                self.lent = true;
                Some((std::mem::take(&mut dest.buf), *filled, dest.len))
            }
            _ => None,
        }
    }

    /// Takes back the destination lent by [`lend_window`](Self::lend_window), with `n`
    /// more bytes received into it. Returns the buffer when no payload was waiting for
    /// it (the reader was reset meanwhile).
    pub fn restore_window(&mut self, buf: Mem, n: usize) -> Option<Mem> {
        if !self.lent {
            return Some(buf);
        }
        self.lent = false;
        match &mut self.st {
            St::Payload { dest, filled, .. } => {
                dest.buf = buf;
                *filled = (*filled + n).min(dest.len);
                None
            }
            _ => Some(buf),
        }
    }

    /// `true` while the destination is lent out.
    pub fn window_lent(&self) -> bool {
        self.lent
    }

    /// Forgets a partial reply (the connection is being dropped). Returns the element in
    /// progress and its destination, so a caller's buffer can go back to its owner. A
    /// lent destination stays lent (its buffer is not here): call this after
    /// [`restore_window`](Self::restore_window).
    pub fn reset(&mut self) -> Option<(usize, Dest)> {
        if self.lent {
            return None;
        }
        match std::mem::replace(&mut self.st, St::Header) {
            St::Payload { i, dest, .. } | St::Trailer { i, dest, .. } => Some((i, dest)),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn write_command_bytes() {
        let mut out = Vec::new();
        write_command(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[derive(Default)]
    struct Collect {
        items: Vec<Option<Vec<u8>>>,
    }

    impl BulkSink for Collect {
        fn begin(&mut self, _i: usize, len: usize) -> Dest {
            Dest::alloc(len)
        }
        fn finish(&mut self, i: usize, dest: Dest) {
            assert_eq!(i, self.items.len());
            self.items.push(Some(dest.buf.into_vec()));
        }
        fn nil(&mut self, i: usize) {
            assert_eq!(i, self.items.len());
            self.items.push(None);
        }
    }

    #[test]
    fn encodes_set_with_ttl() {
        let mut out = Vec::new();
        write_set(&mut out, b"k", b"vv", Some(60));
        assert_eq!(
            out,
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n$2\r\nEX\r\n$2\r\n60\r\n"
        );
        out.clear();
        write_set(&mut out, b"k", b"", None);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn write_uint_edges() {
        assert_eq!(
            parse_value(b":-9223372036854775808\r\n")
                .unwrap()
                .unwrap()
                .0,
            Value::Int(i64::MIN)
        );
        assert!(parse_value(b":9223372036854775808\r\n").is_err());
        for n in [0u64, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            write_uint(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn parses_small_values() {
        let cases: &[(&[u8], Value)] = &[
            (b"+OK\r\n", Value::Simple(b"OK".to_vec())),
            (b"-ERR x\r\n", Value::Error(b"ERR x".to_vec())),
            (b":-42\r\n", Value::Int(-42)),
            (b"$-1\r\n", Value::Nil),
            (b"*-1\r\n", Value::Nil),
            (b"$0\r\n\r\n", Value::Bulk(vec![])),
            (
                b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
                Value::Array(vec![
                    Value::Bulk(b"a".to_vec()),
                    Value::Array(vec![Value::Int(1)]),
                ]),
            ),
        ];
        for (bytes, want) in cases {
            let (v, used) = parse_value(bytes).unwrap().unwrap();
            assert_eq!(&v, want);
            assert_eq!(used, bytes.len());
            for cut in 0..bytes.len() {
                assert_eq!(parse_value(&bytes[..cut]).unwrap(), None, "cut {cut}");
            }
        }
    }

    /// Malformed replies every reader must refuse.
    pub(crate) const GARBAGE: &[&[u8]] = &[
        b"?x\r\n",
        b"$abc\r\n",
        b"$-5\r\n",
        b"*99999999999\r\n",
        b":1x\r\n",
        b"+OK\n",
        b"$1\r\nab\r\n",
    ];

    #[test]
    fn rejects_garbage() {
        for &bad in GARBAGE.iter().chain([&b"$9999999999\r\n"[..]].iter()) {
            assert!(
                parse_value(bad).is_err(),
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn array_reader_every_split() {
        let mut stream = Vec::new();
        write_array_header(&mut stream, 4);
        write_bulk(&mut stream, b"hello");
        stream.extend_from_slice(b"$-1\r\n");
        write_bulk(&mut stream, b"");
        write_bulk(&mut stream, &[0u8, 13, 10, 255]);
        let want = vec![
            Some(b"hello".to_vec()),
            None,
            Some(vec![]),
            Some(vec![0u8, 13, 10, 255]),
        ];
        for cut in 0..=stream.len() {
            let mut r = ArrayReader::new();
            let mut sink = Collect::default();
            let mut pending = stream[..cut].to_vec();
            let (used, out) = r.feed(&pending, &mut sink).unwrap();
            pending.drain(..used);
            let out = match out {
                Some(o) => o,
                None => {
                    pending.extend_from_slice(&stream[cut..]);
                    let (used2, out2) = r.feed(&pending, &mut sink).unwrap();
                    assert_eq!(used2, pending.len());
                    out2.unwrap()
                }
            };
            assert_eq!(out, ArrayOutcome::Done(4));
            assert_eq!(sink.items, want, "cut {cut}");
            assert!(r.is_idle());
        }
    }

    #[test]
    fn array_reader_lends_and_takes_back_its_window() {
        let mut r = ArrayReader::new();
        let mut c = Collect::default();
        let (used, done) = r.feed(b"*1\r\n$6\r\nab", &mut c).unwrap();
        assert_eq!((used, done), (10, None));
        let (mut buf, at, len) = r.lend_window().unwrap();
        assert_eq!((at, len), (2, 6));
        assert!(r.window_lent() && r.lend_window().is_none());
        assert!(r.feed(b"x", &mut c).is_err(), "no feeding while lent");
        assert!(r.reset().is_none(), "a lent window stays lent");
        buf[2..6].copy_from_slice(b"cdef");
        assert!(r.restore_window(buf, 4).is_none());
        let (used, done) = r.feed(b"\r\n", &mut c).unwrap();
        assert_eq!((used, done), (2, Some(ArrayOutcome::Done(1))));
        // Reset mid-payload hands the destination back.
        r.feed(b"*1\r\n$3\r\na", &mut c).unwrap();
        let (i, dest) = r.reset().unwrap();
        assert_eq!((i, dest.len), (0, 3));
        assert!(r.is_idle());
    }

    /// A sink that expects `n` elements refuses a reply of another length before any
    /// element reaches it.
    #[test]
    fn array_reader_refuses_a_wrong_count_before_delivering() {
        struct Expect(usize, Collect);
        impl BulkSink for Expect {
            fn begin(&mut self, i: usize, len: usize) -> Dest {
                self.1.begin(i, len)
            }
            fn finish(&mut self, i: usize, dest: Dest) {
                self.1.finish(i, dest)
            }
            fn nil(&mut self, i: usize) {
                self.1.nil(i)
            }
            fn array_len(&mut self, n: usize) -> Result<(), ProtoError> {
                if n == self.0 {
                    Ok(())
                } else {
                    Err(perr(format!("expected {} got {n}", self.0)))
                }
            }
        }
        for (stream, ok) in [
            (&b"*2\r\n$1\r\na\r\n$-1\r\n"[..], true),
            (b"*3\r\n$1\r\na\r\n$-1\r\n$1\r\nb\r\n", false),
            (b"*1\r\n$1\r\na\r\n", false),
            (b"*0\r\n", false),
        ] {
            let mut sink = Expect(2, Collect::default());
            let r = ArrayReader::new().feed(stream, &mut sink);
            assert_eq!(r.is_ok(), ok, "{}", stream.escape_ascii());
            if !ok {
                assert!(sink.1.items.is_empty(), "nothing delivered");
            }
        }
    }

    #[test]
    fn array_reader_error_and_direct_window() {
        let mut r = ArrayReader::new();
        let mut sink = Collect::default();
        let (used, out) = r
            .feed(b"-MOVED 3999 127.0.0.1:6381\r\n", &mut sink)
            .unwrap();
        assert_eq!(used, 28);
        assert_eq!(
            out,
            Some(ArrayOutcome::Error(b"MOVED 3999 127.0.0.1:6381".to_vec()))
        );

        let (used, out) = r.feed(b"*1\r\n$6\r\nab", &mut sink).unwrap();
        assert_eq!((used, out), (10, None));
        assert_eq!(r.payload_remaining(), 4);
        let w = r.direct_window().unwrap();
        assert_eq!(w.len(), 4);
        w.copy_from_slice(b"cdef");
        r.advance_direct(4);
        let (used, out) = r.feed(b"\r\n", &mut sink).unwrap();
        assert_eq!((used, out), (2, Some(ArrayOutcome::Done(1))));
        assert_eq!(sink.items, vec![Some(b"abcdef".to_vec())]);
    }
}
