//! How LMCache chunks are laid out in Redis: the key layouts and the `RemoteMetadata`
//! value that describes a payload.
//!
//! Everything here must stay byte-compatible with LMCache's own connectors (see
//! `lmcache-format.md`, sections 1 and 2): data written by slotline is read by LMCache
//! and the other way round.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};

const PAYLOAD_SUFFIX: &[u8] = b"kv_bytes";
const METADATA_SUFFIX: &[u8] = b"metadata";
const TAG_PAYLOAD_SUFFIX: &[u8] = b"}:kv_bytes";
const TAG_METADATA_SUFFIX: &[u8] = b"}:metadata";

/// How one LMCache chunk key `K` maps to Redis keys.
///
/// ```
/// use slotline::KeyLayout;
/// assert_eq!(KeyLayout::Lmcache.payload_key(b"k"), b"kkv_bytes");
/// assert_eq!(KeyLayout::Hashtag.metadata_key(b"k").unwrap(), b"{k}:metadata");
/// assert_eq!(KeyLayout::Raw.metadata_key(b"k"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyLayout {
    /// `K + "metadata"` and `K + "kv_bytes"`: LMCache's `redis://`, `rediss://`,
    /// `unix://`, `redis-cluster://` and `redis-sentinel://` connectors.
    #[default]
    Lmcache,
    /// `"{" + K + "}:metadata"` and `"{" + K + "}:kv_bytes"`: both keys share one
    /// cluster slot (the enhanced connector in cluster mode, LMCache's Valkey cluster
    /// connector).
    Hashtag,
    /// The payload alone under `K`, no metadata key: LMCache's `resp://`, `valkey://`
    /// and multiprocess-mode native connectors.
    Raw,
}

impl FromStr for KeyLayout {
    type Err = Error;

    /// Parses `lmcache`, `hashtag` or `raw`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("lmcache") {
            Ok(KeyLayout::Lmcache)
        } else if t.eq_ignore_ascii_case("hashtag") {
            Ok(KeyLayout::Hashtag)
        } else if t.eq_ignore_ascii_case("raw") {
            Ok(KeyLayout::Raw)
        } else {
            Err(Error::config(
                "key_layout",
                s,
                "expected lmcache, hashtag or raw",
            ))
        }
    }
}

impl fmt::Display for KeyLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyLayout::Lmcache => "lmcache",
            KeyLayout::Hashtag => "hashtag",
            KeyLayout::Raw => "raw",
        })
    }
}

impl KeyLayout {
    /// Number of Redis keys one chunk occupies (2 with a metadata key, 1 for `Raw`).
    pub fn keys_per_chunk(self) -> usize {
        match self {
            KeyLayout::Lmcache | KeyLayout::Hashtag => 2,
            KeyLayout::Raw => 1,
        }
    }

