//! Property tests of `resp`: the encoder, the complete-frame parser and the resumable
//! array reader, with redis-protocol as an independent oracle.
//!
//! They live in the library's unit-test binary because `resp` is internal; the tracking
//! allocator below is therefore the allocator of every unit test (it only counts).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crate::resp::{
    parse_value, write_bulk, write_command, write_set, write_set_prefix, write_set_suffix,
    ArrayOutcome, ArrayReader, BulkSink, Dest, Value, MAX_ARRAY_LEN, MAX_BULK_LEN,
};
use proptest::prelude::*;
use redis_protocol::resp2::decode::decode as oracle_decode;
use redis_protocol::resp2::encode::encode as oracle_encode;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};

// ---------------------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made by the current thread while
// tracking is on. Used to show hostile length headers never reserve absurd memory.
// ---------------------------------------------------------------------------------------

struct Tracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let on = TRACKING.try_with(|t| t.get()).unwrap_or(false);
    if on {
        let _ = LARGEST.try_with(|l| {
            if size > l.get() {
                l.set(size)
            }
        });
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; `note` only reads and writes thread-locals (with `try_with`,
// so it cannot allocate or panic during thread teardown).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f` and returns its result with the largest allocation it made (this thread).
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, LARGEST.with(|l| l.get()))
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Bytes with a bias towards RESP's own delimiters.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            1 => Just(b'\r'),
            1 => Just(b'\n'),
            1 => Just(b'$'),
            1 => Just(b'*'),
            1 => Just(b'-'),
            1 => Just(0u8),
        ],
        0..max,
    )
}

/// Large byte strings without a value tree per byte (that is slow in debug builds):
/// a length and a seed, expanded with xorshift, with CR/LF sprinkled in.
fn big_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..max, any::<u64>()).prop_map(|(len, seed)| {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 16 {
                    0 => b'\r',
                    1 => b'\n',
                    _ => (x >> 8) as u8,
                }
            })
            .collect()
    })
}

fn bulk_array(args: &[Vec<u8>]) -> Value {
    Value::Array(args.iter().map(|a| Value::Bulk(a.clone())).collect())
}

/// The frame parses whole with its exact length, and every strict prefix is "need more".
fn check_every_split(frame: &[u8], want: &Value) -> Result<(), TestCaseError> {
    let got = parse_value(frame).map_err(|e| TestCaseError::fail(format!("whole frame: {e}")))?;
    prop_assert_eq!(got, Some((want.clone(), frame.len())));
    for cut in 0..frame.len() {
        let r = parse_value(&frame[..cut]);
        prop_assert_eq!(r, Ok(None), "prefix of {} of {} bytes", cut, frame.len());
    }
    // Followed by more bytes (the next reply), it still takes exactly its own length.
    let mut more = frame.to_vec();
    more.extend_from_slice(b"+NEXT\r\n:1\r\n");
    prop_assert_eq!(parse_value(&more), Ok(Some((want.clone(), frame.len()))));
    Ok(())
}

fn to_value(f: &OwnedFrame) -> Value {
    match f {
        OwnedFrame::SimpleString(s) => Value::Simple(s.clone()),
        OwnedFrame::Error(e) => Value::Error(e.as_bytes().to_vec()),
        OwnedFrame::Integer(i) => Value::Int(*i),
        OwnedFrame::BulkString(b) => Value::Bulk(b.clone()),
        OwnedFrame::Null => Value::Nil,
        OwnedFrame::Array(items) => Value::Array(items.iter().map(to_value).collect()),
    }
}

fn oracle_bytes(f: &OwnedFrame) -> Vec<u8> {
    let mut buf = vec![0u8; f.encode_len(false)];
    let n = oracle_encode(&mut buf, f, false).expect("redis-protocol encodes its own frame");
    buf.truncate(n);
    buf
}

