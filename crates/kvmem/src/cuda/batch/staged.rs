//! [`CopyMethod::Staged`](super::CopyMethod::Staged): copies between scattered device memory
//! and pinned host memory through a ring of device staging slots.
//!
//! Gather (device → host): the copy kernel packs a slot's worth of device chunks into the slot
//! (device to device: short, so the SMs are busy for microseconds, not for the whole transfer),
//! then the copy engines move the slot to the host with one DMA per contiguous host run; the
//! kernel packs the next slot meanwhile. Scatter (host → device) is the reverse: DMA into a slot,
//! then the kernel spreads it over the device chunks. The kernel runs on a stream of its own, the
//! DMAs on the copy stream; events order each slot's kernel and DMA, and a slot is reused only
//! after its previous DMA (gather) or kernel (scatter) is done.

use super::DescBuffers;
use super::shape::Shape;
use super::{CopyStream, DeviceCopy, Location, split_for_kernel};
use crate::cuda::driver;
use crate::error::{BoundsError, Error, Result, UnsupportedError};
use cudarc::driver::{CudaEvent, CudaFunction, CudaStream, result};

/// The default size of a copy stream's staging ring (device memory, allocated on the first
/// staged transfer): eight slots of 32 MiB. On the H200 (docs/PERFORMANCE.md) it moved 1 GiB
/// offloads of 32 KiB chunks at 0.97x of one large copy where a 64 MiB ring of 8 MiB slots
/// moved them at 0.95-0.96x: larger slots mean fewer DMAs, and a ring that holds more of the
/// transfer rides out longer waits of the packing kernel for a multiprocessor beside an
/// engine's kernels.
pub const DEFAULT_STAGING_BYTES: usize = 256 << 20;
/// After the ring's allocation failed, how long `Auto` uses the kernel before trying again.
pub(super) const RING_RETRY: std::time::Duration = std::time::Duration::from_secs(10);
/// Slots per ring: one moves while the others are packed.
const RING_SLOTS: usize = 8;
/// Slots are whole MiB, at least one.
const SLOT_UNIT: u64 = 1 << 20;

/// The slot size of a ring of `bytes`: an eighth of it, in whole MiB, at least 1 MiB.
pub(super) fn slot_bytes_for(bytes: usize) -> u64 {
    ((bytes as u64 / RING_SLOTS as u64) / SLOT_UNIT).max(1) * SLOT_UNIT
}

/// The smallest transfer [`suits`] sends to the staged method.
const SUITS_MIN_BYTES: u64 = 16 << 20;
/// Transfers of at least this many bytes are staged whatever their copy size; smaller ones only
/// when their copies average [`SUITS_MIN_AVG`] or more. On the H200 (docs/PERFORMANCE.md) the
/// staged method beat the copy kernel on 1 GiB offloads and onboards of 4-32 KiB chunks and on
/// 64 MiB transfers of 64 KiB-1 MiB chunks, and lost to it on 64 MiB of scattered 4 and 16 KiB
/// chunks, where its fixed costs (host ordering, filling and draining the pipeline) weigh more.
const SUITS_ANY_AVG_BYTES: u64 = 256 << 20;
/// See [`SUITS_ANY_AVG_BYTES`].
const SUITS_MIN_AVG: u64 = 64 << 10;

/// True when `Auto` should stage a list of this shape rather than run it on the copy kernel:
/// one side on the device and the other on the host, at least [`SUITS_MIN_BYTES`] (and
/// [`SUITS_ANY_AVG_BYTES`] unless the copies average [`SUITS_MIN_AVG`]), and the host ranges
/// adding up to the run from the lowest to the highest address (one run, unless sources
/// overlap), so that a slot moves in one or a few DMAs. A heuristic of speed only: any list
/// stages correctly.
pub(super) fn suits(shape: &Shape, src: Location, dst: Location) -> bool {
    if !matches!(
        (src, dst),
        (Location::Device(_), Location::Host) | (Location::Host, Location::Device(_))
    ) {
        return false;
    }
    let total = shape.total;
    if total < SUITS_MIN_BYTES || (total < SUITS_ANY_AVG_BYTES && shape.average() < SUITS_MIN_AVG) {
        return false;
    }
    shape.host_is_one_run()
}