    /// The Redis key holding the payload of chunk `k`.
    pub fn payload_key(self, k: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload_key_len(k.len()));
        self.write_payload_key(k, &mut out);
        out
    }

    /// The Redis key holding the metadata of chunk `k`, or `None` for `Raw`.
    pub fn metadata_key(self, k: &[u8]) -> Option<Vec<u8>> {
        let len = self.metadata_key_len(k.len())?;
        let mut out = Vec::with_capacity(len);
        self.write_metadata_key(k, &mut out);
        Some(out)
    }

    /// Appends the payload key of chunk `k` to `out`.
    ///
    /// Lets the I/O path build keys straight into a reused frame buffer.
    pub fn write_payload_key(self, k: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.payload_key_len(k.len()));
        match self {
            KeyLayout::Lmcache => {
                out.extend_from_slice(k);
                out.extend_from_slice(PAYLOAD_SUFFIX);
            }
            KeyLayout::Hashtag => {
                out.push(b'{');
                out.extend_from_slice(k);
                out.extend_from_slice(TAG_PAYLOAD_SUFFIX);
            }
            KeyLayout::Raw => out.extend_from_slice(k),
        }
    }

    /// Appends the metadata key of chunk `k` to `out`; returns `false` (and appends
    /// nothing) for `Raw`, which has no metadata key.
    pub fn write_metadata_key(self, k: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            KeyLayout::Lmcache => {
                out.reserve(k.len() + METADATA_SUFFIX.len());
                out.extend_from_slice(k);
                out.extend_from_slice(METADATA_SUFFIX);
                true
            }
            KeyLayout::Hashtag => {
                out.reserve(1 + k.len() + TAG_METADATA_SUFFIX.len());
                out.push(b'{');
                out.extend_from_slice(k);
                out.extend_from_slice(TAG_METADATA_SUFFIX);
                true
            }
            KeyLayout::Raw => false,
        }
    }

    /// Length of the payload key for a chunk key of `k_len` bytes.
    pub fn payload_key_len(self, k_len: usize) -> usize {
        match self {
            KeyLayout::Lmcache => k_len + PAYLOAD_SUFFIX.len(),
            KeyLayout::Hashtag => 1 + k_len + TAG_PAYLOAD_SUFFIX.len(),
            KeyLayout::Raw => k_len,
        }
    }

    /// Length of the metadata key for a chunk key of `k_len` bytes (`None` for `Raw`).
    pub fn metadata_key_len(self, k_len: usize) -> Option<usize> {
        match self {
            KeyLayout::Lmcache => Some(k_len + METADATA_SUFFIX.len()),
            KeyLayout::Hashtag => Some(1 + k_len + TAG_METADATA_SUFFIX.len()),
            KeyLayout::Raw => None,
        }
    }
}

/// What joins a key prefix to the rest of the key, as LMCache's `valkey` adapter does
/// (`<key_prefix>@<key>`): the same prefix names the same Redis keys in both.
pub const KEY_PREFIX_SEP: u8 = b'@';

/// The Redis keys of a chunk: a [`KeyLayout`] plus an optional tenant prefix
/// (`extra_config.key_prefix`).
///
/// With prefix `P` every Redis key of a chunk starts with `P@`, in front of whatever the
/// layout makes (`P@K` for `raw`, `P@Kmetadata` for `lmcache`, `P@{K}:metadata` for
/// `hashtag`), so a `SCAN MATCH P@*` or an ACL key pattern `~P@*` covers a tenant's
/// keys. The prefix stays outside the hash tag and may not contain `{` or `}`: the
/// first `{` of a key is the chunk's own, so a prefixed chunk lands in the same slot
/// as an unprefixed one and its two keys keep sharing it.
///
/// ```
/// use slotline::{KeyLayout, KeyScheme};
/// let s = KeyScheme::new(KeyLayout::Hashtag, "tenant-a").unwrap();
/// assert_eq!(s.metadata_key(b"k").unwrap(), b"tenant-a@{k}:metadata");
/// assert_eq!(KeyScheme::new(KeyLayout::Raw, "a").unwrap().payload_key(b"k"), b"a@k");
/// assert_eq!(KeyScheme::plain(KeyLayout::Raw).payload_key(b"k"), b"k");
/// assert!(KeyScheme::new(KeyLayout::Raw, "{t}").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KeyScheme {
    layout: KeyLayout,
    /// `P@`, or `None` without a prefix.
    prefix: Option<Arc<[u8]>>,
}

impl KeyScheme {
    /// `layout` without a prefix.
    pub const fn plain(layout: KeyLayout) -> KeyScheme {
        KeyScheme {
            layout,
            prefix: None,
        }
    }

    /// `layout` with every key starting with `prefix@` (no prefix when `prefix` is
    /// empty). Fails for a prefix [`check_key_prefix`] refuses.
    pub fn new(layout: KeyLayout, prefix: &str) -> Result<KeyScheme> {
        check_key_prefix(prefix)
            .map_err(|reason| Error::config("extra_config.key_prefix", prefix, reason))?;
        let prefix = (!prefix.is_empty()).then(|| {
            let mut p = prefix.as_bytes().to_vec();
            p.push(KEY_PREFIX_SEP);
            Arc::from(p)
        });
        Ok(KeyScheme { layout, prefix })
    }