/// Text allowed in simple strings and errors: no CR, no LF.
fn line_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            (0x20u8..0x7f).prop_map(char::from),
            Just('\t'),
            Just('é'),
            Just('$'),
            Just('*'),
        ],
        0..max,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn frame_strategy() -> impl Strategy<Value = OwnedFrame> {
    let leaf = prop_oneof![
        line_text(40).prop_map(|s| OwnedFrame::SimpleString(s.into_bytes())),
        line_text(40).prop_map(OwnedFrame::Error),
        any::<i64>().prop_map(OwnedFrame::Integer),
        (-1000i64..1000).prop_map(OwnedFrame::Integer),
        bytes(300).prop_map(OwnedFrame::BulkString),
        Just(OwnedFrame::Null),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop::collection::vec(inner, 0..8).prop_map(OwnedFrame::Array)
    })
}

// ----- array reader driver -----

#[derive(Debug, Clone, Copy)]
enum SinkMode {
    /// `Dest::alloc(len)`
    Exact,
    /// A caller buffer larger than the value; bytes past `len` must stay untouched.
    Larger(usize),
    /// `Dest::discard(len)`
    Discard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Bulk(Vec<u8>),
    Nil,
    Discarded(usize),
}

struct Collect {
    modes: Vec<SinkMode>,
    items: Vec<Item>,
    /// Largest `len` for which a real buffer is handed out; bigger values are discarded.
    cap: usize,
    open: Option<usize>,
}

impl Collect {
    fn new(modes: Vec<SinkMode>) -> Collect {
        Collect {
            modes: if modes.is_empty() {
                vec![SinkMode::Exact]
            } else {
                modes
            },
            items: Vec::new(),
            cap: 1 << 20,
            open: None,
        }
    }
    fn mode(&self, i: usize) -> SinkMode {
        self.modes[i % self.modes.len()]
    }
}

const FILL: u8 = 0xA5;

impl BulkSink for Collect {
    fn begin(&mut self, index: usize, len: usize) -> Dest {
        assert_eq!(index, self.items.len(), "elements arrive in order");
        assert!(
            self.open.is_none(),
            "begin while element {:?} is still open",
            self.open
        );
        assert!(len <= MAX_BULK_LEN);
        self.open = Some(index);
        if len > self.cap {
            return Dest::discard(len);
        }
        match self.mode(index) {
            SinkMode::Exact => Dest::alloc(len),
            SinkMode::Larger(extra) => Dest {
                buf: crate::mem::Mem::Own(vec![FILL; len + extra]),
                len,
                keep: true,
            },
            SinkMode::Discard => Dest::discard(len),
        }
    }
    fn finish(&mut self, index: usize, dest: Dest) {
        assert_eq!(index, self.items.len());
        assert_eq!(self.open.take(), Some(index), "finish without begin");
        if dest.keep {
            assert!(dest.buf.len() >= dest.len);
            assert!(
                dest.buf[dest.len..].iter().all(|&b| b == FILL),
                "bytes past the value's length were written"
            );
            self.items.push(Item::Bulk(dest.buf[..dest.len].to_vec()));
        } else {
            self.items.push(Item::Discarded(dest.len));
        }
    }
    fn nil(&mut self, index: usize) {
        assert_eq!(index, self.items.len());
        assert!(self.open.is_none());
        self.items.push(Item::Nil);
    }
}

#[derive(Debug)]
struct Driven {
    outcome: Option<ArrayOutcome>,
    /// Bytes of the stream the reader consumed (fed and used, or read directly).
    consumed: usize,
}

