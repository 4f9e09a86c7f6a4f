//! The cache's counters: kept in atomics for [`CacheStats`] snapshots and reported through the
//! `metrics` facade (a recorder such as a Prometheus exporter picks them up; without one the
//! calls cost next to nothing).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `kvmem_cache_lookups_total` | counter | |
//! | `kvmem_cache_lookup_blocks_total` | counter | |
//! | `kvmem_cache_hits_total` | counter | `tier` = `host` / `disk` |
//! | `kvmem_cache_bytes_total` | counter | `tier`, `direction` = `in` / `out` |
//! | `kvmem_cache_evictions_total` | counter | `tier` |
//! | `kvmem_cache_admissions_refused_total` | counter | |
//! | `kvmem_cache_corrupt_blocks_total` | counter | |
//! | `kvmem_cache_disk_write_failures_total` | counter | |
//! | `kvmem_cache_ops_in_flight` | gauge | |
//! | `kvmem_cache_op_seconds` | histogram | `op` = `store` / `load` / `prefetch` |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the cache's counters since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `lookup` calls.
    pub lookups: u64,
    /// Keys looked up.
    pub lookup_blocks: u64,
    /// Prefix blocks found in host memory by lookups.
    pub hits_host: u64,
    /// Prefix blocks found on disk by lookups.
    pub hits_disk: u64,
    /// Blocks stored into host memory.
    pub stored: u64,
    /// Keys a store found present and skipped.
    pub store_present: u64,
    /// Blocks loaded from host memory.
    pub loaded_host: u64,
    /// Blocks loaded from disk (checked).
    pub loaded_disk: u64,
    /// Bytes copied into the host tier (from the GPU, or from disk).
    pub host_bytes_in: u64,
    /// Bytes copied out of the host tier (to the GPU, or to disk).
    pub host_bytes_out: u64,
    /// Bytes written to disk.
    pub disk_bytes_in: u64,
    /// Bytes read from disk.
    pub disk_bytes_out: u64,
    /// Blocks evicted from host memory.
    pub evictions_host: u64,
    /// Blocks evicted from disk.
    pub evictions_disk: u64,
    /// Blocks the disk admission filter refused.
    pub admissions_refused: u64,
    /// Disk blocks whose checksum failed: dropped, never served.
    pub corrupt: u64,
    /// Disk writes (or their journal entries) that failed: the block is not on disk.
    pub disk_write_failures: u64,
    /// Blocks recovered from the journal when the cache was opened.
    pub recovered: u64,
    /// Keys a store could not place (every slot claimed).
    pub no_space: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) lookups: AtomicU64,
    pub(crate) lookup_blocks: AtomicU64,
    pub(crate) hits_host: AtomicU64,
    pub(crate) hits_disk: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) store_present: AtomicU64,
    pub(crate) loaded_host: AtomicU64,
    pub(crate) loaded_disk: AtomicU64,
    pub(crate) host_bytes_in: AtomicU64,
    pub(crate) host_bytes_out: AtomicU64,
    pub(crate) disk_bytes_in: AtomicU64,
    pub(crate) disk_bytes_out: AtomicU64,
    pub(crate) evictions_host: AtomicU64,
    pub(crate) evictions_disk: AtomicU64,
    pub(crate) admissions_refused: AtomicU64,
    pub(crate) corrupt: AtomicU64,
    pub(crate) disk_write_failures: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) no_space: AtomicU64,
}

/// The tiers the counters are labelled with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TierLabel {
    Host,
    Disk,
}