    /// The layout.
    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// The bytes in front of every key: `P@`, or empty.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_deref().unwrap_or(b"")
    }

    /// Redis keys per chunk (see [`KeyLayout::keys_per_chunk`]).
    pub fn keys_per_chunk(&self) -> usize {
        self.layout.keys_per_chunk()
    }

    /// The Redis key holding the payload of chunk `k`.
    pub fn payload_key(&self, k: &[u8]) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.prefix().len() + self.layout.payload_key_len(k.len()));
        self.write_payload_key(k, &mut out);
        out
    }

    /// The Redis key holding the metadata of chunk `k`, or `None` for `raw`.
    pub fn metadata_key(&self, k: &[u8]) -> Option<Vec<u8>> {
        let len = self.prefix().len() + self.layout.metadata_key_len(k.len())?;
        let mut out = Vec::with_capacity(len);
        self.write_metadata_key(k, &mut out);
        Some(out)
    }

    /// Appends the payload key of chunk `k` to `out`.
    pub fn write_payload_key(&self, k: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix());
        self.layout.write_payload_key(k, out);
    }

    /// Appends the metadata key of chunk `k` to `out`; returns `false` (and appends
    /// nothing) for `raw`.
    pub fn write_metadata_key(&self, k: &[u8], out: &mut Vec<u8>) -> bool {
        if self.layout.keys_per_chunk() == 1 {
            return false;
        }
        out.extend_from_slice(self.prefix());
        self.layout.write_metadata_key(k, out)
    }
}

impl From<KeyLayout> for KeyScheme {
    fn from(layout: KeyLayout) -> KeyScheme {
        KeyScheme::plain(layout)
    }
}

/// Why `prefix` cannot be a key prefix, or `Ok` when it can (the empty prefix is no
/// prefix). Refused: `@` (the separator: tenant `a` and tenant `a@b` would share keys,
/// and LMCache's `valkey` adapter refuses it too) and `{` or `}` (a brace in front of
/// the chunk's hash tag would take its place: every key of the tenant in one cluster
/// slot, or a chunk's two keys in different slots).
pub fn check_key_prefix(prefix: &str) -> std::result::Result<(), String> {
    if prefix.contains(KEY_PREFIX_SEP as char) {
        return Err(
            "must not contain '@' (it joins the prefix to the key, as in LMCache's \
             valkey adapter)"
                .to_string(),
        );
    }
    if prefix.contains(['{', '}']) {
        return Err(
            "must not contain '{' or '}': Redis Cluster would take them for the \
             hash tag of every key (all of a tenant's chunks in one slot, or a chunk's \
             keys split over two)"
                .to_string(),
        );
    }
    Ok(())
}

/// The value of a chunk's metadata key: LMCache's `RemoteMetadata`, a packed array of
/// little-endian `i32`: `[length, fmt, (dtype, s0, s1, s2, s3) * G]`.
///
/// ```
/// use slotline::RemoteMetadata;
/// let m = RemoteMetadata::new(33554432, 1, 3, &[2, 32, 256, 1024]).unwrap();
/// let bytes = m.encode();
/// assert_eq!(bytes.len(), 28);
/// assert_eq!(RemoteMetadata::decode(&bytes).unwrap(), m);
/// assert_eq!(m.to_string(), "length=33554432 fmt=KV_2LTD dtype=bfloat16 shape=[2, 32, 256, 1024]");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMetadata {
    /// Number of payload bytes.
    pub length: i32,
    /// MemoryFormat code (see [`fmt_code`]).
    pub fmt: i32,
    /// One entry per KV layer group; LMCache writes at least one.
    pub groups: Vec<MetaGroup>,
}

/// dtype and shape of one KV layer group in [`RemoteMetadata`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaGroup {
    /// dtype code (see [`dtype_code`]).
    pub dtype: i32,
    /// Shape, padded with trailing zeros to four dimensions.
    pub shape: [i32; 4],
}

const HEADER_INTS: usize = 2;
const GROUP_INTS: usize = 5;