/// Feeds `stream` to a reader in pieces of the given sizes, reading part of the payload
/// straight into `direct_window` when `direct` says so, like the engine's socket code.
/// Returns the outcome (None if the stream ended first) or the protocol error.
fn drive(
    stream: &[u8],
    chunks: &[usize],
    direct: &[bool],
    sink: &mut Collect,
) -> Result<Driven, crate::resp::ProtoError> {
    let mut r = ArrayReader::new();
    assert!(r.is_idle());
    let mut pending: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut consumed = 0;
    let mut step = 0;
    loop {
        let k = chunks
            .get(step % chunks.len().max(1))
            .copied()
            .unwrap_or(7)
            .max(1);
        let use_direct = direct
            .get(step % direct.len().max(1))
            .copied()
            .unwrap_or(false);
        step += 1;
        let remaining = r.payload_remaining();
        if remaining > 0 {
            assert!(
                pending.is_empty(),
                "a payload is in progress but fed bytes were left unconsumed"
            );
        }
        // (A window that is complete but not yet followed by its CRLF is empty: the
        // socket code only reads directly while payload bytes remain.)
        if use_direct && pos < stream.len() && remaining > 0 {
            if let Some(w) = r.direct_window() {
                assert_eq!(w.len(), remaining, "direct window = payload still expected");
                assert!(!w.is_empty());
                let n = w.len().min(k).min(stream.len() - pos);
                w[..n].copy_from_slice(&stream[pos..pos + n]);
                r.advance_direct(n);
                pos += n;
                consumed += n;
                assert_eq!(r.payload_remaining(), remaining - n);
                continue;
            }
        }
        let n = k.min(stream.len() - pos);
        pending.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        let (used, out) = r.feed(&pending, sink)?;
        assert!(
            used <= pending.len(),
            "used {used} of {} bytes",
            pending.len()
        );
        pending.drain(..used);
        consumed += used;
        if let Some(o) = out {
            assert!(r.is_idle(), "reader idle after a complete reply");
            return Ok(Driven {
                outcome: Some(o),
                consumed,
            });
        }
        if n == 0 && used == 0 {
            return Ok(Driven {
                outcome: None,
                consumed,
            });
        }
    }
}

fn encode_array(items: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut s = format!("*{}\r\n", items.len()).into_bytes();
    for it in items {
        match it {
            Some(b) => write_bulk(&mut s, b),
            None => s.extend_from_slice(b"$-1\r\n"),
        }
    }
    s
}

fn expected_items(items: &[Option<Vec<u8>>], sink: &Collect) -> Vec<Item> {
    items
        .iter()
        .enumerate()
        .map(|(i, it)| match (it, sink.mode(i)) {
            (None, _) => Item::Nil,
            (Some(b), SinkMode::Discard) => Item::Discarded(b.len()),
            (Some(b), _) => Item::Bulk(b.clone()),
        })
        .collect()
}

fn sink_modes() -> impl Strategy<Value = Vec<SinkMode>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(SinkMode::Exact),
            1 => (1usize..64).prop_map(SinkMode::Larger),
            1 => Just(SinkMode::Discard),
        ],
        1..6,
    )
}

fn elements(max_items: usize, max_len: usize) -> impl Strategy<Value = Vec<Option<Vec<u8>>>> {
    prop::collection::vec(
        prop_oneof![
            1 => Just(None),
            2 => bytes(max_len.min(64)).prop_map(Some),
            2 => big_bytes(max_len).prop_map(Some),
        ],
        0..max_items,
    )
}