/// Where the staged method may join adjoining host ranges into one DMA (one CUDA copy must not
/// cross two page-lock registrations or two allocations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostJoins {
    /// Anywhere except at these host addresses (sorted).
    Except(Vec<u64>),
    /// Nowhere: what the host memory is made of is not known. `Auto` then does not stage.
    Nowhere,
}

impl HostJoins {
    /// True when a host range may be joined to the one that ends at `at`.
    pub(super) fn allow(&self, at: u64) -> bool {
        match self {
            Self::Except(cuts) => cuts.is_empty() || cuts.binary_search(&at).is_err(),
            Self::Nowhere => false,
        }
    }
}

/// One slot's worth of a staged transfer, as [`pack`] hands it out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slab<'a> {
    /// The staging slot it uses.
    pub(super) slot: usize,
    /// Its device-side copies (into the slot for a gather, out of it for a scatter), not yet
    /// split for the kernel.
    pub(super) device_side: &'a [DeviceCopy],
    /// Its DMA copies between the slot and the host (adjacent host ranges merged).
    pub(super) dma: &'a [DeviceCopy],
}

/// A copy list in the order of its host addresses, as [`in_host_order`] finds it.
pub(super) enum HostOrder<'a> {
    /// The list came in that order.
    Listed(&'a [DeviceCopy]),
    /// `copies[at[k]]` is the `k`-th in host order.
    Placed {
        /// The list.
        copies: &'a [DeviceCopy],
        /// Its order.
        at: &'a [u32],
    },
    /// The list, sorted.
    Sorted(Vec<DeviceCopy>),
}

impl HostOrder<'_> {
    /// Copies in the list.
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Listed(c) | Self::Placed { copies: c, .. } => c.len(),
            Self::Sorted(v) => v.len(),
        }
    }

    /// The `k`-th copy in host order.
    pub(super) fn get(&self, k: usize) -> &DeviceCopy {
        match self {
            Self::Listed(c) => &c[k],
            Self::Placed { copies, at } => &copies[at[k] as usize],
            Self::Sorted(v) => &v[k],
        }
    }
}

/// `copies` (of shape `shape`, whose host side it orders by) in the order of their host
/// addresses. Free when they come in that order; when every copy has the same length and their
/// host ranges tile one run (an engine's offload or onboard of whole chunks, listed in device
/// order), each one's place is found in one pass, in `scratch` (kept by the caller, so that a
/// large list's order costs no fresh memory: on the H200 machine, building a reordered copy of a
/// 65,536-copy onboard held its first DMA back by about 1 ms); otherwise sorted.
pub(super) fn in_host_order<'a>(
    copies: &'a [DeviceCopy],
    shape: &Shape,
    scratch: &'a mut Vec<u32>,
) -> HostOrder<'a> {
    let Some(host) = shape.host else {
        return HostOrder::Listed(copies);
    };
    if host.ordered {
        return HostOrder::Listed(copies);
    }
    if placed(copies, shape, scratch) {
        return HostOrder::Placed {
            copies,
            at: scratch,
        };
    }
    let mut v = copies.to_vec();
    v.sort_unstable_by_key(|c| host.of(c));
    HostOrder::Sorted(v)
}