impl RemoteMetadata {
    /// Metadata with a single group. `shape` may have up to four dimensions; fewer are
    /// padded with zeros, as LMCache does.
    ///
    /// Fails if `length` or a dimension exceeds `i32::MAX`, or `shape` has more than
    /// four dimensions.
    pub fn new(length: usize, fmt: i32, dtype: i32, shape: &[usize]) -> Result<Self> {
        let length = i32::try_from(length).map_err(|_| {
            Error::Invalid(format!(
                "metadata length {length} does not fit in a signed 32-bit integer"
            ))
        })?;
        if shape.len() > 4 {
            return Err(Error::Invalid(format!(
                "metadata shape {shape:?} has {} dimensions; at most 4 are supported",
                shape.len()
            )));
        }
        let mut padded = [0i32; 4];
        for (slot, &dim) in padded.iter_mut().zip(shape) {
            *slot = i32::try_from(dim).map_err(|_| {
                Error::Invalid(format!(
                    "metadata shape {shape:?}: dimension {dim} does not fit in a signed 32-bit integer"
                ))
            })?;
        }
        Ok(RemoteMetadata {
            length,
            fmt,
            groups: vec![MetaGroup {
                dtype,
                shape: padded,
            }],
        })
    }

    /// Encoded size in bytes: `4 * (2 + 5 * G)`.
    pub fn encoded_len(&self) -> usize {
        4 * (HEADER_INTS + GROUP_INTS * self.groups.len())
    }

    /// The bytes LMCache stores under the metadata key.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.fmt.to_le_bytes());
        for g in &self.groups {
            out.extend_from_slice(&g.dtype.to_le_bytes());
            for d in g.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
    }

    /// Parses a metadata value. The length must be `8 + 20 * G` bytes with `G >= 1`,
    /// and the payload length must not be negative.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let n = bytes.len();
        let header = 4 * HEADER_INTS;
        let group = 4 * GROUP_INTS;
        if n < header + group || (n - header) % group != 0 {
            return Err(Error::Invalid(format!(
                "metadata value is {n} bytes; expected 8 + 20 * G bytes with G >= 1 (28, 48, ...)"
            )));
        }
        let mut ints = bytes.chunks_exact(4).map(|c| {
            // chunks_exact(4) only yields 4-byte slices, so the conversion cannot fail.
            i32::from_le_bytes([c[0], c[1], c[2], c[3]])
        });
        let mut next = || ints.next().unwrap_or(0);
        let length = next();
        let fmt = next();
        if length < 0 {
            return Err(Error::Invalid(format!(
                "metadata declares a negative payload length {length}"
            )));
        }
        let count = (n - header) / group;
        let mut groups = Vec::with_capacity(count);
        for _ in 0..count {
            let dtype = next();
            let shape = [next(), next(), next(), next()];
            groups.push(MetaGroup { dtype, shape });
        }
        Ok(RemoteMetadata {
            length,
            fmt,
            groups,
        })
    }

    /// The payload length this metadata announces, in bytes.
    pub fn payload_len(&self) -> usize {
        // decode() and new() reject negative lengths; a hand-built negative one is
        // treated as empty rather than wrapping to a huge size.
        usize::try_from(self.length).unwrap_or(0)
    }
}

impl fmt::Display for RemoteMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "length={} fmt={}", self.length, fmt_name(self.fmt))?;
        for (i, g) in self.groups.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let [a, b, c, d] = g.shape;
            write!(
                f,
                "{sep}dtype={} shape=[{a}, {b}, {c}, {d}]",
                dtype_name(g.dtype)
            )?;
        }
        Ok(())
    }
}