// ---------------------------------------------------------------------------------------
// Encoder -> parse_value
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn write_command_decodes_at_every_split(args in prop::collection::vec(bytes(80), 0..8)) {
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let mut frame = Vec::new();
        write_command(&mut frame, &refs);
        check_every_split(&frame, &bulk_array(&args))?;
        // and redis-protocol reads the same command
        let (f, used) = oracle_decode(&frame).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(f, OwnedFrame::Array(args.iter().cloned().map(OwnedFrame::BulkString).collect()));
    }

    #[test]
    fn write_set_decodes_at_every_split(key in bytes(100), value in bytes(400), ttl in prop::option::of(any::<u64>())) {
        let mut frame = Vec::new();
        write_set(&mut frame, &key, &value, ttl);
        let mut want = vec![b"SET".to_vec(), key.clone(), value.clone()];
        if let Some(t) = ttl {
            want.push(b"EX".to_vec());
            want.push(t.to_string().into_bytes());
        }
        check_every_split(&frame, &bulk_array(&want))?;
        // prefix + value + suffix is the same frame (the zero-copy path)
        let mut split = Vec::new();
        write_set_prefix(&mut split, &key, value.len(), ttl);
        split.extend_from_slice(&value);
        write_set_suffix(&mut split, ttl);
        prop_assert_eq!(&split, &frame);
        let (f, used) = oracle_decode(&frame).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(to_value(&f), bulk_array(&want));
    }

    #[test]
    fn write_bulk_decodes_at_every_split(data in bytes(600)) {
        let mut frame = Vec::new();
        write_bulk(&mut frame, &data);
        check_every_split(&frame, &Value::Bulk(data.clone()))?;
    }

    #[test]
    fn several_frames_back_to_back(argss in prop::collection::vec(prop::collection::vec(bytes(20), 0..4), 1..6)) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for args in &argss {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            write_command(&mut stream, &refs);
            ends.push(stream.len());
        }
        let mut at = 0;
        for (args, end) in argss.iter().zip(ends) {
            let (v, used) = parse_value(&stream[at..]).unwrap().unwrap();
            prop_assert_eq!(v, bulk_array(args));
            at += used;
            prop_assert_eq!(at, end);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Oracle: redis-protocol's encoder and decoder
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn parse_value_matches_redis_protocol(frame in frame_strategy()) {
        let bytes = oracle_bytes(&frame);
        let (oracle, oused) = oracle_decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(&oracle, &frame);
        prop_assert_eq!(oused, bytes.len());
        let want = to_value(&frame);
        check_every_split(&bytes, &want)?;
    }

    #[test]
    fn hand_built_frames_match_redis_protocol(
        items in prop::collection::vec(
            prop_oneof![
                bytes(50).prop_map(|b| { let mut s = Vec::new(); write_bulk(&mut s, &b); s }),
                Just(b"$-1\r\n".to_vec()),
                Just(b"*-1\r\n".to_vec()),
                Just(b"*0\r\n".to_vec()),
                Just(b"$0\r\n\r\n".to_vec()),
                any::<i64>().prop_map(|i| format!(":{i}\r\n").into_bytes()),
                line_text(20).prop_map(|s| format!("+{s}\r\n").into_bytes()),
                line_text(20).prop_map(|s| format!("-{s}\r\n").into_bytes()),
            ],
            0..10,
        )
    ) {
        let mut frame = format!("*{}\r\n", items.len()).into_bytes();
        for it in &items {
            frame.extend_from_slice(it);
        }
        let (oracle, oused) = oracle_decode(&frame).unwrap().unwrap();
        prop_assert_eq!(oused, frame.len());
        let got = parse_value(&frame);
        prop_assert_eq!(got, Ok(Some((to_value(&oracle), frame.len()))));
    }
}