impl TierLabel {
    fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Disk => "disk",
        }
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            lookups: self.lookups.load(Relaxed),
            lookup_blocks: self.lookup_blocks.load(Relaxed),
            hits_host: self.hits_host.load(Relaxed),
            hits_disk: self.hits_disk.load(Relaxed),
            stored: self.stored.load(Relaxed),
            store_present: self.store_present.load(Relaxed),
            loaded_host: self.loaded_host.load(Relaxed),
            loaded_disk: self.loaded_disk.load(Relaxed),
            host_bytes_in: self.host_bytes_in.load(Relaxed),
            host_bytes_out: self.host_bytes_out.load(Relaxed),
            disk_bytes_in: self.disk_bytes_in.load(Relaxed),
            disk_bytes_out: self.disk_bytes_out.load(Relaxed),
            evictions_host: self.evictions_host.load(Relaxed),
            evictions_disk: self.evictions_disk.load(Relaxed),
            admissions_refused: self.admissions_refused.load(Relaxed),
            corrupt: self.corrupt.load(Relaxed),
            disk_write_failures: self.disk_write_failures.load(Relaxed),
            recovered: self.recovered.load(Relaxed),
            no_space: self.no_space.load(Relaxed),
        }
    }

    pub(crate) fn lookup(&self, blocks: usize, host: usize, disk: usize) {
        self.lookups.fetch_add(1, Relaxed);
        self.lookup_blocks.fetch_add(blocks as u64, Relaxed);
        self.hits_host.fetch_add(host as u64, Relaxed);
        self.hits_disk.fetch_add(disk as u64, Relaxed);
        metrics::counter!("kvmem_cache_lookups_total").increment(1);
        metrics::counter!("kvmem_cache_lookup_blocks_total").increment(blocks as u64);
        metrics::counter!("kvmem_cache_hits_total", "tier" => "host").increment(host as u64);
        metrics::counter!("kvmem_cache_hits_total", "tier" => "disk").increment(disk as u64);
    }

    /// Counts `bytes` copied into `tier`.
    pub(crate) fn bytes_in(&self, tier: TierLabel, bytes: usize) {
        let counter = match tier {
            TierLabel::Host => &self.host_bytes_in,
            TierLabel::Disk => &self.disk_bytes_in,
        };
        Self::bytes(counter, tier, "in", bytes);
    }

    /// Counts `bytes` copied out of `tier`.
    pub(crate) fn bytes_out(&self, tier: TierLabel, bytes: usize) {
        let counter = match tier {
            TierLabel::Host => &self.host_bytes_out,
            TierLabel::Disk => &self.disk_bytes_out,
        };
        Self::bytes(counter, tier, "out", bytes);
    }

    fn bytes(counter: &AtomicU64, tier: TierLabel, direction: &'static str, bytes: usize) {
        counter.fetch_add(bytes as u64, Relaxed);
        metrics::counter!("kvmem_cache_bytes_total", "tier" => tier.name(), "direction" => direction)
            .increment(bytes as u64);
    }

    /// Counts `(host, disk)` evictions.
    pub(crate) fn evicted(&self, (host, disk): (usize, usize)) {
        for (tier, n) in [(TierLabel::Host, host), (TierLabel::Disk, disk)] {
            if n == 0 {
                continue;
            }
            match tier {
                TierLabel::Host => &self.evictions_host,
                TierLabel::Disk => &self.evictions_disk,
            }
            .fetch_add(n as u64, Relaxed);
            metrics::counter!("kvmem_cache_evictions_total", "tier" => tier.name())
                .increment(n as u64);
        }
    }

    pub(crate) fn refused(&self) {
        self.admissions_refused.fetch_add(1, Relaxed);
        metrics::counter!("kvmem_cache_admissions_refused_total").increment(1);
    }

    pub(crate) fn corrupt(&self, n: usize) {
        self.corrupt.fetch_add(n as u64, Relaxed);
        metrics::counter!("kvmem_cache_corrupt_blocks_total").increment(n as u64);
    }

    pub(crate) fn disk_write_failed(&self, n: usize) {
        self.disk_write_failures.fetch_add(n as u64, Relaxed);
        metrics::counter!("kvmem_cache_disk_write_failures_total").increment(n as u64);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }
}

/// Counts one operation in flight for its lifetime and records its latency when dropped.
pub(crate) struct InFlight {
    op: &'static str,
    start: std::time::Instant,
}

impl InFlight {
    pub(crate) fn start(op: &'static str) -> Self {
        metrics::gauge!("kvmem_cache_ops_in_flight").increment(1.0);
        Self {
            op,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("kvmem_cache_ops_in_flight").decrement(1.0);
        metrics::histogram!("kvmem_cache_op_seconds", "op" => self.op)
            .record(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::test_recorder::Recorded;

    #[test]
    fn counters_reach_the_metrics_facade_and_the_snapshot() {
        let tally = Recorded::default();
        let c = Counters::default();
        metrics::with_local_recorder(&tally, || {
            c.lookup(10, 3, 2);
            c.bytes_in(TierLabel::Disk, 4096);
            c.evicted((1, 0));
            c.refused();
        });
        assert_eq!(tally.counter("kvmem_cache_lookups_total"), 1);
        assert_eq!(tally.counter("kvmem_cache_lookup_blocks_total"), 10);
        assert_eq!(tally.counter("kvmem_cache_hits_total,tier=host"), 3);
        assert_eq!(tally.counter("kvmem_cache_hits_total,tier=disk"), 2);
        assert_eq!(
            tally.counter("kvmem_cache_bytes_total,tier=disk,direction=in"),
            4096
        );
        assert_eq!(tally.counter("kvmem_cache_evictions_total,tier=host"), 1);
        assert_eq!(tally.counter("kvmem_cache_admissions_refused_total"), 1);
        let s = c.snapshot();
        assert_eq!(
            (s.lookups, s.hits_host, s.hits_disk, s.disk_bytes_in),
            (1, 3, 2, 4096)
        );
        assert_eq!((s.evictions_host, s.admissions_refused), (1, 1));
    }
}