/// Fills `at` with the order of `copies` by host address when they have one length and their
/// host ranges tile `[lo, lo + n * len)` exactly (each position taken once); false otherwise.
fn placed(copies: &[DeviceCopy], shape: &Shape, at: &mut Vec<u32>) -> bool {
    let (len, n) = (shape.shortest, copies.len());
    let Some(host) = shape.host else {
        return false;
    };
    if len == 0
        || len != shape.longest
        || n >= u32::MAX as usize
        || host.hi.saturating_sub(host.lo) != shape.total
    {
        return false;
    }
    at.clear();
    at.resize(n, u32::MAX);
    // Chunk lengths are powers of two in practice: a shift and a mask instead of a division.
    let shift = len.is_power_of_two().then(|| len.trailing_zeros());
    for (i, c) in copies.iter().enumerate() {
        let off = host.of(c) - host.lo;
        let (k, rem) = match shift {
            Some(s) => (off >> s, off & (len - 1)),
            None => (off / len, off % len),
        };
        match usize::try_from(k).ok().and_then(|k| at.get_mut(k)) {
            Some(slot) if rem == 0 && *slot == u32::MAX => *slot = i as u32,
            _ => return false,
        }
    }
    // `n` copies took `n` distinct positions: a permutation, in host order.
    true
}

/// Splits `copies` (in host order) into slabs of `slot_bytes` staged in `slots` slots at `base` (slot `k` at
/// `base + k * slot_bytes`) and hands each to `emit` as soon as it is full, so the caller can
/// start moving it while the rest is packed: for a gather, the kernel copies device sources into
/// the slot and the DMAs copy the slot to the host destinations; for a scatter, the DMAs copy
/// host sources into the slot and the kernel copies the slot to the device destinations. Copies
/// are packed in order of their host addresses, split where a slot fills, so that adjacent host
/// ranges become one DMA whatever order the list came in (an onboard's list follows the device
/// side: one DMA per chunk otherwise, about 1 µs of CPU each). Destinations never overlap, so
/// the order of the copies does not change the result. Host ranges are joined only where
/// `joins` allows (not across page-lock registrations or allocations). Stops at `emit`'s first
/// error.
pub(super) fn pack<E>(
    copies: &HostOrder<'_>,
    gather: bool,
    (base, slot_bytes, slots): (u64, u64, usize),
    joins: &HostJoins,
    mut emit: impl FnMut(Slab<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let slots = slots.max(1) as u64;
    let slot_bytes = slot_bytes.max(1);
    let mut device_side: Vec<DeviceCopy> = Vec::new();
    let mut dma: Vec<DeviceCopy> = Vec::new();
    let mut used = 0u64;
    let mut slab = 0u64;
    let mut close =
        |device_side: &mut Vec<DeviceCopy>, dma: &mut Vec<DeviceCopy>, slab: &mut u64| {
            let out = emit(Slab {
                slot: (*slab % slots) as usize,
                device_side,
                dma,
            });
            device_side.clear();
            dma.clear();
            *slab += 1;
            out
        };
    for k in 0..copies.len() {
        let c = copies.get(k);
        let mut done = 0;
        while done < c.len {
            let n = (c.len - done).min(slot_bytes - used);
            let staged = base + (slab % slots) * slot_bytes + used;
            let (device, host) = if gather {
                (c.src + done, c.dst + done)
            } else {
                (c.dst + done, c.src + done)
            };
            let (on_device, on_host) = if gather {
                (copy(device, staged, n), copy(staged, host, n))
            } else {
                (copy(staged, device, n), copy(host, staged, n))
            };
            device_side.push(on_device);
            match dma.last_mut() {
                Some(last)
                    if last.src + last.len == on_host.src
                        && last.dst + last.len == on_host.dst
                        && joins.allow(host) =>
                {
                    last.len += n;
                }
                _ => dma.push(on_host),
            }
            used += n;
            done += n;
            if used == slot_bytes {
                close(&mut device_side, &mut dma, &mut slab)?;
                used = 0;
            }
        }
    }
    if used > 0 {
        close(&mut device_side, &mut dma, &mut slab)?;
    }
    Ok(())
}

fn copy(src: u64, dst: u64, len: u64) -> DeviceCopy {
    DeviceCopy { src, dst, len }
}

/// The most kernel descriptors [`pack`] with `split_for_kernel` can make of a list of shape
/// `shape` in slots of `slot_bytes`: a copy splits into pieces of at least `KERNEL_MIN_PIECE`,
/// and once more where a slot fills.
fn descriptor_bound(shape: &Shape, slot_bytes: u64) -> usize {
    let slabs = shape.total.div_ceil(slot_bytes.max(1));
    usize::try_from(shape.pieces.saturating_add(slabs)).unwrap_or(usize::MAX)
}

/// The device staging ring of a copy stream (`slots * slot_bytes` from `cuMemAlloc`, freed on
/// drop), with the stream its kernels run on: created with the device's greatest priority, so
/// that its short packing kernels get multiprocessors ahead of an engine's queued kernels as
/// soon as one frees up.
pub(super) struct Ring {
    memory: u64,
    slot_bytes: u64,
    slots: usize,
    kernel_stream: std::sync::Arc<CudaStream>,
    /// The host order of the transfer being packed ([`in_host_order`]), kept between transfers.
    order: Vec<u32>,
}

impl Ring {
    /// Allocates a ring of [`RING_SLOTS`] slots of `slot_bytes` and creates its kernel stream in
    /// `ctx` (bound by the caller).
    fn new(ctx: &std::sync::Arc<cudarc::driver::CudaContext>, slot_bytes: u64) -> Result<Self> {
        let slots = RING_SLOTS;
        let bytes = usize::try_from(slot_bytes)
            .ok()
            .and_then(|b| b.checked_mul(slots))
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "staging ring size",
            }))?;
        let (_, greatest) = result::stream::get_priority_range()
            .map_err(|e| driver::error("query the stream priorities", e))?;
        let kernel_stream = ctx
            .new_stream_with_priority(greatest)
            .map_err(|e| driver::error("create the staging kernel's stream", e))?;
        // SAFETY: a plain allocation in the bound context, owned by the value built below and
        // freed in its Drop.
        let memory = unsafe { result::malloc_sync(bytes) }
            .map_err(|e| driver::error("allocate the staging ring (cuMemAlloc)", e))?;
        Ok(Self {
            memory,
            slot_bytes,
            slots,
            kernel_stream,
            order: Vec::new(),
        })
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Dropped with its copy stream (whose context the stream's drop binds first); the slots
        // are freed only once no kernel or DMA can still use them.
        let idle = self.kernel_stream.synchronize();
        match idle {
            // SAFETY: `memory` came from `malloc_sync` in `new` and is freed once, here; the
            // kernel stream is idle, and every DMA on the copy stream that used a slot was
            // waited for by the copy stream's drop (which runs first) or its completions.
            Ok(()) => driver::log_failure("free the staging ring", unsafe {
                result::free_sync(self.memory)
            }),
            Err(e) => driver::log_failure("wait for the staging kernels (ring leaked)", Err(e)),
        }
    }
}

