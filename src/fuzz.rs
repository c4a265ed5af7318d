//! Fuzz entry points (feature `fuzzing`): the RESP decoders and the metadata decoder,
//! run the way the engine runs them, with their invariants checked. Each function
//! panics on a violated invariant, which is what a fuzzer reports; none may panic for
//! any other reason, whatever the input.
//!
//! Driven by the `slotline-fuzz` workspace member; not part of the public API.

use crate::layout::RemoteMetadata;
use crate::resp::{
    parse_value, write_array_header, write_bulk, ArrayOutcome, ArrayReader, BulkSink, Dest,
    ReplyLimits, ReplyReader, Value, MAX_DEPTH,
};

/// Largest bulk the MGET sink allocates for; longer ones are discarded, as the engine
/// does beyond `max_value_size`. Keeps a hostile length header from allocating
/// 512 MiB per input.
const SINK_ALLOC_LIMIT: usize = 1 << 16;
/// Inputs up to this length are also fed split at every byte position.
const ALL_SPLITS_MAX: usize = 96;

/// The complete-frame parser used for control-plane replies: no panic; a frame it
/// accepts re-encodes to bytes that parse to the same value; every proper prefix of a
/// frame asks for more bytes rather than failing (the engine re-parses as bytes
/// arrive, so a prefix error would kill a healthy connection).
pub fn resp(data: &[u8]) {
    let parsed = parse_value(data);
    reply_reader(data, parsed.as_ref().ok().and_then(|p| p.as_ref()));
    let Ok(Some((value, used))) = parsed else {
        return;
    };
    assert!(
        used > 0 && used <= data.len(),
        "consumed {used} of {}",
        data.len()
    );
    let frame = &data[..used];
    let mut again = Vec::new();
    encode(&value, &mut again);
    match parse_value(&again) {
        Ok(Some((v2, n2))) => {
            assert_eq!(v2, value, "decode(encode(x)) != x");
            assert_eq!(n2, again.len(), "re-encoded frame not consumed whole");
        }
        other => panic!("re-encoded frame does not parse: {other:?}"),
    }
    assert_eq!(
        parse_value(frame).ok().flatten(),
        Some((value, used)),
        "the frame alone parses differently"
    );
    let step = (used / 64).max(1);
    for cut in (0..used).step_by(step) {
        match parse_value(&frame[..cut]) {
            Ok(None) => {}
            other => panic!("prefix of {cut} bytes of a {used}-byte frame gave {other:?}"),
        }
    }
}

/// The engine's bounded, resumable reader of control-plane replies: no panic on any
/// input, and whatever [`parse_value`] accepts it reads the same (the same value, the
/// same bytes consumed), fed whole or split in two anywhere, unless the value is over
/// its memory limit.
fn reply_reader(data: &[u8], want: Option<&(Value, usize)>) {
    let lim = ReplyLimits {
        max_bytes: 1 << 20,
        max_depth: MAX_DEPTH,
        what: "fuzz",
    };
    let cuts: Vec<usize> = if data.len() <= ALL_SPLITS_MAX {
        (0..=data.len()).collect()
    } else {
        vec![0, 1, data.len() / 3, data.len() / 2, data.len()]
    };
    for cut in cuts {
        let mut r = ReplyReader::new();
        let got = match r.feed(&data[..cut], lim) {
            Ok((used, Some(v))) => Ok(Some((v, used))),
            Ok((used, None)) => {
                assert!(used <= cut, "consumed {used} of {cut}");
                // The engine keeps what was not consumed and appends the next receive.
                let mut pending = data[used..cut].to_vec();
                pending.extend_from_slice(&data[cut..]);
                r.feed(&pending, lim)
                    .map(|(u2, v)| v.map(|v| (v, used + u2)))
            }
            Err(e) => Err(e),
        };
        match (want, got) {
            (None, _) => {}
            (Some(w), Ok(Some(g))) => assert_eq!(&g, w, "reply reader differs (cut {cut})"),
            (Some(_), Err(e)) if e.0.contains("larger than its limit") => {}
            (Some(w), other) => {
                panic!("parse_value read {w:?}, the reply reader (cut {cut}) {other:?}")
            }
        }
    }
}

/// The resumable MGET reader, fed as a connection feeds it: unconsumed bytes stay in a
/// receive buffer that new bytes are appended to, and long payloads are read straight
/// into the reader's direct window. The whole input, every split point (short inputs),
/// byte-at-a-time and a few irregular chunkings must all deliver the same elements and
/// end the same way; a complete first reply must agree with [`parse_value`].
pub fn mget(data: &[u8]) {
    let whole = run_reader(data, &[data.len()], false);
    if data.len() <= ALL_SPLITS_MAX {
        for cut in 1..data.len() {
            let split = run_reader(data, &[cut, data.len() - cut], false);
            assert_eq!(split, whole, "split at {cut} differs from the whole");
        }
    }
    let ones = vec![1; data.len()];
    assert_eq!(
        run_reader(data, &ones, false),
        whole,
        "byte-at-a-time differs"
    );
    for seed in 1..4u64 {
        let chunks = chunking(data.len(), seed);
        assert_eq!(
            run_reader(data, &chunks, false),
            whole,
            "chunks {chunks:?} differ"
        );
        assert_eq!(
            run_reader(data, &chunks, true),
            whole,
            "direct-window reads with chunks {chunks:?} differ"
        );
    }
    // Against the complete-frame parser: an array of bulks / nils it accepts, encoded
    // canonically (it does not tell `$-1` from `*-1`, which the reader rightly rejects
    // inside an MGET reply), is delivered element for element by the reader.
    if let Ok(Some((Value::Array(items), _))) = parse_value(data) {
        let expected: Option<Vec<Event>> = items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Bulk(b) if b.len() <= SINK_ALLOC_LIMIT => Some(Event::Bulk(i, b.clone())),
                Value::Bulk(b) => Some(Event::Skipped(i, b.len())),
                Value::Nil => Some(Event::Nil(i)),
                _ => None,
            })
            .collect();
        if let Some(expected) = expected {
            let mut canonical = Vec::new();
            encode(&Value::Array(items.clone()), &mut canonical);
            let got = run_reader(&canonical, &[canonical.len()], false);
            assert_eq!(got.events, expected, "reader and parse_value disagree");
            assert_eq!(got.ends, vec![End::Done(items.len())]);
        }
    }
}

