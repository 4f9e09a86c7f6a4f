//! The index's invariants, checked for tests and diagnostics ([`BlockCache::check_invariants`]).

use super::BlockCache;
use super::index::TierState;
use super::slots::NO_SLOT;
use super::table::Res;

impl BlockCache {
    /// Checks the index's invariants: every occupied slot has exactly one owner whose record
    /// points back at it, no slot is both free and owned, no tier holds more than its capacity.
    /// For tests; it takes the lock and walks the whole index.
    ///
    /// # Errors
    /// A description of the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let ix = self.shared.lock();
        let check_tier = |tier: &TierState, name: &str, host: bool| -> Result<(), String> {
            let cap = tier.slots.capacity();
            let mut owned = vec![false; cap];
            let mut count = 0usize;
            for (id, r) in ix.map.iter() {
                let key = r.key;
                let (slot, state) = if host {
                    (r.host, r.host_state)
                } else {
                    (r.disk, r.disk_state)
                };
                if state == Res::None {
                    if slot != NO_SLOT {
                        return Err(format!("{name}: {key} has slot {slot} but no residency"));
                    }
                    continue;
                }
                let s = slot as usize;
                if s >= cap {
                    return Err(format!(
                        "{name}: {key} has slot {slot} beyond capacity {cap}"
                    ));
                }
                if owned[s] {
                    return Err(format!("{name}: slot {slot} has two owners"));
                }
                owned[s] = true;
                count += 1;
                if tier.owner[s] != id {
                    return Err(format!(
                        "{name}: slot {slot} is owned by {key} (record {id}) but names record {}",
                        tier.owner[s]
                    ));
                }
            }
            for f in tier.slots.free_slots() {
                if owned.get(*f as usize).copied().unwrap_or(true) {
                    return Err(format!(
                        "{name}: slot {f} is free and owned (or out of range)"
                    ));
                }
            }
            for r in tier.slots.retired() {
                // A retired slot's record may still name it (until the record is dropped).
                if !owned.get(*r as usize).copied().unwrap_or(false) {
                    count += 1;
                }
            }
            if count != tier.slots.used() || count > cap {
                return Err(format!(
                    "{name}: {count} blocks own slots but {} of {cap} are allocated",
                    tier.slots.used()
                ));
            }
            Ok(())
        };
        check_tier(&ix.host, "host", true)?;
        if let Some(d) = &ix.disk {
            check_tier(d, "disk", false)?;
        }
        for (_, r) in ix.map.iter() {
            if r.is_empty() {
                return Err(format!("{} has an empty record", r.key));
            }
            if ix.map.find(&r.key).is_none() {
                return Err(format!("{} has a record the table does not find", r.key));
            }
        }
        Ok(())
    }
}
