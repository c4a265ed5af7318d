//! Redis Cluster hash slots, as defined by the Redis Cluster specification.
//!
//! Keys are opaque bytes: the hash tag rule looks only at the bytes `{` and `}`, so keys
//! that are not UTF-8 are routed exactly like Redis routes them.

/// Number of hash slots in a Redis Cluster.
pub const SLOT_COUNT: usize = 16384;

/// The bytes of `key` that decide its slot.
///
/// If the key holds a `{` followed later by a `}` with at least one byte between them,
/// only the bytes between the first `{` and the first `}` after it are hashed;
/// otherwise (including the empty tag `{}`) the whole key is.
///
/// ```
/// use slotline::hash_tag;
/// assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
/// assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
/// assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
/// ```
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        // An empty tag does not count: Redis then hashes the whole key, not "".
        Some(0) | None => key,
        Some(close) => &rest[..close],
    }
}

/// The cluster slot (0..16384) that serves `key`.
///
/// ```
/// use slotline::hash_slot;
/// assert_eq!(hash_slot(b"123456789"), 12739);
/// assert_eq!(hash_slot(b"{a}x"), hash_slot(b"{a}y"));
/// ```
pub fn hash_slot(key: &[u8]) -> u16 {
    // SLOT_COUNT is a power of two, so the mask equals `% 16384`.
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key)) & (SLOT_COUNT as u16 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_vectors() {
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
        assert_eq!(hash_slot(b"123456789"), 12739);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(
            hash_slot(b"{user1000}.following"),
            hash_slot(b"{user1000}.followers")
        );
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_slot(b"foo{}{bar}"), {
            crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384
        });
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
    }

    /// Slots that real Redis reports for these keys (CLUSTER KEYSLOT).
    #[test]
    fn known_redis_slots() {
        assert_eq!(hash_slot(b""), 0);
        assert_eq!(hash_slot(b"bar"), 5061);
        assert_eq!(hash_slot(b"hello"), 866);
        assert_eq!(hash_slot(b"somekey"), 11058);
    }

    #[test]
    fn tag_shapes() {
        let whole: &[&[u8]] = &[
            b"", b"{", b"}", b"{}", b"{a", b"a}", b"}a{", b"}{", b"{}}", b"{}a}", b"abc",
            b"a{}b{c}",
        ];
        for k in whole {
            assert_eq!(hash_tag(k), *k, "key {:?}", String::from_utf8_lossy(k));
        }
        let tagged: &[(&[u8], &[u8])] = &[
            (b"{a}", b"a"),
            (b"{{}}", b"{"),
            (b"{{}", b"{"),
            (b"x{a}y", b"a"),
            (b"{a}{b}", b"a"),
            (b"{a}}", b"a"),
            (b"}{a}", b"a"),
            (b"{ }", b" "),
            (b"{\xff\x00}rest", b"\xff\x00"),
            (
                b"{K@1@0@3f9a0c1@bfloat16}:kv_bytes",
                b"K@1@0@3f9a0c1@bfloat16",
            ),
        ];
        for (k, tag) in tagged {
            assert_eq!(hash_tag(k), *tag, "key {:?}", String::from_utf8_lossy(k));
        }
    }

    #[test]
    fn hashtag_layout_pairs_share_slot() {
        let k = b"meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1@bfloat16";
        let mut a = b"{".to_vec();
        a.extend_from_slice(k);
        a.extend_from_slice(b"}:metadata");
        let mut b = b"{".to_vec();
        b.extend_from_slice(k);
        b.extend_from_slice(b"}:kv_bytes");
        assert_eq!(hash_slot(&a), hash_slot(&b));
        assert_eq!(hash_slot(&a), hash_slot(k));
    }

    proptest! {
        #[test]
        fn slot_in_range(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!((hash_slot(&key) as usize) < SLOT_COUNT);
        }

        #[test]
        fn tag_follows_first_brace(key in proptest::collection::vec(prop_oneof![Just(b'{'), Just(b'}'), any::<u8>()], 0..64)) {
            let tag = hash_tag(&key);
            if tag.len() != key.len() {
                // A proper tag is the non-empty run right after the first '{', ended by '}'.
                let open = key.iter().position(|&b| b == b'{').unwrap();
                let close_brace = b'}';
                prop_assert!(!tag.is_empty());
                prop_assert!(!tag.contains(&close_brace));
                prop_assert_eq!(&key[open + 1..open + 1 + tag.len()], tag);
                prop_assert_eq!(key[open + 1 + tag.len()], close_brace);
            } else {
                prop_assert_eq!(tag, &key[..]);
            }
        }
    }
}
