//! Leak accounting: what kvmem holds right now, process-wide, so that a leak is something you
//! can see. [`snapshot`] returns the live NIXL-registered bytes per agent, the NIXL transfers in
//! flight, the buffers (and bytes) deliberately quarantined because a backend may still touch
//! them, the CUDA streams quarantined because they stalled, and the open disk-storage files.
//!
//! The same values go to the [`metrics`] facade (a no-op until the application installs a
//! recorder): gauges `kvmem_registered_bytes` (label `agent`), `kvmem_transfers_in_flight`,
//! `kvmem_quarantined_buffers`, `kvmem_quarantined_bytes`, `kvmem_quarantined_streams` and
//! `kvmem_open_disk_files`.
//!
//! After every operation has completed and every registration and file is dropped, a snapshot
//! returns to its baseline, except for the quarantined counts, which only grow: quarantined
//! memory is never freed for the rest of the process.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static QUARANTINED_BUFFERS: AtomicU64 = AtomicU64::new(0);
static QUARANTINED_BYTES: AtomicU64 = AtomicU64::new(0);
static QUARANTINED_STREAMS: AtomicU64 = AtomicU64::new(0);
static OPEN_FILES: AtomicU64 = AtomicU64::new(0);
static REGISTERED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// What kvmem holds at one moment. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes registered with NIXL, per agent name (agents with nothing registered are absent).
    pub registered_bytes: BTreeMap<String, u64>,
    /// NIXL transfer requests posted and not yet finished, failed, cancelled or dropped.
    pub in_flight_transfers: u64,
    /// Buffers kept alive for the rest of the process because a backend may still use them.
    pub quarantined_buffers: u64,
    /// The bytes of those buffers.
    pub quarantined_bytes: u64,
    /// CUDA copy streams left for good to work stalled on them (with their events, descriptor
    /// buffers and staging ring) after a transfer on them missed its deadline; the GPU executor
    /// goes on on a fresh stream.
    pub quarantined_streams: u64,
    /// Disk-storage files open ([`DiskStorage`](crate::DiskStorage) values alive).
    pub open_disk_files: u64,
}

impl Snapshot {
    /// Bytes `agent` has registered (0 when none).
    pub fn registered_bytes_of(&self, agent: &str) -> u64 {
        self.registered_bytes.get(agent).copied().unwrap_or(0)
    }
}

/// What kvmem holds now.
pub fn snapshot() -> Snapshot {
    Snapshot {
        registered_bytes: lock().clone(),
        in_flight_transfers: IN_FLIGHT.load(Ordering::SeqCst),
        quarantined_buffers: QUARANTINED_BUFFERS.load(Ordering::SeqCst),
        quarantined_bytes: QUARANTINED_BYTES.load(Ordering::SeqCst),
        quarantined_streams: QUARANTINED_STREAMS.load(Ordering::SeqCst),
        open_disk_files: OPEN_FILES.load(Ordering::SeqCst),
    }
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<String, u64>> {
    REGISTERED.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_registered(agent: &str, bytes: u64) {
    metrics::gauge!("kvmem_registered_bytes", "agent" => agent.to_owned()).set(bytes as f64);
}

/// `agent` registered `bytes` more.
pub(crate) fn registered(agent: &str, bytes: u64) {
    let mut map = lock();
    let total = map.entry(agent.to_owned()).or_default();
    *total += bytes;
    set_registered(agent, *total);
}

/// `agent` deregistered `bytes`.
pub(crate) fn deregistered(agent: &str, bytes: u64) {
    let mut map = lock();
    let left = match map.get_mut(agent) {
        Some(total) => {
            *total = total.saturating_sub(bytes);
            *total
        }
        None => 0,
    };
    if left == 0 {
        map.remove(agent);
    }
    set_registered(agent, left);
}

/// A NIXL transfer was posted.
pub(crate) fn transfer_started() {
    let n = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    metrics::gauge!("kvmem_transfers_in_flight").set(n as f64);
}

/// A NIXL transfer finished, failed, was cancelled or dropped.
pub(crate) fn transfer_ended() {
    let n = IN_FLIGHT
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            Some(n.saturating_sub(1))
        })
        .map_or(0, |prev| prev.saturating_sub(1));
    metrics::gauge!("kvmem_transfers_in_flight").set(n as f64);
}