/// dtype code for a torch or LMCache dtype name, or a decimal code.
///
/// Names are matched case-insensitively, with an optional `torch.` prefix.
///
/// ```
/// use slotline::dtype_code;
/// assert_eq!(dtype_code("bfloat16"), Some(3));
/// assert_eq!(dtype_code("half"), Some(2));
/// assert_eq!(dtype_code("7"), Some(7));
/// assert_eq!(dtype_code("complex64"), None);
/// ```
pub fn dtype_code(name: &str) -> Option<i32> {
    let t = name.trim();
    let lower = t.to_ascii_lowercase();
    let bare = lower.strip_prefix("torch.").unwrap_or(&lower);
    let code = match bare {
        "none" => 0,
        // LMCache's writers emit 2 for float16; 1 is only ever read.
        "float16" | "half" | "fp16" => 2,
        "bfloat16" | "bf16" => 3,
        "float32" | "float" | "fp32" => 4,
        "float64" | "double" => 5,
        "uint8" => 6,
        "float8_e4m3fn" | "fp8_e4m3" => 7,
        "float8_e5m2" | "fp8_e5m2" => 8,
        _ => return parse_decimal(t),
    };
    Some(code)
}

/// Name of a dtype code; `"unknown"` for codes LMCache does not define.
pub fn dtype_name(code: i32) -> &'static str {
    match code {
        0 => "none",
        1 | 2 => "float16",
        3 => "bfloat16",
        4 => "float32",
        5 => "float64",
        6 => "uint8",
        7 => "float8_e4m3fn",
        8 => "float8_e5m2",
        _ => "unknown",
    }
}

const FMT_NAMES: [&str; 8] = [
    "UNDEFINED",
    "KV_2LTD",
    "KV_T2D",
    "KV_2TD",
    "BINARY",
    "BINARY_BUFFER",
    "KV_MLA_FMT",
    "KV_DSA_INDEX_FMT",
];

/// MemoryFormat code for a name (case-insensitive) or a decimal code.
///
/// ```
/// use slotline::fmt_code;
/// assert_eq!(fmt_code("kv_2ltd"), Some(1));
/// assert_eq!(fmt_code("4"), Some(4));
/// assert_eq!(fmt_code("KV_NOPE"), None);
/// ```
pub fn fmt_code(name: &str) -> Option<i32> {
    let t = name.trim();
    let bare = t
        .strip_prefix("MemoryFormat.")
        .or_else(|| t.strip_prefix("memoryformat."))
        .unwrap_or(t);
    FMT_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(bare))
        .and_then(|i| i32::try_from(i).ok())
        .or_else(|| parse_decimal(t))
}

