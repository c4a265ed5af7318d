//! A resumable, bounded reader for control-plane replies (handshake, SET / MSET /
//! EXISTS / DEL, `Engine::command`, CLUSTER SHARDS / SLOTS).
//!
//! [`parse_value`](super::parse_value) needs the whole reply in one buffer and starts
//! over on every receive: a hostile server could make the receive buffer grow to any
//! size and the parse quadratic. This reader keeps its place across receives (open
//! arrays on a stack, the bulk string in progress), consumes every byte it is given,
//! and charges each reply for the memory it would take before allocating it, so an
//! over-limit reply fails at the header that would exceed the limit.

use std::mem::size_of;

use super::{
    find_line, parse_int, parse_len, perr, ProtoError, Value, MAX_ARRAY_LEN, MAX_BULK_LEN,
};

/// Caps for one reply, chosen by what the reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Most bytes the parsed value may take in memory (payload bytes plus one
    /// `Value` per element).
    pub max_bytes: usize,
    /// Most arrays open at once.
    pub max_depth: usize,
    /// What the reply answers, for the error message ("SET", "command", ...).
    pub what: &'static str,
}

/// An array whose elements are still arriving.
#[derive(Debug)]
struct Open {
    items: Vec<Value>,
    left: usize,
}

/// A bulk string whose bytes are still arriving; `data.len()` bytes are in.
#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    len: usize,
}

/// Reads one reply at a time from any split of the stream.
#[derive(Debug, Default)]
pub struct ReplyReader {
    stack: Vec<Open>,
    bulk: Option<Partial>,
    /// Bytes charged to the reply in progress.
    used: usize,
}

impl ReplyReader {
    /// A reader between replies.
    pub fn new() -> ReplyReader {
        ReplyReader::default()
    }

    /// `true` between replies.
    pub fn is_idle(&self) -> bool {
        self.stack.is_empty() && self.bulk.is_none() && self.used == 0
    }

    fn charge(&mut self, n: usize, lim: &ReplyLimits) -> Result<(), ProtoError> {
        self.used = self.used.saturating_add(n);
        if self.used > lim.max_bytes {
            return Err(perr(format!(
                "{} reply larger than its limit of {} bytes",
                lim.what, lim.max_bytes
            )));
        }
        Ok(())
    }