/// `buffers` buffers of `bytes` bytes in all were quarantined (kept alive for good).
pub(crate) fn quarantined(buffers: u64, bytes: u64) {
    let b = QUARANTINED_BUFFERS.fetch_add(buffers, Ordering::SeqCst) + buffers;
    let n = QUARANTINED_BYTES.fetch_add(bytes, Ordering::SeqCst) + bytes;
    metrics::gauge!("kvmem_quarantined_buffers").set(b as f64);
    metrics::gauge!("kvmem_quarantined_bytes").set(n as f64);
}

/// One more CUDA stream was quarantined (never destroyed, nor its resources freed).
pub(crate) fn stream_quarantined() {
    let n = QUARANTINED_STREAMS.fetch_add(1, Ordering::SeqCst) + 1;
    metrics::gauge!("kvmem_quarantined_streams").set(n as f64);
}

/// One open disk-storage file, counted while the value lives.
#[derive(Debug)]
pub(crate) struct OpenFile(());

impl OpenFile {
    /// Counts one more open file.
    pub(crate) fn new() -> Self {
        let n = OPEN_FILES.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!("kvmem_open_disk_files").set(n as f64);
        Self(())
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let n = OPEN_FILES
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            })
            .map_or(0, |prev| prev.saturating_sub(1));
        metrics::gauge!("kvmem_open_disk_files").set(n as f64);
    }
}

/// A `metrics` recorder for unit tests (here and in other modules'): the value of every counter
/// and gauge registered while it is installed, by name and labels.
#[cfg(test)]
pub(crate) mod test_recorder {
    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};

    /// Counters and gauges by `name,label=value,…` (labels in the order given).
    #[derive(Default)]
    pub(crate) struct Recorded {
        counters: Mutex<BTreeMap<String, Arc<Count>>>,
        gauges: Mutex<BTreeMap<String, Arc<Value>>>,
    }

    #[derive(Default)]
    struct Count(AtomicU64);

    #[derive(Default)]
    struct Value(Mutex<f64>);

    impl metrics::CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Relaxed);
        }
    }

    impl metrics::GaugeFn for Value {
        fn increment(&self, v: f64) {
            *self.0.lock().unwrap() += v;
        }
        fn decrement(&self, v: f64) {
            *self.0.lock().unwrap() -= v;
        }
        fn set(&self, v: f64) {
            *self.0.lock().unwrap() = v;
        }
    }

    impl Recorded {
        /// The counter's total; 0 for one never registered.
        pub(crate) fn counter(&self, name: &str) -> u64 {
            let map = self.counters.lock().unwrap();
            map.get(name).map_or(0, |c| c.0.load(Relaxed))
        }

        /// The gauge's last value; `None` for one never registered.
        pub(crate) fn gauge(&self, name: &str) -> Option<f64> {
            let map = self.gauges.lock().unwrap();
            map.get(name).map(|v| *v.0.lock().unwrap())
        }
    }

    fn labelled(key: &Key) -> String {
        let mut name = key.name().to_string();
        for l in key.labels() {
            name += &format!(",{}={}", l.key(), l.value());
        }
        name
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut map = self.counters.lock().unwrap();
            Counter::from_arc(Arc::clone(map.entry(labelled(key)).or_default()))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            let mut map = self.gauges.lock().unwrap();
            Gauge::from_arc(Arc::clone(map.entry(labelled(key)).or_default()))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_recorder::Recorded;
    use super::*;

    #[test]
    fn the_counts_reach_the_metrics_facade() {
        let gauges = Recorded::default();
        let agent = "accounting-metrics-test-agent";
        metrics::with_local_recorder(&gauges, || {
            registered(agent, 8192);
            let key = format!("kvmem_registered_bytes,agent={agent}");
            assert_eq!(gauges.gauge(&key), Some(8192.0));
            deregistered(agent, 8192);
            assert_eq!(gauges.gauge(&key), Some(0.0));
            let file = OpenFile::new();
            assert!(
                gauges
                    .gauge("kvmem_open_disk_files")
                    .is_some_and(|n| n >= 1.0)
            );
            drop(file);
            transfer_started();
            assert!(
                gauges
                    .gauge("kvmem_transfers_in_flight")
                    .is_some_and(|n| n >= 1.0)
            );
            transfer_ended();
        });
    }

    #[test]
    fn registered_bytes_per_agent_return_to_absent() {
        let agent = "accounting-unit-test-agent";
        registered(agent, 4096);
        registered(agent, 100);
        assert_eq!(snapshot().registered_bytes_of(agent), 4196);
        deregistered(agent, 4096);
        assert_eq!(snapshot().registered_bytes_of(agent), 100);
        deregistered(agent, 100);
        assert!(!snapshot().registered_bytes.contains_key(agent));
    }
}