impl CopyStream {
    /// Enqueues `copies` staged through the ring (gather for device → host, scatter for
    /// host → device; other pairs need no staging and go to the kernel directly).
    /// `descs` receives the descriptor buffers, to be kept until the transfer's completion.
    ///
    /// The caller (`copy_async`) upholds the ranges' contract.
    pub(super) fn enqueue_staged(
        &self,
        (copies, shape): (&[DeviceCopy], &Shape),
        src: Location,
        dst: Location,
        joins: &HostJoins,
        descs: &mut Option<DescBuffers>,
    ) -> Result<()> {
        let gather = match (src, dst) {
            (Location::Device(_), Location::Host) => true,
            (Location::Host, Location::Device(_)) => false,
            _ => return self.enqueue_kernel(copies, shape, descs),
        };
        let inner = &self.inner;
        let Some(kernel) = &inner.kernel else {
            return Err(Error::Unsupported(UnsupportedError::Feature {
                what: "the copy kernel did not load".into(),
            }));
        };
        // One staged transfer at a time uses the ring (the lock is held while enqueueing; the
        // GPU-side order between transfers comes from the events below).
        let mut ring = self.lock_ring()?;
        let Some(ring) = ring.as_mut() else {
            return Err(Error::Unsupported(UnsupportedError::Feature {
                what: "the staging ring could not be set up".into(),
            }));
        };
        let enqueued = self.enqueue_through(ring, kernel, (copies, shape, joins), gather, descs);
        if enqueued.is_err() {
            // Kernels enqueued before the error must finish before the caller may free the
            // memory they use: make the copy stream wait for them, so that its completion (and
            // its deadline) covers them; only if that cannot be enqueued, wait here.
            let covered = ring
                .kernel_stream
                .record_event(None)
                .and_then(|e| inner.stream.wait(&e));
            if covered.is_err() {
                driver::log_failure(
                    "synchronize the staging kernel's stream",
                    ring.kernel_stream.synchronize(),
                );
            }
        }
        enqueued
    }

