//! Content keys of KV blocks: the engine's chained prefix hash.

use std::fmt;
use xxhash_rust::xxh3::Xxh3;

/// The 128-bit key of one KV block: a hash of the block's tokens chained with the key of the
/// block before it, so equal keys mean equal prefixes up to and including this block.
///
/// Engines that already hash their prefixes (vLLM, SGLang, Dynamo) pass their own hashes in
/// ([`BlockKey::new`]); [`BlockKey::chain`] and [`chain_keys`] compute them from token ids with
/// XXH3-128.
///
/// ```
/// use kvmem::cache::{BlockKey, chain_keys};
/// let tokens: Vec<u32> = (0..40).collect();
/// let keys = chain_keys(None, &tokens, 16);
/// assert_eq!(keys.len(), 2); // the partial third block has no key
/// assert_eq!(keys[1], BlockKey::chain(Some(keys[0]), &tokens[16..32]));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockKey(pub u128);

impl BlockKey {
    /// A key from an engine's own 128-bit hash.
    pub const fn new(hash: u128) -> Self {
        Self(hash)
    }

    /// A key from a 64-bit id, for traces and engines whose hashes are 64 bits wide.
    pub fn from_u64(id: u64) -> Self {
        Self::chain(None, &[(id & 0xffff_ffff) as u32, (id >> 32) as u32])
    }

    /// The key of a block holding `tokens`, after the block whose key is `parent` (`None` for
    /// the first block of a sequence).
    pub fn chain(parent: Option<BlockKey>, tokens: &[u32]) -> Self {
        let mut h = Xxh3::new();
        match parent {
            Some(p) => {
                h.update(&[1]);
                h.update(&p.0.to_le_bytes());
            }
            None => h.update(&[0]),
        }
        for t in tokens {
            h.update(&t.to_le_bytes());
        }
        Self(h.digest128())
    }

    /// The low 64 bits, used to place the key in hash tables (the key is already a hash).
    pub(crate) fn low64(self) -> u64 {
        self.0 as u64
    }
}

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({:032x})", self.0)
    }
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The keys of every full block of `block_tokens` tokens in `tokens`, chained from `parent`.
/// A trailing partial block gets no key (it is not cacheable until it is full).
pub fn chain_keys(parent: Option<BlockKey>, tokens: &[u32], block_tokens: usize) -> Vec<BlockKey> {
    if block_tokens == 0 {
        return Vec::new();
    }
    let mut keys = Vec::with_capacity(tokens.len() / block_tokens);
    let mut prev = parent;
    for block in tokens.chunks_exact(block_tokens) {
        let k = BlockKey::chain(prev, block);
        keys.push(k);
        prev = Some(k);
    }
    keys
}

/// A hasher for tables keyed by [`BlockKey`]: the key is already a uniform hash, so its low
/// 64 bits are used as they are.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for types other than the u128/u64 below; fold the bytes in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The [`std::hash::BuildHasher`] of [`KeyHasher`].
pub(crate) type KeyBuild = std::hash::BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_parent_and_tokens() {
        let a = BlockKey::chain(None, &[1, 2, 3]);
        assert_eq!(a, BlockKey::chain(None, &[1, 2, 3]));
        assert_ne!(a, BlockKey::chain(None, &[1, 2, 4]));
        assert_ne!(BlockKey::chain(Some(a), &[5]), BlockKey::chain(None, &[5]));
        assert_ne!(
            BlockKey::chain(Some(a), &[5]),
            BlockKey::chain(Some(BlockKey(7)), &[5])
        );
        assert_ne!(BlockKey::from_u64(1), BlockKey::from_u64(1 << 32));
    }

    #[test]
    fn chain_keys_skips_the_partial_block() {
        let t: Vec<u32> = (0..10).collect();
        let k = chain_keys(None, &t, 4);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0], BlockKey::chain(None, &t[0..4]));
        assert_eq!(k[1], BlockKey::chain(Some(k[0]), &t[4..8]));
        assert!(chain_keys(None, &t, 0).is_empty());
    }
}
