//! The GPU executor's staged paths: pageable host memory and files to and from the device
//! through two pinned bounce buffers, the CPU (memcpy) or the disk filling one while the GPU
//! drains the other.

// This module reads and writes pinned bounce buffers through raw pointers: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::super::disk::DiskLane;
use super::super::plan::{CopyOp, TransferPlan};
use super::Staged;
use crate::Completion;
use crate::cuda::batch::{CopyCompletion, CopyMethod, CopyStream, DeviceCopy, Location};
use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::Result;
use crate::kind::StorageKind;
use std::time::Instant;

/// Splits `ops` into pieces of at most `max` bytes and groups them into slabs of at most `max`
/// bytes each, so every slab fits one bounce buffer. Pieces keep the alignment of their ops when
/// `max` is a multiple of it.
pub(super) fn slabs(ops: &[CopyOp], max: usize) -> Vec<Vec<CopyOp>> {
    let mut out: Vec<Vec<CopyOp>> = Vec::new();
    let mut cur: Vec<CopyOp> = Vec::new();
    let mut used = 0;
    for op in ops {
        let mut done = 0;
        while done < op.len {
            let room = max - used;
            let len = (op.len - done).min(room);
            cur.push(CopyOp {
                src: op.src + done,
                dst: op.dst + done,
                len,
            });
            done += len;
            used += len;
            if used == max {
                out.push(std::mem::take(&mut cur));
                used = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Fills the bounce buffer `buf` from the staged side of `slab`, packed in order
/// (`into_bounce`), or writes its packed contents out to the staged side.
pub(super) fn stage(
    buf: &Buffer,
    slab: &[CopyOp],
    (side, disk): (Staged<'_>, &DiskLane),
    into_bounce: bool,
) -> Result<()> {
    let staged_addr = |op: &CopyOp| if into_bounce { op.src } else { op.dst };
    let ops = packed(slab, buf.addr(), staged_addr, !into_bounce);
    match side {
        Staged::Memory => {
            for op in &ops {
                // SAFETY: one end is a host range the plan validated and keeps alive (a source
                // nothing writes during the transfer, or a destination this transfer alone
                // writes, pairwise disjoint: the engine's contract); the other is the bounce
                // buffer, which holds the whole slab (`slabs` packs at most its size) and which
                // nothing else uses now: its last device copy and staging plan have finished.
                unsafe {
                    std::ptr::copy_nonoverlapping(op.src as *const u8, op.dst as *mut u8, op.len);
                }
            }
            Ok(())
        }
        Staged::File { kind, plan } => stage_through_disk(disk, kind, buf, ops, plan, !into_bounce),
    }
}

/// The copies between the file side of `slab` (offsets picked by `file`) and the slab packed
/// into a bounce buffer at `base`: bounce → file when `to_file`, else file → bounce.
pub(super) fn packed(
    slab: &[CopyOp],
    base: usize,
    file: impl Fn(&CopyOp) -> usize,
    to_file: bool,
) -> Vec<CopyOp> {
    let mut off = 0;
    slab.iter()
        .map(|op| {
            let staged = base + off;
            off += op.len;
            let (src, dst) = if to_file {
                (staged, file(op))
            } else {
                (file(op), staged)
            };
            CopyOp {
                src,
                dst,
                len: op.len,
            }
        })
        .collect()
}

/// Runs `ops` between the file of `disk_kind` and the bounce buffer as one host ↔ disk plan on
/// the engine's disk backend, and waits for it. The plan keeps the bounce buffer and every
/// buffer of the transfer's own `plan` (the file among them) alive.
pub(super) fn stage_through_disk(
    disk: &DiskLane,
    disk_kind: StorageKind,
    bounce: &Buffer,
    ops: Vec<CopyOp>,
    plan: &TransferPlan,
    to_file: bool,
) -> Result<()> {
    let mut keep_alive = plan.buffers().to_vec();
    keep_alive.push(bounce.clone());
    let kinds = if to_file {
        (bounce.storage_kind(), disk_kind)
    } else {
        (disk_kind, bounce.storage_kind())
    };
    let staging = TransferPlan::copies(kinds, ops, keep_alive)?;
    disk.submit(staging)?.wait().map(|_| ())
}

/// The device copies moving a packed bounce buffer at `base` to (or from) the slab's device side.
pub(super) fn bounce_copies(slab: &[CopyOp], base: u64, to_device: bool) -> Vec<DeviceCopy> {
    let mut off = 0u64;
    slab.iter()
        .map(|op| {
            let staged = base + off;
            off += op.len as u64;
            if to_device {
                DeviceCopy {
                    src: staged,
                    dst: op.dst as u64,
                    len: op.len as u64,
                }
            } else {
                DeviceCopy {
                    src: op.src as u64,
                    dst: staged,
                    len: op.len as u64,
                }
            }
        })
        .collect()
}

/// Host or disk → device through the two bounce buffers: the CPU fills one while the GPU drains
/// the other.
pub(super) fn staged_to_device(
    stream: &CopyStream,
    bufs: &[Buffer; 2],
    ops: &[CopyOp],
    from: (Staged<'_>, &DiskLane),
    (method, deadline): (CopyMethod, Instant),
    bounce_bytes: usize,
) -> Result<()> {
    let ordinal = stream.device().ordinal() as u32;
    // Every completion waits (and, dropped on an error, waits) until the transfer's deadline at
    // most: `until`.
    let mut pending: [Option<CopyCompletion>; 2] = [None, None];
    for (i, slab) in slabs(ops, bounce_bytes).iter().enumerate() {
        let k = i % 2;
        if let Some(c) = pending[k].take() {
            c.wait()?;
        }
        stage(&bufs[k], slab, from, true)?;
        let copies = bounce_copies(slab, bufs[k].addr() as u64, true);
        // SAFETY: sources are the bounce buffer (pinned, device-mapped, owned by this executor
        // and not touched again until this completion is waited for); destinations are device
        // ranges the plan validated and keeps alive, pairwise disjoint.
        pending[k] = Some(
            unsafe {
                stream.copy_async(&copies, method, Location::Host, Location::Device(ordinal))?
            }
            .until(deadline),
        );
    }
    for c in pending.into_iter().flatten() {
        c.wait()?;
    }
    Ok(())
}

/// Device → host or disk through the two bounce buffers: the GPU fills one while the CPU empties
/// the other.
pub(super) fn staged_from_device(
    stream: &CopyStream,
    bufs: &[Buffer; 2],
    ops: &[CopyOp],
    to: (Staged<'_>, &DiskLane),
    (method, deadline): (CopyMethod, Instant),
    bounce_bytes: usize,
) -> Result<()> {
    let ordinal = stream.device().ordinal() as u32;
    let all = slabs(ops, bounce_bytes);
    let mut prev: Option<(usize, CopyCompletion)> = None;
    for (i, slab) in all.iter().enumerate() {
        let k = i % 2;
        let copies = bounce_copies(slab, bufs[k].addr() as u64, false);
        // SAFETY: sources are device ranges the plan validated and keeps alive; the destination
        // is bounce buffer `k`, whose previous contents were written out in the last iteration
        // (slab i-2) and which nothing else touches until this completion is waited for.
        let c = unsafe {
            stream.copy_async(&copies, method, Location::Device(ordinal), Location::Host)?
        }
        .until(deadline);
        if let Some((j, done)) = prev.take() {
            done.wait()?;
            stage(&bufs[j % 2], &all[j], to, false)?;
        }
        prev = Some((i, c));
    }
    if let Some((j, done)) = prev {
        done.wait()?;
        stage(&bufs[j % 2], &all[j], to, false)?;
    }
    Ok(())
}