#[test]
fn integer_extremes_match_redis_protocol() {
    for i in [
        0,
        1,
        -1,
        9,
        -9,
        10,
        i64::MAX,
        i64::MAX - 1,
        i64::MIN + 1,
        i64::MIN,
    ] {
        let bytes = format!(":{i}\r\n").into_bytes();
        let (oracle, _) = oracle_decode(&bytes).unwrap().unwrap();
        assert_eq!(oracle, OwnedFrame::Integer(i));
        assert_eq!(
            parse_value(&bytes),
            Ok(Some((Value::Int(i), bytes.len()))),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn fixed_vectors() {
    let cases: &[(&[u8], Value)] = &[
        (b"+\r\n", Value::Simple(vec![])),
        (b"-\r\n", Value::Error(vec![])),
        (b"+a\rb\r\n", Value::Simple(b"a\rb".to_vec())),
        (b"$2\r\n\r\n\r\n", Value::Bulk(b"\r\n".to_vec())),
        (b"*-1\r\n", Value::Nil),
        (b"*0\r\n", Value::Array(vec![])),
        (
            b"*3\r\n$-1\r\n*-1\r\n*1\r\n:-7\r\n",
            Value::Array(vec![
                Value::Nil,
                Value::Nil,
                Value::Array(vec![Value::Int(-7)]),
            ]),
        ),
    ];
    for (bytes, want) in cases {
        let (oracle, _) = oracle_decode(bytes).unwrap().unwrap();
        assert_eq!(
            &to_value(&oracle),
            want,
            "oracle on {}",
            bytes.escape_ascii()
        );
        check_every_split(bytes, want).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// ArrayReader
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Two feeds, split at every byte of the stream.
    #[test]
    fn array_reader_every_split(items in elements(8, 60), modes in sink_modes()) {
        let stream = encode_array(&items);
        for cut in 0..=stream.len() {
            let mut sink = Collect::new(modes.clone());
            let d = drive(&stream, &[cut.max(1), stream.len()], &[false], &mut sink).unwrap();
            prop_assert_eq!(d.outcome, Some(ArrayOutcome::Done(items.len())), "cut {}", cut);
            prop_assert_eq!(d.consumed, stream.len());
            prop_assert_eq!(&sink.items, &expected_items(&items, &sink), "cut {}", cut);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random chunkings, some payload bytes read straight into the direct window, caller
    /// buffers larger than the values, discarded values, and a following reply that must
    /// not be consumed.
    #[test]
    fn array_reader_random_chunks_and_direct_reads(
        items in elements(16, 3000),
        chunks in prop::collection::vec(1usize..700, 1..12),
        direct in prop::collection::vec(any::<bool>(), 1..8),
        modes in sink_modes(),
        trailing in prop_oneof![Just(Vec::new()), Just(b"*1\r\n$1\r\nx\r\n".to_vec()), Just(b"-ERR next\r\n".to_vec())],
    ) {
        let mut stream = encode_array(&items);
        let reply_len = stream.len();
        stream.extend_from_slice(&trailing);
        let mut sink = Collect::new(modes);
        let d = drive(&stream, &chunks, &direct, &mut sink).unwrap();
        prop_assert_eq!(d.outcome, Some(ArrayOutcome::Done(items.len())));
        prop_assert_eq!(d.consumed, reply_len, "the next reply's bytes are not consumed");
        let want = expected_items(&items, &sink);
        prop_assert_eq!(sink.items, want);
    }

    /// The reader's answer agrees with parse_value's on the same bytes.
    #[test]
    fn array_reader_agrees_with_parse_value(items in elements(10, 200), chunks in prop::collection::vec(1usize..50, 1..6)) {
        let stream = encode_array(&items);
        let mut sink = Collect::new(vec![SinkMode::Exact]);
        let d = drive(&stream, &chunks, &[true, false], &mut sink).unwrap();
        prop_assert_eq!(d.outcome, Some(ArrayOutcome::Done(items.len())));
        let (v, used) = parse_value(&stream).unwrap().unwrap();
        prop_assert_eq!(used, stream.len());
        let from_reader = Value::Array(sink.items.iter().map(|it| match it {
            Item::Bulk(b) => Value::Bulk(b.clone()),
            Item::Nil => Value::Nil,
            Item::Discarded(_) => unreachable!(),
        }).collect());
        prop_assert_eq!(v, from_reader);
    }

    /// Error replies and nil arrays come back as outcomes, at any split.
    #[test]
    fn array_reader_error_and_nil(msg in line_text(60), chunks in prop::collection::vec(1usize..10, 1..4)) {
        let stream = format!("-{msg}\r\n").into_bytes();
        let mut sink = Collect::new(vec![SinkMode::Exact]);
        let d = drive(&stream, &chunks, &[false], &mut sink).unwrap();
        prop_assert_eq!(d.outcome, Some(ArrayOutcome::Error(msg.into_bytes())));
        prop_assert_eq!(d.consumed, stream.len());
        let mut sink = Collect::new(vec![SinkMode::Exact]);
        let d = drive(b"*-1\r\n", &chunks, &[false], &mut sink).unwrap();
        prop_assert_eq!(d.outcome, Some(ArrayOutcome::Nil));
        prop_assert!(sink.items.is_empty());
    }
}

#[test]
fn array_reader_empty_and_reuse() {
    // One reader, several replies in a row, with reset() after a partial one.
    let mut r = ArrayReader::new();
    let mut sink = Collect::new(vec![SinkMode::Exact]);
    assert_eq!(
        r.feed(b"*0\r\n", &mut sink).unwrap(),
        (4, Some(ArrayOutcome::Done(0)))
    );
    let (used, out) = r.feed(b"*2\r\n$3\r\nab", &mut sink).unwrap();
    assert_eq!((used, out), (10, None));
    assert!(!r.is_idle());
    r.reset();
    assert!(r.is_idle());
    assert_eq!(r.direct_window().map(|w| w.len()), None);
    let mut sink = Collect::new(vec![SinkMode::Exact]);
    let s = encode_array(&[Some(b"xyz".to_vec()), None]);
    assert_eq!(
        r.feed(&s, &mut sink).unwrap(),
        (s.len(), Some(ArrayOutcome::Done(2)))
    );
    assert_eq!(sink.items, vec![Item::Bulk(b"xyz".to_vec()), Item::Nil]);
}

// ---------------------------------------------------------------------------------------
// Garbage and hostile input
// ---------------------------------------------------------------------------------------

/// Mutations of a valid stream: flip, insert or delete bytes.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        elements(6, 40),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..5),
    )
        .prop_map(|(items, muts)| {
            let mut s = encode_array(&items);
            for (idx, byte, kind) in muts {
                if s.is_empty() {
                    s.push(byte);
                    continue;
                }
                let i = idx.index(s.len());
                match kind {
                    0 => s[i] = byte,
                    1 => s.insert(i, byte),
                    _ => {
                        s.remove(i);
                    }
                }
            }
            s
        })
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(300),
        mutated(),
        // plausible headers with random numbers
        (
            prop_oneof![Just(b'*'), Just(b'$'), Just(b':'), Just(b'+'), Just(b'-')],
            any::<i64>(),
            bytes(40)
        )
            .prop_map(|(t, n, rest)| {
                let mut v = vec![t];
                v.extend_from_slice(n.to_string().as_bytes());
                v.extend_from_slice(b"\r\n");
                v.extend_from_slice(&rest);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn parse_value_never_panics_on_garbage(g in garbage()) {
        let (r, big) = largest_alloc(|| parse_value(&g));
        if let Ok(Some((_, used))) = r {
            prop_assert!(used <= g.len() && used > 0);
        }
        prop_assert!(big <= 64 * g.len().max(64), "allocated {} bytes for {} input bytes", big, g.len());
        // every prefix too
        for cut in 0..g.len() {
            let _ = parse_value(&g[..cut]);
        }
    }

    #[test]
    fn array_reader_never_panics_on_garbage(g in garbage(), chunks in prop::collection::vec(1usize..64, 1..5), direct in prop::collection::vec(any::<bool>(), 1..4)) {
        let mut sink = Collect::new(vec![SinkMode::Exact, SinkMode::Larger(3), SinkMode::Discard]);
        sink.cap = 4096;
        if let Ok(d) = drive(&g, &chunks, &direct, &mut sink) {
            prop_assert!(d.consumed <= g.len());
        }
    }
}

#[test]
fn hostile_lengths_do_not_allocate() {
    let need_more_or_err: &[&[u8]] = &[
        b"*2147483647\r\n",
        b"*16777216\r\n",
        b"*16777217\r\n",
        b"*99999999999999999999\r\n",
        b"*9223372036854775807\r\n",
        b"*-2\r\n",
        b"$536870913\r\n",
        b"$536870912\r\n",
        b"$2147483648\r\n",
        b"$9223372036854775807\r\n",
        b"$-2\r\n",
        b"*16777216\r\n$536870912\r\n",
        b"*3\r\n$536870912\r\nabc",
    ];
    for h in need_more_or_err {
        let (r, big) = largest_alloc(|| parse_value(h));
        assert!(
            matches!(r, Ok(None) | Err(_)),
            "{}: {r:?}",
            h.escape_ascii()
        );
        assert!(
            big < 1 << 16,
            "parse_value({}) allocated {big} bytes",
            h.escape_ascii()
        );

        let (r, big) = largest_alloc(|| {
            let mut reader = ArrayReader::new();
            let mut sink = Collect::new(vec![SinkMode::Discard]);
            reader
                .feed(h, &mut sink)
                .map(|(used, out)| (used, out, sink.items.len()))
        });
        assert!(
            matches!(r, Ok((_, None, _)) | Err(_)),
            "ArrayReader on {}: {r:?}",
            h.escape_ascii()
        );
        assert!(
            big < 1 << 16,
            "ArrayReader({}) allocated {big} bytes",
            h.escape_ascii()
        );
    }
    // Beyond the documented limits: errors, not "need more".
    for h in [
        format!("*{}\r\n", MAX_ARRAY_LEN + 1),
        format!("${}\r\n", MAX_BULK_LEN + 1),
        "*2147483647\r\n".to_string(),
        "$536870913\r\n".to_string(),
    ] {
        assert!(parse_value(h.as_bytes()).is_err(), "{h:?} must be rejected");
        let mut reader = ArrayReader::new();
        let mut sink = Collect::new(vec![SinkMode::Discard]);
        let framed = if h.starts_with('$') {
            format!("*1\r\n{h}")
        } else {
            h.clone()
        };
        assert!(
            reader.feed(framed.as_bytes(), &mut sink).is_err(),
            "ArrayReader: {framed:?} must be rejected"
        );
    }
    // An array announced huge but delivered short does not pre-reserve per element.
    let mut s = b"*16777216\r\n".to_vec();
    s.extend(std::iter::repeat_n(b":1\r\n".as_slice(), 1000).flatten());
    let (r, big) = largest_alloc(|| parse_value(&s));
    assert_eq!(r, Ok(None));
    assert!(
        big < 1 << 20,
        "allocated {big} bytes for a {}-byte input",
        s.len()
    );
}

#[test]
fn deep_nesting_is_rejected_not_a_stack_overflow() {
    let mut s = Vec::new();
    for _ in 0..100_000 {
        s.extend_from_slice(b"*1\r\n");
    }
    s.extend_from_slice(b":1\r\n");
    assert!(parse_value(&s).is_err());
    // a moderately nested reply (CLUSTER SHARDS-like depth) is fine
    let mut s = Vec::new();
    for _ in 0..4 {
        s.extend_from_slice(b"*1\r\n");
    }
    s.extend_from_slice(b":1\r\n");
    assert!(parse_value(&s).unwrap().is_some());
}

#[test]
fn long_header_lines_are_bounded() {
    // A header line that never ends must be rejected once past the line limit, not
    // buffered forever.
    let mut s = b"+".to_vec();
    s.extend(std::iter::repeat_n(b'a', 70 * 1024));
    assert!(parse_value(&s).is_err());
    let mut s = b"*1\r\n$".to_vec();
    s.extend(std::iter::repeat_n(b'1', 70 * 1024));
    let mut reader = ArrayReader::new();
    let mut sink = Collect::new(vec![SinkMode::Exact]);
    assert!(reader.feed(&s, &mut sink).is_err());
}
