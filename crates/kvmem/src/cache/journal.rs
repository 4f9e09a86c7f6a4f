//! The disk tier's append-only journal of completed block writes.
//!
//! Each entry is a fixed 56-byte record: magic, kind (a block written / a slot freed), slot,
//! length, key, XXH3-64 checksum of the block's bytes, a sequence number, and an XXH3-64
//! checksum of the record itself. A block is journaled only after its write to the block file
//! completed, so a record names bytes that were once complete; whether they still are (a later
//! torn overwrite, a corrupted sector) is checked against the checksum when the block is loaded.
//! Opening replays the records in order and cuts the file at the first record that does not
//! verify (a torn append).

use crate::key::BlockKey;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

const MAGIC: u32 = 0x4b56_4a31; // "KVJ1"
/// Bytes of one journal record.
pub(crate) const RECORD_BYTES: usize = 56;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// `key`'s bytes are complete in `slot`, with checksum `sum`.
    Written,
    /// `slot` no longer holds a block.
    Freed,
}

/// One journal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) kind: EntryKind,
    pub(crate) slot: u32,
    pub(crate) len: u32,
    pub(crate) key: BlockKey,
    pub(crate) sum: u64,
}

impl Entry {
    /// `key`'s `len` bytes are complete in `slot`, with checksum `sum`.
    pub(crate) fn written(slot: u32, len: u32, key: BlockKey, sum: u64) -> Self {
        Self {
            kind: EntryKind::Written,
            slot,
            len,
            key,
            sum,
        }
    }

    /// `slot` (which held `key`) no longer holds a block.
    pub(crate) fn freed(slot: u32, key: BlockKey) -> Self {
        Self {
            kind: EntryKind::Freed,
            slot,
            len: 0,
            key,
            sum: 0,
        }
    }

    fn encode(&self, seq: u64, out: &mut [u8; RECORD_BYTES]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = match self.kind {
            EntryKind::Written => 1,
            EntryKind::Freed => 2,
        };
        out[5..8].fill(0);
        out[8..12].copy_from_slice(&self.slot.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..32].copy_from_slice(&self.key.0.to_le_bytes());
        out[32..40].copy_from_slice(&self.sum.to_le_bytes());
        out[40..48].copy_from_slice(&seq.to_le_bytes());
        let check = xxh3_64(&out[0..48]);
        out[48..56].copy_from_slice(&check.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        if b.len() < RECORD_BYTES || u32_at(0)? != MAGIC || u64_at(48)? != xxh3_64(&b[0..48]) {
            return None;
        }
        let kind = match b[4] {
            1 => EntryKind::Written,
            2 => EntryKind::Freed,
            _ => return None,
        };
        let key = u128::from_le_bytes(b.get(16..32)?.try_into().ok()?);
        Some(Self {
            kind,
            slot: u32_at(8)?,
            len: u32_at(12)?,
            key: BlockKey(key),
            sum: u64_at(32)?,
        })
    }
}

/// The open journal file.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    seq: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns the entries that verify, in order.
    /// A torn or corrupted tail is cut off.
    pub(crate) fn open(path: &Path) -> std::io::Result<(Self, Vec<Entry>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut entries = Vec::with_capacity(bytes.len() / RECORD_BYTES);
        let mut good = 0usize;
        for rec in bytes.chunks(RECORD_BYTES) {
            match Entry::decode(rec) {
                Some(e) => {
                    entries.push(e);
                    good += RECORD_BYTES;
                }
                None => break,
            }
        }
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() - good,
                "cache journal: cut a torn or corrupted tail"
            );
            file.set_len(good as u64)?;
        }
        let journal = Self {
            file,
            path: path.to_path_buf(),
            len: good as u64,
            seq: entries.len() as u64,
        };
        Ok((journal, entries))
    }

    /// Appends `entries` in one write. On failure (a full disk, a file-size limit) the partial
    /// append is cut off again where possible; either way, no entry of this call is counted.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(entries.len() * RECORD_BYTES);
        let mut rec = [0u8; RECORD_BYTES];
        for (i, e) in entries.iter().enumerate() {
            e.encode(self.seq + i as u64, &mut rec);
            buf.extend_from_slice(&rec);
        }
        match self.file.write_all(&buf) {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.seq += entries.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    tracing::warn!(path = %self.path.display(), error = %cut,
                        "cache journal: could not cut a failed append; the next open drops it");
                }
                Err(e)
            }
        }
    }

    /// The journal's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u32) -> Entry {
        Entry {
            kind: EntryKind::Written,
            slot,
            len: 4096,
            key: BlockKey(u128::from(slot) << 70 | 5),
            sum: 0xdead_beef ^ u64::from(slot),
        }
    }

    #[test]
    fn replays_appends_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let (mut j, e) = Journal::open(&path).unwrap();
            assert!(e.is_empty());
            j.append(&[entry(1), entry(2)]).unwrap();
            j.append(&[entry(3)]).unwrap();
        }
        // A torn append: half a record at the end.
        let mut bytes = std::fs::read(&path).unwrap();
        let half = bytes[..RECORD_BYTES / 2].to_vec();
        bytes.extend_from_slice(&half);
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, e) = Journal::open(&path).unwrap();
        assert_eq!(e, [entry(1), entry(2), entry(3)]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * RECORD_BYTES as u64
        );
        j.append(&[entry(4)]).unwrap();
        drop(j);
        // A flipped bit in record 2 stops the replay there.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORD_BYTES + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, e) = Journal::open(&path).unwrap();
        assert_eq!(e, [entry(1)]);
    }
}