/// The metadata decoder: no panic; what it accepts re-encodes to the same bytes, has a
/// non-negative payload length and renders.
pub fn metadata(data: &[u8]) {
    let Ok(m) = RemoteMetadata::decode(data) else {
        return;
    };
    assert_eq!(m.encode(), data, "encode(decode(x)) != x");
    assert_eq!(m.encoded_len(), data.len());
    assert!(!m.groups.is_empty());
    assert_eq!(m.payload_len() as i64, i64::from(m.length));
    let _ = m.to_string();
}

/// The canonical encoding of a parsed reply.
fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Simple(s) | Value::Error(s) => {
            out.push(if matches!(v, Value::Simple(_)) {
                b'+'
            } else {
                b'-'
            });
            out.extend_from_slice(s);
            out.extend_from_slice(b"\r\n");
        }
        Value::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        Value::Bulk(b) => write_bulk(out, b),
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Array(items) => {
            write_array_header(out, items.len());
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// What the sink saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Bulk(usize, Vec<u8>),
    Skipped(usize, usize),
    Nil(usize),
}

/// How a reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Done(usize),
    Error(Vec<u8>),
    Nil,
    Proto(String),
}

/// Everything a run delivered. (Bytes consumed are not compared: on a bad stream the
/// whole input fails in one call while a split one consumed its first pieces.)
#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<Event>,
    ends: Vec<End>,
}

#[derive(Default)]
struct Sink {
    events: Vec<Event>,
    /// Next element index expected (reset per reply).
    next: usize,
}

impl BulkSink for Sink {
    fn begin(&mut self, index: usize, len: usize) -> Dest {
        assert_eq!(index, self.next, "element begun out of order");
        if len <= SINK_ALLOC_LIMIT {
            Dest::alloc(len)
        } else {
            Dest::discard(len)
        }
    }
    fn finish(&mut self, index: usize, dest: Dest) {
        assert_eq!(index, self.next, "element finished out of order");
        self.next += 1;
        self.events.push(if dest.keep {
            assert_eq!(dest.buf.len(), dest.len);
            Event::Bulk(index, dest.buf.into_vec())
        } else {
            Event::Skipped(index, dest.len)
        });
    }
    fn nil(&mut self, index: usize) {
        assert_eq!(index, self.next, "nil out of order");
        self.next += 1;
        self.events.push(Event::Nil(index));
    }
}

/// Feeds `data` in chunks of the given sizes through a receive buffer, optionally
/// reading payload bytes straight into the direct window (as the shard does for long
/// payloads), until the input is used up or the stream is declared bad.
fn run_reader(data: &[u8], chunks: &[usize], direct: bool) -> Run {
    let mut reader = ArrayReader::new();
    let mut sink = Sink::default();
    let mut ends = Vec::new();
    let mut unread: Vec<u8> = Vec::new();
    let mut at = 0;
    'input: for &size in chunks {
        let mut chunk = &data[at..(at + size).min(data.len())];
        at += chunk.len();
        if direct && unread.is_empty() {
            let remaining = reader.payload_remaining();
            if let Some(w) = reader.direct_window() {
                assert_eq!(w.len(), remaining, "direct window and payload disagree");
                let n = w.len().min(chunk.len());
                w[..n].copy_from_slice(&chunk[..n]);
                reader.advance_direct(n);
                chunk = &chunk[n..];
            }
        }
        unread.extend_from_slice(chunk);
        loop {
            match reader.feed(&unread, &mut sink) {
                Err(e) => {
                    ends.push(End::Proto(e.0));
                    break 'input;
                }
                Ok((used, outcome)) => {
                    assert!(used <= unread.len(), "consumed past the buffer");
                    unread.drain(..used);
                    match outcome {
                        None => break,
                        Some(o) => {
                            sink.next = 0;
                            ends.push(match o {
                                ArrayOutcome::Done(n) => End::Done(n),
                                ArrayOutcome::Error(e) => End::Error(e),
                                ArrayOutcome::Nil => End::Nil,
                            });
                        }
                    }
                }
            }
        }
    }
    Run {
        events: sink.events,
        ends,
    }
}

/// Irregular chunk sizes covering `len` bytes, from a tiny deterministic generator.
fn chunking(len: usize, seed: u64) -> Vec<usize> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = ((x % 17) as usize + 1).min(left);
        out.push(n);
        left -= n;
    }
    out
}