    /// The staging ring, locked, allocated first if this stream has none yet (the caller binds
    /// the context).
    fn lock_ring(&self) -> Result<std::sync::MutexGuard<'_, Option<Ring>>> {
        let inner = &self.inner;
        let mut ring = inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.is_none() {
            *ring = Some(Ring::new(
                inner.device.context(),
                slot_bytes_for(inner.staging_bytes),
            )?);
        }
        Ok(ring)
    }

    /// Ok once the staging ring is allocated (allocating it now if needed): `Auto` falls back
    /// to the copy kernel when the device has no memory left for it. After a failure, the
    /// allocation is tried again only [`RING_RETRY`] later, so a full GPU costs one attempt
    /// (and one warning) per interval, not one per transfer.
    pub(super) fn staging_ring_ready(&self) -> Result<()> {
        let mut failed = self
            .inner
            .ring_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(at) = *failed
            && at.elapsed() < RING_RETRY
        {
            return Err(Error::Unsupported(UnsupportedError::Feature {
                what: "the staging ring (its allocation failed moments ago)".into(),
            }));
        }
        let ready = self.lock_ring().map(drop);
        *failed = ready.is_err().then(std::time::Instant::now);
        ready
    }

    /// Packs and enqueues slab by slab: the first slot moves while the rest of the list is
    /// still being packed, so the CPU's work overlaps the GPU's.
    fn enqueue_through(
        &self,
        ring: &mut Ring,
        kernel: &CudaFunction,
        (copies, shape, joins): (&[DeviceCopy], &Shape, &HostJoins),
        gather: bool,
        descs: &mut Option<DescBuffers>,
    ) -> Result<()> {
        let inner = &self.inner;
        let sm_count = inner.sm_count;
        let main = &inner.stream;
        let ks = &ring.kernel_stream;
        let event = |stream: &CudaStream| -> Result<CudaEvent> {
            stream
                .record_event(None)
                .map_err(|e| driver::error("record a staging event", e))
        };
        let wait = |stream: &CudaStream, e: &CudaEvent| -> Result<()> {
            stream
                .wait(e)
                .map_err(|e| driver::error("order the staging streams", e))
        };
        // Whatever the copy stream did before (an earlier staged transfer's DMAs from the
        // slots among it) is done before this transfer's kernels touch a slot.
        wait(ks, &event(main)?)?;
        // When the first slot's DMA was enqueued, for `RUST_LOG=kvmem=debug`.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let mut first_slot = None;
        let d = self.take_descs(descriptor_bound(shape, ring.slot_bytes))?;
        let (dev, host, capacity) = (d.dev, d.host, d.capacity);
        *descs = Some(d);
        let size = std::mem::size_of::<DeviceCopy>();
        // Per slot: the event after its last use by the other stream.
        let mut freed: Vec<Option<CudaEvent>> = (0..ring.slots).map(|_| None).collect();
        let mut written = 0usize;
        let in_place = inner.host_pointers_are_device_pointers;
        let geometry = (ring.memory, ring.slot_bytes, ring.slots);
        pack(
            &in_host_order(copies, shape, &mut ring.order),
            gather,
            geometry,
            joins,
            |slab| {
                let slab_shape = Shape::of(slab.device_side, None);
                let pieces = split_for_kernel(slab.device_side, &slab_shape, sm_count);
                let n = pieces.len();
                if written + n > capacity {
                    return Err(Error::Bounds(BoundsError::Overflow {
                        what: "staged copy descriptors",
                    }));
                }
                // SAFETY: `host` is a pinned allocation of `capacity` entries (checked just above)
                // owned by the completion; entries from `written` on were never handed to the GPU,
                // and earlier ones are not touched again.
                let entries = unsafe {
                    let at = host.add(written);
                    std::ptr::copy_nonoverlapping(pieces.as_ptr(), at, n);
                    std::slice::from_raw_parts(at.cast_const(), n)
                };
                // Where the kernel reads them: in place, through the pinned buffer's device
                // mapping, when host pointers are device pointers here (no upload then: an
                // upload is a copy on the kernel's stream, which waits behind the slot's DMAs
                // on the copy engines in a scatter, and behind the engine's kernels with the
                // launch before it); else a copy in the device buffer, uploaded first.
                let (at, upload) = if in_place {
                    (entries.as_ptr() as u64, false)
                } else {
                    (dev + (written * size) as u64, n > 0)
                };
                written += n;
                if upload {
                    // SAFETY: the device buffer holds `capacity >= written` entries; the pinned
                    // entries stay untouched until the completion has finished, after the upload.
                    unsafe { result::memcpy_htod_async(at, entries, ks.cu_stream()) }
                        .map_err(|e| driver::error("upload copy descriptors", e))?;
                }
                let launch = |stream: &CudaStream| -> Result<()> {
                    if n == 0 {
                        return Ok(());
                    }
                    // SAFETY: the slab's descriptors are in pinned memory the device reads in
                    // place, or were uploaded on this stream before; either stays untouched until
                    // the completion has finished. They name device ranges of the transfer
                    // (valid per `copy_async`'s contract) and a range of the slot, which this
                    // transfer alone uses now (ring lock, and the events order its reuse).
                    unsafe { self.launch_copy_kernel(kernel, at, n, stream.cu_stream()) }
                };
                if gather {
                    if let Some(e) = freed[slab.slot].take() {
                        wait(ks, &e)?;
                    }
                    launch(ks)?;
                    wait(main, &event(ks)?)?;
                    self.enqueue_dma(slab.dma, gather)?;
                    freed[slab.slot] = Some(event(main)?);
                } else {
                    if let Some(e) = freed[slab.slot].take() {
                        wait(main, &e)?;
                    }
                    self.enqueue_dma(slab.dma, gather)?;
                    wait(ks, &event(main)?)?;
                    launch(ks)?;
                    freed[slab.slot] = Some(event(ks)?);
                }
                if first_slot.is_none() {
                    first_slot = started.map(|t| t.elapsed());
                }
                Ok(())
            },
        )?;
        // The transfer's completion is recorded on the copy stream: make it include the kernels.
        wait(main, &event(ks)?)?;
        if let (Some(t), Some(first)) = (started, first_slot) {
            tracing::debug!(
                first_slot_us = first.as_secs_f64() * 1e6,
                all_slots_us = t.elapsed().as_secs_f64() * 1e6,
                "staged slots enqueued"
            );
        }
        Ok(())
    }
    /// The DMA copies of one slab on the copy stream: batched when the driver offers it and
    /// there are several, else one `cuMemcpyAsync` each.
    fn enqueue_dma(&self, dma: &[DeviceCopy], gather: bool) -> Result<()> {
        if dma.len() > 1 && self.inner.batch_supported {
            let device = Location::Device(self.inner.device.kind_id());
            let (src, dst) = if gather {
                (device, Location::Host)
            } else {
                (Location::Host, device)
            };
            self.enqueue_batched(dma, src, dst)
        } else {
            self.enqueue_per_copy(dma)
        }
    }
}

#[cfg(test)]
#[path = "staged_tests.rs"]
mod tests;