/// Name of a MemoryFormat code; `"unknown"` for codes LMCache does not define.
pub fn fmt_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| FMT_NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// Parses a plain decimal integer (optional leading `-`), nothing else.
fn parse_decimal(s: &str) -> Option<i32> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn llama_example_bytes() {
        let expected = hex("00000002 01000000 03000000 02000000 20000000 00010000 00040000");
        let m = RemoteMetadata::new(
            33554432,
            fmt_code("KV_2LTD").unwrap(),
            dtype_code("bfloat16").unwrap(),
            &[2, 32, 256, 1024],
        )
        .unwrap();
        assert_eq!(m.encoded_len(), 28);
        assert_eq!(m.encode(), expected);
        let d = RemoteMetadata::decode(&expected).unwrap();
        assert_eq!(d, m);
        assert_eq!(d.payload_len(), 33554432);
        assert_eq!(
            d.to_string(),
            "length=33554432 fmt=KV_2LTD dtype=bfloat16 shape=[2, 32, 256, 1024]"
        );
    }

    #[test]
    fn two_groups_round_trip() {
        let m = RemoteMetadata {
            length: 4096,
            fmt: 6,
            groups: vec![
                MetaGroup {
                    dtype: 3,
                    shape: [2, 16, 256, 128],
                },
                MetaGroup {
                    dtype: 7,
                    shape: [1, 8, 256, 0],
                },
            ],
        };
        let bytes = m.encode();
        assert_eq!(bytes.len(), 48);
        assert_eq!(m.encoded_len(), 48);
        assert_eq!(&bytes[..4], &4096i32.to_le_bytes());
        assert_eq!(&bytes[28..32], &7i32.to_le_bytes());
        assert_eq!(RemoteMetadata::decode(&bytes).unwrap(), m);
        assert_eq!(
            m.to_string(),
            "length=4096 fmt=KV_MLA_FMT dtype=bfloat16 shape=[2, 16, 256, 128], \
             dtype=float8_e4m3fn shape=[1, 8, 256, 0]"
        );

        let mut out = b"prefix".to_vec();
        m.encode_into(&mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(&out[6..], &bytes[..]);
    }

    #[test]
    fn new_pads_and_rejects() {
        let m = RemoteMetadata::new(10, 4, 6, &[10]).unwrap();
        assert_eq!(m.groups[0].shape, [10, 0, 0, 0]);
        let m = RemoteMetadata::new(0, 0, 0, &[]).unwrap();
        assert_eq!(m.groups[0].shape, [0; 4]);
        assert_eq!(m.encoded_len(), 28);

        let e = RemoteMetadata::new(1, 1, 3, &[1, 2, 3, 4, 5]).unwrap_err();
        assert!(e.to_string().contains("5 dimensions"), "{e}");
        let big = i32::MAX as usize + 1;
        let e = RemoteMetadata::new(big, 1, 3, &[1]).unwrap_err();
        assert!(e.to_string().contains(&big.to_string()), "{e}");
        let e = RemoteMetadata::new(1, 1, 3, &[1, big]).unwrap_err();
        assert!(e.to_string().contains(&big.to_string()), "{e}");
        assert!(RemoteMetadata::new(i32::MAX as usize, 1, 3, &[i32::MAX as usize]).is_ok());
    }

    #[test]
    fn decode_rejects_bad_lengths() {
        for n in [0usize, 4, 8, 27, 29, 47, 49] {
            let e = RemoteMetadata::decode(&vec![0u8; n]).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)));
            assert!(e.to_string().contains(&format!("is {n} bytes")), "{e}");
        }
        for n in [28usize, 48, 68] {
            assert_eq!(
                RemoteMetadata::decode(&vec![0u8; n]).unwrap().groups.len(),
                (n - 8) / 20
            );
        }
    }

    #[test]
    fn decode_rejects_negative_length() {
        let mut b = RemoteMetadata::new(5, 1, 3, &[1]).unwrap().encode();
        b[..4].copy_from_slice(&(-1i32).to_le_bytes());
        let e = RemoteMetadata::decode(&b).unwrap_err();
        assert!(e.to_string().contains("-1"), "{e}");
    }

    #[test]
    fn payload_len_of_hand_built_negative_is_zero() {
        let m = RemoteMetadata {
            length: -5,
            fmt: 0,
            groups: vec![],
        };
        assert_eq!(m.payload_len(), 0);
    }

    #[test]
    fn layout_keys() {
        // A key with hash-tag braces, LMCache separators and non-UTF-8 bytes.
        let k: &[u8] = b"m{x}/Llama@1@0@3f9a0c1@bfloat16@tag%v\xff\xfe\x00";
        let cat = |a: &[u8], b: &[u8], c: &[u8]| [a, b, c].concat();

        let l = KeyLayout::Lmcache;
        assert_eq!(l.keys_per_chunk(), 2);
        assert_eq!(l.payload_key(k), cat(b"", k, b"kv_bytes"));
        assert_eq!(l.metadata_key(k).unwrap(), cat(b"", k, b"metadata"));

        let h = KeyLayout::Hashtag;
        assert_eq!(h.keys_per_chunk(), 2);
        assert_eq!(h.payload_key(k), cat(b"{", k, b"}:kv_bytes"));
        assert_eq!(h.metadata_key(k).unwrap(), cat(b"{", k, b"}:metadata"));

        let r = KeyLayout::Raw;
        assert_eq!(r.keys_per_chunk(), 1);
        assert_eq!(r.payload_key(k), k);
        assert_eq!(r.metadata_key(k), None);
        assert_eq!(r.metadata_key_len(k.len()), None);

        for layout in [l, h, r] {
            let p = layout.payload_key(k);
            assert_eq!(layout.payload_key_len(k.len()), p.len());
            let mut out = b"pre".to_vec();
            layout.write_payload_key(k, &mut out);
            assert_eq!(out, cat(b"pre", &p, b""));

            let mut out = b"pre".to_vec();
            let wrote = layout.write_metadata_key(k, &mut out);
            match layout.metadata_key(k) {
                Some(m) => {
                    assert!(wrote);
                    assert_eq!(out, cat(b"pre", &m, b""));
                    assert_eq!(layout.metadata_key_len(k.len()), Some(m.len()));
                }
                None => {
                    assert!(!wrote);
                    assert_eq!(out, b"pre");
                }
            }
        }

        // The empty key still yields well-formed keys.
        assert_eq!(l.payload_key(b""), b"kv_bytes");
        assert_eq!(h.metadata_key(b"").unwrap(), b"{}:metadata");
    }

    #[test]
    fn layout_parse_and_display() {
        for (s, l) in [
            ("lmcache", KeyLayout::Lmcache),
            ("HashTag", KeyLayout::Hashtag),
            ("RAW", KeyLayout::Raw),
            (" raw ", KeyLayout::Raw),
        ] {
            assert_eq!(s.parse::<KeyLayout>().unwrap(), l);
        }
        for l in [KeyLayout::Lmcache, KeyLayout::Hashtag, KeyLayout::Raw] {
            assert_eq!(l.to_string().parse::<KeyLayout>().unwrap(), l);
        }
        assert_eq!(KeyLayout::default(), KeyLayout::Lmcache);
        let e = "tagged".parse::<KeyLayout>().unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("key_layout") && msg.contains("tagged"),
            "{msg}"
        );
    }

    #[test]
    fn dtype_and_fmt_names() {
        for (names, code) in [
            (&["none"][..], 0),
            (&["float16", "half", "fp16", "torch.float16", "HALF"][..], 2),
            (&["bfloat16", "bf16", "torch.bfloat16"][..], 3),
            (&["float32", "float", "fp32"][..], 4),
            (&["float64", "double"][..], 5),
            (&["uint8"][..], 6),
            (&["float8_e4m3fn", "fp8_e4m3"][..], 7),
            (&["float8_e5m2", "fp8_e5m2"][..], 8),
            (&["1"][..], 1),
            (&["42"][..], 42),
        ] {
            for n in names {
                assert_eq!(dtype_code(n), Some(code), "{n}");
            }
        }
        for bad in ["", "int4", "+3", "3.0", "0x3", "99999999999"] {
            assert_eq!(dtype_code(bad), None, "{bad}");
        }
        assert_eq!(dtype_name(1), "float16");
        assert_eq!(dtype_name(2), "float16");
        assert_eq!(dtype_name(8), "float8_e5m2");
        assert_eq!(dtype_name(9), "unknown");
        assert_eq!(dtype_name(-1), "unknown");
        for code in 0..=8 {
            if code != 1 {
                assert_eq!(dtype_code(dtype_name(code)), Some(code));
            }
        }

        for (i, n) in FMT_NAMES.iter().enumerate() {
            assert_eq!(fmt_code(n), Some(i as i32));
            assert_eq!(fmt_code(&n.to_ascii_lowercase()), Some(i as i32));
            assert_eq!(fmt_name(i as i32), *n);
        }
        assert_eq!(fmt_code("MemoryFormat.KV_2LTD"), Some(1));
        assert_eq!(fmt_code("12"), Some(12));
        assert_eq!(fmt_code("KV_3LTD"), None);
        assert_eq!(fmt_name(8), "unknown");
        assert_eq!(fmt_name(-3), "unknown");
    }

    #[test]
    fn key_scheme_prefixes_every_key() {
        let k: &[u8] = b"m{x}/Llama@1@0@3f9a";
        for layout in [KeyLayout::Lmcache, KeyLayout::Hashtag, KeyLayout::Raw] {
            let plain = KeyScheme::plain(layout);
            assert_eq!(plain.prefix(), b"");
            assert_eq!(plain.payload_key(k), layout.payload_key(k));
            assert_eq!(plain.metadata_key(k), layout.metadata_key(k));
            assert_eq!(KeyScheme::new(layout, "").unwrap(), plain);

            let s = KeyScheme::new(layout, "tenant-a").unwrap();
            assert_eq!(s.layout(), layout);
            assert_eq!(s.prefix(), b"tenant-a@");
            assert_eq!(s.keys_per_chunk(), layout.keys_per_chunk());
            assert_eq!(
                s.payload_key(k),
                [b"tenant-a@", &layout.payload_key(k)[..]].concat()
            );
            assert_eq!(
                s.metadata_key(k),
                layout
                    .metadata_key(k)
                    .map(|m| [b"tenant-a@", &m[..]].concat())
            );
            let mut out = b"x".to_vec();
            assert_eq!(
                s.write_metadata_key(k, &mut out),
                layout.keys_per_chunk() == 2
            );
            if layout == KeyLayout::Raw {
                assert_eq!(out, b"x", "raw: no metadata key, nothing written");
            }
        }
        // What LMCache's valkey adapter writes for key_prefix "t" (`t@<key>`).
        let s = KeyScheme::new(KeyLayout::Raw, "t").unwrap();
        assert_eq!(s.payload_key(b"fmt@model@1@0@abc"), b"t@fmt@model@1@0@abc");
    }

    #[test]
    fn key_prefix_refusals_name_the_reason() {
        for (bad, why) in [
            ("a@b", "'@'"),
            ("{t}", "hash tag"),
            ("t{", "hash tag"),
            ("t}", "hash tag"),
        ] {
            let e = KeyScheme::new(KeyLayout::Hashtag, bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("key_prefix") && e.contains(bad) && e.contains(why),
                "{e}"
            );
        }
    }

    fn any_meta() -> impl Strategy<Value = RemoteMetadata> {
        let group =
            (any::<i32>(), any::<[i32; 4]>()).prop_map(|(dtype, shape)| MetaGroup { dtype, shape });
        (
            0..=i32::MAX,
            any::<i32>(),
            proptest::collection::vec(group, 1..5),
        )
            .prop_map(|(length, fmt, groups)| RemoteMetadata {
                length,
                fmt,
                groups,
            })
    }

    proptest! {
        #[test]
        fn metadata_round_trip(m in any_meta()) {
            let b = m.encode();
            prop_assert_eq!(b.len(), m.encoded_len());
            prop_assert_eq!(b.len(), 8 + 20 * m.groups.len());
            prop_assert_eq!(RemoteMetadata::decode(&b).unwrap(), m);
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = RemoteMetadata::decode(&b);
        }

        /// A prefix keeps a chunk in its slot: the keys of a `hashtag` chunk land in
        /// the slots of the unprefixed chunk's, whatever the prefix and the key, and
        /// every key starts with the prefix.
        #[test]
        fn prefix_keeps_the_hash_slot(
            p in "[^@{}]{0,12}",
            k in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            use crate::cluster::slot::hash_slot;
            for layout in [KeyLayout::Lmcache, KeyLayout::Hashtag, KeyLayout::Raw] {
                let s = KeyScheme::new(layout, &p).unwrap();
                prop_assert!(s.payload_key(&k).starts_with(s.prefix()));
                // An empty tag (`{}`: the key empty or starting with `}`) makes Redis
                // hash the whole key; any other tag is the chunk's slot.
                if layout != KeyLayout::Hashtag || k.first().is_none_or(|&b| b == b'}') {
                    continue;
                }
                let slot = hash_slot(&layout.payload_key(&k));
                prop_assert_eq!(hash_slot(&s.payload_key(&k)), slot);
                prop_assert_eq!(hash_slot(&s.metadata_key(&k).unwrap()), slot);
            }
        }

        #[test]
        fn layout_lengths_match(k in proptest::collection::vec(any::<u8>(), 0..80)) {
            for l in [KeyLayout::Lmcache, KeyLayout::Hashtag, KeyLayout::Raw] {
                prop_assert_eq!(l.payload_key(&k).len(), l.payload_key_len(k.len()));
                prop_assert_eq!(l.metadata_key(&k).map(|m| m.len()), l.metadata_key_len(k.len()));
            }
        }
    }
}