    /// The common case, kept short: a whole status, error or integer line (the reply
    /// to a SET, an EXISTS, a handshake step). `None` for anything else, left to the
    /// general path.
    #[inline]
    fn simple(buf: &[u8], lim: &ReplyLimits) -> Result<Option<(usize, Option<Value>)>, ProtoError> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        if !matches!(kind, b'+' | b'-' | b':') {
            return Ok(None);
        }
        let Some(end) = find_line(buf, 1)? else {
            return Ok(None);
        };
        let line = &buf[1..end];
        if size_of::<Value>() + line.len() > lim.max_bytes {
            return Ok(None);
        }
        let v = match kind {
            b'+' => Value::Simple(line.to_vec()),
            b'-' => Value::Error(line.to_vec()),
            _ => Value::Int(parse_int(line)?),
        };
        Ok(Some((end + 2, Some(v))))
    }

    /// Consumes what it can of `buf` (all of it, unless a reply completes first).
    /// Returns the bytes consumed and, when a reply is complete, the reply; the reader
    /// is then ready for the next one. After an error the reader must be reset.
    pub fn feed(
        &mut self,
        buf: &[u8],
        lim: ReplyLimits,
    ) -> Result<(usize, Option<Value>), ProtoError> {
        if self.is_idle() {
            if let Some(done) = Self::simple(buf, &lim)? {
                return Ok(done);
            }
        }
        let mut pos = 0;
        if self.is_idle() && !buf.is_empty() {
            // The top-level value itself; elements are charged by their array.
            self.charge(size_of::<Value>(), &lim)?;
        }
        loop {
            let value = if let Some(b) = self.bulk.as_mut() {
                let take = (b.len - b.data.len()).min(buf.len() - pos);
                b.data.extend_from_slice(&buf[pos..pos + take]);
                pos += take;
                if b.data.len() < b.len || buf.len() - pos < 2 {
                    return Ok((pos, None));
                }
                if &buf[pos..pos + 2] != b"\r\n" {
                    return Err(perr("bulk string not terminated by CRLF"));
                }
                pos += 2;
                match self.bulk.take() {
                    Some(b) => Value::Bulk(b.data),
                    None => return Err(perr("reply reader lost its bulk string")),
                }
            } else {
                if pos >= buf.len() {
                    return Ok((pos, None));
                }
                let Some(end) = find_line(buf, pos + 1)? else {
                    return Ok((pos, None));
                };
                let kind = buf[pos];
                let line = &buf[pos + 1..end];
                pos = end + 2;
                match kind {
                    b'+' => {
                        self.charge(line.len(), &lim)?;
                        Value::Simple(line.to_vec())
                    }
                    b'-' => {
                        self.charge(line.len(), &lim)?;
                        Value::Error(line.to_vec())
                    }
                    b':' => Value::Int(parse_int(line)?),
                    b'$' => match parse_len(line, MAX_BULK_LEN, "bulk")? {
                        None => Value::Nil,
                        Some(len) => {
                            // Charged before anything is allocated for it.
                            self.charge(len, &lim)?;
                            self.bulk = Some(Partial {
                                data: Vec::with_capacity(len),
                                len,
                            });
                            continue;
                        }
                    },
                    b'*' => match parse_len(line, MAX_ARRAY_LEN, "array")? {
                        None => Value::Nil,
                        Some(0) => Value::Array(Vec::new()),
                        Some(n) => {
                            if self.stack.len() >= lim.max_depth {
                                return Err(perr(format!(
                                    "{} reply nested deeper than {} arrays",
                                    lim.what, lim.max_depth
                                )));
                            }
                            // The elements' slots, charged up front: the vector is
                            // then allocated once, at its final size.
                            self.charge(n.saturating_mul(size_of::<Value>()), &lim)?;
                            self.stack.push(Open {
                                items: Vec::with_capacity(n),
                                left: n,
                            });
                            continue;
                        }
                    },
                    b => return Err(perr(format!("unexpected reply type byte 0x{b:02x}"))),
                }
            };
            // Place the finished value; closing arrays as they fill.
            let mut value = value;
            loop {
                let Some(top) = self.stack.last_mut() else {
                    self.used = 0;
                    return Ok((pos, Some(value)));
                };
                top.items.push(value);
                top.left -= 1;
                if top.left > 0 {
                    break;
                }
                match self.stack.pop() {
                    Some(done) => value = Value::Array(done.items),
                    None => return Err(perr("reply reader lost its array")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_value, write_bulk};
    use super::*;

    const ROOMY: ReplyLimits = ReplyLimits {
        max_bytes: 1 << 20,
        max_depth: 16,
        what: "test",
    };

    /// Feeds `stream` in two pieces cut at `cut`, the way receives split it: the
    /// caller keeps the unconsumed bytes and appends the next receive.
    fn feed_split(stream: &[u8], cut: usize, lim: ReplyLimits) -> Result<Vec<Value>, ProtoError> {
        let mut r = ReplyReader::new();
        let mut out = Vec::new();
        let mut pending = stream[..cut].to_vec();
        let mut rest = &stream[cut..];
        loop {
            let (used, v) = r.feed(&pending, lim)?;
            pending.drain(..used);
            match v {
                Some(v) => out.push(v),
                None if rest.is_empty() => break,
                None => {
                    pending.extend_from_slice(rest);
                    rest = &[];
                }
            }
            if pending.is_empty() && rest.is_empty() {
                break;
            }
        }
        assert!(r.is_idle(), "reader idle after whole replies");
        Ok(out)
    }

    fn sample_stream() -> (Vec<u8>, Vec<Value>) {
        let mut s = Vec::new();
        let mut want = Vec::new();
        for frame in [
            &b"+OK\r\n"[..],
            b":-42\r\n",
            b"-MOVED 3999 :6381\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"$0\r\n\r\n",
            b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n*1\r\n$2\r\n\r\n\r\n+x\r\n",
        ] {
            want.push(parse_value(frame).unwrap().unwrap().0);
            s.extend_from_slice(frame);
        }
        let mut big = Vec::new();
        write_bulk(&mut big, &[7u8; 300]);
        want.push(parse_value(&big).unwrap().unwrap().0);
        s.extend_from_slice(&big);
        (s, want)
    }

    #[test]
    fn every_split_gives_the_same_replies_as_parse_value() {
        let (stream, want) = sample_stream();
        for cut in 0..=stream.len() {
            assert_eq!(feed_split(&stream, cut, ROOMY).unwrap(), want, "cut {cut}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let (stream, want) = sample_stream();
        let mut r = ReplyReader::new();
        let mut got = Vec::new();
        let mut pending = Vec::new();
        for &b in &stream {
            pending.push(b);
            let (used, v) = r.feed(&pending, ROOMY).unwrap();
            pending.drain(..used);
            got.extend(v);
        }
        assert_eq!(got, want);
        assert!(pending.is_empty());
    }

    #[test]
    fn consumes_partial_bulks_instead_of_buffering_them() {
        let mut r = ReplyReader::new();
        let (used, v) = r.feed(b"$10\r\nabc", ROOMY).unwrap();
        assert_eq!((used, v), (8, None));
        let (used, v) = r.feed(b"defghij\r", ROOMY).unwrap();
        assert_eq!((used, v), (7, None), "the CRLF is taken whole");
        let (used, v) = r.feed(b"\r\n", ROOMY).unwrap();
        assert_eq!((used, v), (2, Some(Value::Bulk(b"abcdefghij".to_vec()))));
    }

    #[test]
    fn bulk_over_the_limit_fails_at_its_header() {
        let lim = ReplyLimits {
            max_bytes: 4096,
            max_depth: 16,
            what: "SET",
        };
        let e = ReplyReader::new().feed(b"$67108864\r\n", lim).unwrap_err();
        assert!(
            e.0.contains("SET reply larger than its limit of 4096 bytes"),
            "{e}"
        );
        // Just under the limit passes (the value slot itself is charged too).
        let n = 4096 - size_of::<Value>();
        let mut frame = Vec::new();
        write_bulk(&mut frame, &vec![1u8; n]);
        assert!(ReplyReader::new().feed(&frame, lim).unwrap().1.is_some());
        frame.clear();
        write_bulk(&mut frame, &vec![1u8; n + 1]);
        assert!(ReplyReader::new().feed(&frame, lim).is_err());
    }

    #[test]
    fn wide_arrays_are_charged_per_element() {
        let lim = ReplyLimits {
            max_bytes: 64 * 1024,
            max_depth: 16,
            what: "command",
        };
        // 16M elements declared: rejected before any element arrives or is allocated.
        assert!(ReplyReader::new().feed(b"*16777216\r\n", lim).is_err());
        // Many small nested arrays: each adds its slots until the limit trips, long
        // before the stream ends.
        let mut stream = b"*100000\r\n".to_vec();
        let lim2 = ReplyLimits {
            max_bytes: 100_000 * size_of::<Value>() + 4096,
            ..lim
        };
        for _ in 0..100_000 {
            stream.extend_from_slice(b"*2\r\n:1\r\n:2\r\n");
        }
        let e = ReplyReader::new().feed(&stream, lim2).unwrap_err();
        assert!(e.0.contains("command reply larger"), "{e}");
    }

    #[test]
    fn depth_is_capped() {
        let lim = ReplyLimits {
            max_bytes: 1 << 20,
            max_depth: 4,
            what: "CLUSTER SHARDS",
        };
        let ok = b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n";
        assert!(ReplyReader::new().feed(ok, lim).unwrap().1.is_some());
        let deep = b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n";
        let e = ReplyReader::new().feed(deep, lim).unwrap_err();
        assert!(e.0.contains("nested deeper than 4"), "{e}");
        // A million levels fail after five headers, without using the stack.
        let mut stream = Vec::new();
        for _ in 0..1_000_000 {
            stream.extend_from_slice(b"*1\r\n");
        }
        assert!(ReplyReader::new().feed(&stream, lim).is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        for &bad in crate::resp::tests::GARBAGE {
            assert!(
                ReplyReader::new().feed(bad, ROOMY).is_err(),
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn long_status_and_error_lines_count_too() {
        let lim = ReplyLimits {
            max_bytes: 64,
            max_depth: 16,
            what: "EXISTS",
        };
        let mut line = b"-ERR ".to_vec();
        line.extend_from_slice(&[b'x'; 100]);
        line.extend_from_slice(b"\r\n");
        let e = ReplyReader::new().feed(&line, lim).unwrap_err();
        assert!(e.0.contains("EXISTS reply larger"), "{e}");
        line[0] = b'+';
        assert!(ReplyReader::new().feed(&line, lim).is_err());
        // Short ones pass, whole or split.
        assert_eq!(
            feed_split(b"-ERR x\r\n", 3, lim).unwrap(),
            vec![Value::Error(b"ERR x".to_vec())]
        );
    }

    #[test]
    fn limit_applies_per_reply() {
        let lim = ReplyLimits {
            max_bytes: 64,
            max_depth: 16,
            what: "DEL",
        };
        let mut r = ReplyReader::new();
        let mut stream = Vec::new();
        for _ in 0..100 {
            stream.extend_from_slice(b":1\r\n");
        }
        let mut at = 0;
        for _ in 0..100 {
            let (used, v) = r.feed(&stream[at..], lim).unwrap();
            assert_eq!(v, Some(Value::Int(1)));
            at += used;
        }
        assert_eq!(at, stream.len());
    }
}
