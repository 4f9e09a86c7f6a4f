//! Bad transfer requests fail with typed errors before any byte moves: each test poisons the
//! destination, makes a bad request, and checks both the error and that the poison is intact.

mod common;

use common::{Tier, random_region, read_region};
use kvmem::Completion;
use kvmem::error::{
    BoundsError, CudaError, IoError, LayoutError, NixlError, SizeRule, TransferError,
    UnsupportedError,
};
use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine};
use kvmem::{Buffer, Error, ExternalDeviceMemory, StorageKind};
use rand::SeedableRng;
use rand::rngs::StdRng;

const CONFIG: LayoutConfig = LayoutConfig {
    num_blocks: 8,
    num_layers: 2,
    outer_dim: 2,
    page_size: 1,
    inner_dim: 1024,
    dtype_bytes: 4,
};

struct Fixture {
    engine: TransferEngine,
    rng: StdRng,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            engine: TransferEngine::new(EngineConfig::default()).unwrap(),
            rng: StdRng::seed_from_u64(5),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A layout over random (poisoned) regions, with the regions' initial contents.
    fn layout(
        &mut self,
        tier: Tier,
        kind: LayoutKind,
        config: LayoutConfig,
        align: usize,
    ) -> (BlockLayout, Vec<Vec<u8>>) {
        let (count, bytes) = config.regions(kind).unwrap();
        let (regions, images): (Vec<Buffer>, Vec<Vec<u8>>) = (0..count)
            .map(|_| random_region(tier, bytes, 0, self.dir.path(), &mut self.rng))
            .unzip();
        (
            BlockLayout::new(config, kind, regions, align).unwrap(),
            images,
        )
    }
}

fn assert_untouched(layout: &BlockLayout, images: &[Vec<u8>]) {
    for (region, image) in layout.regions().iter().zip(images) {
        assert!(
            read_region(region) == *image,
            "destination was written by a refused request"
        );
    }
}

/// The side, id and layout size of a block id out of range; `None` for any other error.
fn out_of_range(err: &Error) -> Option<(&'static str, usize, usize)> {
    match *err {
        Error::Layout(LayoutError::BlockOutOfRange {
            side,
            block,
            num_blocks,
        }) => Some((side, block, num_blocks)),
        _ => None,
    }
}

/// Bad block lists between `src` and `dst` (layouts of `CONFIG`): each refused with its error.
fn assert_bad_block_lists_refused(
    e: &TransferEngine,
    src: &BlockLayout,
    dst: &BlockLayout,
    ctx: &str,
) {
    let err = e.copy_blocks(src, &[0, 8], dst, &[0, 1]).unwrap_err();
    assert_eq!(out_of_range(&err), Some(("source", 8, 8)), "{ctx}: {err}");
    let err = e
        .copy_blocks(src, &[0, 1], dst, &[0, usize::MAX])
        .unwrap_err();
    assert_eq!(
        out_of_range(&err).map(|(side, ..)| side),
        Some("destination"),
        "{ctx}: {err}"
    );
    let err = e.copy_blocks(src, &[0, 1, 2], dst, &[0, 1]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Layout(LayoutError::BlockCountMismatch { src: 3, dst: 2 })
        ),
        "{ctx}: {err}"
    );
    let err = e.copy_blocks(src, &[0, 1], dst, &[4, 4]).unwrap_err();
    assert!(
        matches!(err, Error::Layout(LayoutError::DuplicateBlock { block: 4 })),
        "{ctx}: {err}"
    );
}

/// Waits for a copy of blocks that must succeed; its byte count.
fn copied(
    e: &TransferEngine,
    src: &BlockLayout,
    s: &[usize],
    dst: &BlockLayout,
    d: &[usize],
) -> usize {
    e.copy_blocks(src, s, dst, d).unwrap().wait().unwrap().bytes
}

#[test]
fn bad_block_lists_are_refused() {
    let mut f = Fixture::new();
    let (src, _) = f.layout(Tier::Host, LayoutKind::FullyContiguous, CONFIG, 4096);
    for dst_tier in [Tier::Host, Tier::Disk] {
        let (dst, poison) = f.layout(
            dst_tier,
            LayoutKind::LayerSeparate(BlockDim::Second),
            CONFIG,
            4096,
        );
        assert_bad_block_lists_refused(&f.engine, &src, &dst, &format!("host -> {dst_tier:?}"));
        assert_untouched(&dst, &poison);
    }
}

#[test]
fn mismatched_layouts_and_small_destinations_are_refused() {
    let mut f = Fixture::new();
    let (src, _) = f.layout(Tier::Host, LayoutKind::FullyContiguous, CONFIG, 4096);
    // Destinations that differ from `src` in one dimension each: refused, and left untouched.
    type Refused = fn(&Error) -> bool;
    let mismatches: [(Tier, LayoutKind, LayoutConfig, usize, Refused); 3] = [
        (
            Tier::Host,
            LayoutKind::FullyContiguous,
            LayoutConfig {
                inner_dim: 512,
                ..CONFIG
            },
            1024,
            |e| {
                matches!(
                    e,
                    Error::Layout(LayoutError::Mismatch {
                        what: "chunk size",
                        src: 4096,
                        dst: 2048
                    })
                )
            },
        ),
        (
            Tier::Disk,
            LayoutKind::FullyContiguous,
            LayoutConfig {
                num_layers: 1,
                ..CONFIG
            },
            4096,
            |e| {
                matches!(
                    e,
                    Error::Layout(LayoutError::Mismatch { what: "layers", .. })
                )
            },
        ),
        (
            Tier::Host,
            LayoutKind::LayerSeparate(BlockDim::First),
            LayoutConfig {
                outer_dim: 1,
                ..CONFIG
            },
            4096,
            |e| {
                matches!(
                    e,
                    Error::Layout(LayoutError::Mismatch {
                        what: "outer dimension",
                        ..
                    })
                )
            },
        ),
    ];
    for (tier, kind, config, align, refused) in mismatches {
        let (dst, poison) = f.layout(tier, kind, config, align);
        let err = f.engine.copy_blocks(&src, &[0], &dst, &[0]).unwrap_err();
        assert!(refused(&err), "{tier:?}/{kind}: {err}");
        assert_untouched(&dst, &poison);
    }

    // A region copy into a smaller destination.
    let (big, _) = random_region(Tier::Host, 8192, 0, f.dir.path(), &mut f.rng);
    for tier in [Tier::Host, Tier::Disk] {
        let (small, poison) = random_region(tier, 4096, 0, f.dir.path(), &mut f.rng);
        assert!(matches!(
            f.engine.copy_region(&big, &small),
            Err(Error::Bounds(BoundsError::SizeMismatch {
                src: 8192,
                dst: 4096,
                rule: SizeRule::AtLeast,
                ..
            }))
        ));
        assert!(read_region(&small) == poison);
    }
}

#[test]
fn overlapping_copies_are_refused() {
    let mut f = Fixture::new();
    let (layout, poison) = f.layout(Tier::Host, LayoutKind::FullyContiguous, CONFIG, 1);
    // Within one layout: disjoint blocks are fine, a block onto itself or a neighbour in the same
    // request is not.
    assert!(matches!(
        f.engine.copy_blocks(&layout, &[1, 2], &layout, &[2, 3]),
        Err(Error::Bounds(BoundsError::OverlappingCopy { .. }))
    ));
    assert_untouched(&layout, &poison);
    // Two layer regions that are the same memory: destination chunks alias.
    let c = LayoutConfig {
        num_layers: 2,
        ..CONFIG
    };
    let (_, bytes) = c
        .regions(LayoutKind::LayerSeparate(BlockDim::First))
        .unwrap();
    let (shared, shared_image) = random_region(Tier::Host, bytes, 0, f.dir.path(), &mut f.rng);
    let aliased = BlockLayout::new(
        c,
        LayoutKind::LayerSeparate(BlockDim::First),
        vec![shared.clone(), shared.clone()],
        1,
    )
    .unwrap();
    let (src, _) = f.layout(Tier::Host, LayoutKind::FullyContiguous, c, 1);
    assert!(matches!(
        f.engine.copy_blocks(&src, &[0], &aliased, &[0]),
        Err(Error::Bounds(BoundsError::OverlappingCopy {
            what: "destination ranges",
            ..
        }))
    ));
    assert!(read_region(&shared) == shared_image);
    let done = copied(&f.engine, &layout, &[1, 2], &layout, &[5, 6]);
    assert_eq!(done, 2 * CONFIG.block_bytes().unwrap());
}

#[test]
fn unaligned_disk_transfers_are_refused() {
    let mut f = Fixture::new();
    // A host layout with byte alignment, placed 64 bytes into its storage: fine for host copies,
    // not for O_DIRECT.
    let (_, bytes) = CONFIG.regions(LayoutKind::FullyContiguous).unwrap();
    let (host, _) = random_region(Tier::Host, bytes, 64, f.dir.path(), &mut f.rng);
    let host = BlockLayout::new(CONFIG, LayoutKind::FullyContiguous, vec![host], 64).unwrap();
    let (disk, poison) = f.layout(Tier::Disk, LayoutKind::FullyContiguous, CONFIG, 4096);
    assert!(matches!(
        f.engine.copy_blocks(&host, &[0], &disk, &[0]),
        Err(Error::Bounds(BoundsError::Misaligned { align: 4096, .. }))
    ));
    assert_untouched(&disk, &poison);
}

#[test]
fn unsupported_paths_are_refused_before_anything_moves() {
    let mut f = Fixture::new();
    let (a, _) = f.layout(Tier::Disk, LayoutKind::FullyContiguous, CONFIG, 4096);
    let (b, poison) = f.layout(Tier::Disk, LayoutKind::FullyContiguous, CONFIG, 4096);
    let err = f.engine.copy_blocks(&a, &[0], &b, &[0]).unwrap_err();
    assert!(matches!(
        err,
        Error::Unsupported(UnsupportedError::Transfer {
            src: StorageKind::Disk(_),
            dst: StorageKind::Disk(_),
            ..
        })
    ));
    assert!(err.to_string().contains("not supported"), "{err}");
    assert_untouched(&b, &poison);
}

/// Whether the dynamic loader finds the CUDA driver library (asked directly, not through kvmem).
fn libcuda_loadable() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the driver library runs its initialisers only; nothing is called.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Device memory, refused before anything moves. Without a CUDA driver (CI) every device path is
/// refused with what to do. With one, bad block lists over a device layout (here at an address
/// that must never be touched) are refused by validation, before any copy reaches the driver;
/// the device paths themselves run in `device_paths_refuse_bad_requests_before_anything_moves`.
#[test]
fn device_paths_are_refused_before_anything_moves() {
    let mut f = Fixture::new();
    let (_, bytes) = CONFIG.regions(LayoutKind::FullyContiguous).unwrap();
    // SAFETY: the address is never dereferenced: without a driver the engine refuses device
    // paths before executing anything, with one every request below is invalid and refused by
    // validation, and the layout only computes addresses.
    let device =
        unsafe { ExternalDeviceMemory::new(0x7000_0000_0000 as *const u8, bytes, 0) }.unwrap();
    let device = BlockLayout::new(
        CONFIG,
        LayoutKind::FullyContiguous,
        vec![Buffer::new(device)],
        4096,
    )
    .unwrap();
    let (host, host_poison) = f.layout(Tier::Host, LayoutKind::FullyContiguous, CONFIG, 4096);
    let (disk, disk_poison) = f.layout(Tier::Disk, LayoutKind::FullyContiguous, CONFIG, 4096);
    let pairs = [
        (&host, &device),
        (&device, &host),
        (&device, &device),
        (&device, &disk),
    ];
    if libcuda_loadable() {
        for (src, dst) in pairs {
            let err = f.engine.copy_blocks(src, &[0], dst, &[8]).unwrap_err();
            assert_eq!(
                out_of_range(&err).map(|(side, block, _)| (side, block)),
                Some(("destination", 8)),
                "{err}"
            );
        }
    } else {
        for (src, dst) in pairs {
            let err = f.engine.copy_blocks(src, &[0], dst, &[1]).unwrap_err();
            assert!(
                matches!(err, Error::Cuda(CudaError::Unavailable { .. })),
                "{err}"
            );
            assert!(err.to_string().contains("libcuda"), "{err}");
        }
    }
    assert_untouched(&host, &host_poison);
    assert_untouched(&disk, &disk_poison);
}

/// On a GPU: bad requests between device layouts and every other tier are refused with typed
/// errors, and the device destinations (read back through the driver) keep their poison; then a
/// valid request over the same layouts moves its blocks.
#[test]
#[ignore = "needs a CUDA GPU"]
fn device_paths_refuse_bad_requests_before_anything_moves() {
    let mut f = Fixture::new();
    let fc = LayoutKind::FullyContiguous;
    let (device, device_poison) = f.layout(Tier::Device, fc, CONFIG, 4096);
    let (device2, device2_poison) = f.layout(
        Tier::Device,
        LayoutKind::LayerSeparate(BlockDim::Second),
        CONFIG,
        4096,
    );
    for other_tier in [Tier::Host, Tier::Pinned, Tier::Disk] {
        let (other, other_poison) = f.layout(other_tier, fc, CONFIG, 4096);
        for (src, dst) in [(&other, &device), (&device, &other), (&device, &device2)] {
            let ctx = format!("{other_tier:?} and device");
            assert_bad_block_lists_refused(&f.engine, src, dst, &ctx);
        }
        assert_untouched(&other, &other_poison);
    }
    // Blocks onto overlapping blocks of the same device layout.
    let err = f
        .engine
        .copy_blocks(&device, &[1, 2], &device, &[2, 3])
        .unwrap_err();
    assert!(
        matches!(err, Error::Bounds(BoundsError::OverlappingCopy { .. })),
        "{err}"
    );
    // A device layout of another shape.
    let fewer_layers = LayoutConfig {
        num_layers: 1,
        ..CONFIG
    };
    let (small, small_poison) = f.layout(Tier::Device, fc, fewer_layers, 4096);
    let err = f
        .engine
        .copy_blocks(&device, &[0], &small, &[0])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Layout(LayoutError::Mismatch { what: "layers", .. })
        ),
        "{err}"
    );
    assert_untouched(&device, &device_poison);
    assert_untouched(&device2, &device2_poison);
    assert_untouched(&small, &small_poison);
    // The engine still moves blocks between the same layouts.
    let done = copied(&f.engine, &device, &[3, 5], &device2, &[0, 7]);
    assert_eq!(done, 2 * CONFIG.block_bytes().unwrap());
}

/// A kernel that spins until the 32-bit word at its argument (a device-mapped pinned host word)
/// is nonzero: the stall of the stalled-stream test where the device lacks stream memory
/// operations.
const SPIN_PTX: &str = r#"
.version 7.0
.target sm_70
.address_size 64

.visible .entry kvmem_test_spin(
    .param .u64 kvmem_test_spin_flag
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<2>;
    .reg .b64 %rd<2>;

    ld.param.u64 %rd1, [kvmem_test_spin_flag];
$L_spin:
    ld.volatile.u32 %r1, [%rd1];
    setp.eq.s32 %p1, %r1, 0;
    @%p1 bra $L_spin;
    ret;
}
"#;

/// Makes `stream` wait (on the GPU) until the pinned host word at device address `word_dev`
/// becomes nonzero: `cuStreamWaitValue32_v2`, or, where the driver refuses it, a one-thread
/// kernel spinning on the word. Returns which it used.
///
/// The V2 stream memory operations are available by default on every platform (CUDA 11.7 and
/// later; the V1 ones needed `NVreg_EnableStreamMemOPs=1`), and CUDA 12 has no device attribute
/// for them (`CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1` describes the V1 API only, and is 0
/// on a default driver), so the call itself is the check.
fn stall_until_set(
    gpu: &kvmem::cuda::CudaDevice,
    stream: &kvmem::cuda::cudarc::driver::CudaStream,
    word_dev: u64,
) -> &'static str {
    use kvmem::cuda::cudarc::driver::{result, sys};
    let ctx = gpu.context();
    ctx.bind_to_thread().unwrap();
    // SAFETY: a live stream of the device's primary context (bound just above); `word_dev` is the
    // device address of a pinned, device-mapped host word that outlives the wait (the test
    // releases it, then waits for the stream before freeing it).
    let r = unsafe {
        sys::cuStreamWaitValue32_v2(
            stream.cu_stream(),
            word_dev,
            1,
            sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
        )
    };
    if r == sys::CUresult::CUDA_SUCCESS {
        return "cuStreamWaitValue32_v2";
    }
    let v1 = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1)
        .unwrap_or(-1);
    eprintln!(
        "cuStreamWaitValue32_v2 refused ({r:?}; V1 stream memory operations attribute: {v1}); \
         spinning in a kernel instead"
    );
    let module = ctx
        .load_module(kvmem::cuda::cudarc::nvrtc::Ptx::from_src(SPIN_PTX))
        .unwrap();
    let spin = module.load_function("kvmem_test_spin").unwrap();
    let mut flag = word_dev;
    let mut params = [(&mut flag as *mut u64).cast::<std::ffi::c_void>()];
    // SAFETY: the kernel takes one u64 (the word's device address), which `params` points at for
    // the call; the word is pinned, device-mapped and outlives the kernel (see above); the
    // stream is live. The module stays loaded: leaked below, like the stalled stream's work.
    unsafe {
        result::launch_kernel(
            spin.cu_function(),
            (1, 1, 1),
            (1, 1, 1),
            0,
            stream.cu_stream(),
            &mut params,
        )
    }
    .unwrap();
    std::mem::forget((spin, module));
    "a spinning kernel"
}

/// Sets the stall word on drop: releases the stalled stream even when an assertion fails, so
/// that a failing run does not leave the device stalled under the tests that follow.
struct Release(*mut u32);

impl Release {
    fn now(self) {}
}

impl Drop for Release {
    fn drop(&mut self) {
        // SAFETY: the pointer is into a pinned word the test keeps allocated until after this
        // guard (declared after it, so dropped before it); the GPU only reads the word.
        unsafe { std::ptr::write_volatile(self.0, 1) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `scenario` on its own thread; panics if it does not finish within `limit` (a hang).
fn within(limit: std::time::Duration, scenario: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        scenario();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => thread.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(thread.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("hung: no outcome within {limit:?}")
        }
    }
}

/// A CUDA copy stream that stalls for real does not poison later GPU transfers. A stream of the
/// test's own waits on the GPU for a pinned host word (`cuStreamWaitValue32_v2`, or a spinning
/// kernel), and the engine's first transfer is ordered after it (`copy_blocks_ordered`), so the
/// engine's copy stream stalls behind it. That transfer times out by its deadline, its buffers
/// are quarantined (in `accounting::snapshot()`, exactly what the error says) and so is the
/// stream; the next transfer runs on a fresh stream and succeeds, byte for byte; then the word is
/// released, the stalled work drains, and dropping the engine returns. Everything the test frees
/// is allocated before the stall and freed after it: allocating or freeing device memory may
/// synchronize the device, i.e. wait for the stall.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_stalled_cuda_stream_times_out_and_the_next_transfer_runs_on_a_fresh_stream() {
    use kvmem::cuda::batch::CopyMethod;
    use kvmem::{HostMemory, MemoryDescriptor, PinnedStorage, accounting};
    use std::time::{Duration, Instant};
    within(Duration::from_secs(120), || {
        let gpu = common::gpu();
        // Loads the copy kernel (JIT-compiled on first use in the process) before any deadline
        // runs; the engine's streams share it.
        drop(kvmem::cuda::batch::CopyStream::new(&gpu).unwrap());
        let mut f = Fixture {
            engine: TransferEngine::new(EngineConfig {
                deadline: Duration::from_secs(2),
                deadline_per_gib: Duration::ZERO,
                // No copy descriptors: the quarantine accounting is exactly the transfer's
                // buffers (the executor's handling is the same for every method).
                gpu_method: CopyMethod::PerCopy,
                ..EngineConfig::default()
            })
            .unwrap(),
            rng: StdRng::seed_from_u64(13),
            dir: tempfile::tempdir().unwrap(),
        };
        let fc = LayoutKind::FullyContiguous;
        let block = CONFIG.block_bytes().unwrap();
        let (stalled_src, _) = f.layout(Tier::Pinned, fc, CONFIG, 4096);
        let (stalled_dst, _) = f.layout(Tier::Device, fc, CONFIG, 4096);
        let (src, src_images) = f.layout(Tier::Pinned, fc, CONFIG, 4096);
        let (dst, _) = f.layout(Tier::Device, fc, CONFIG, 4096);
        let (back, _) = f.layout(Tier::Pinned, fc, CONFIG, 4096);
        // The engine's copy stream exists and works before the stall.
        copied(&f.engine, &src, &[0], &dst, &[0]);
        let mut word = PinnedStorage::new(&gpu, 4096).unwrap();
        word.as_mut_slice().fill(0);
        let release = Release(word.as_mut_slice().as_mut_ptr().cast::<u32>());
        let word_dev = kvmem::cuda::mapped_device_pointer(&gpu, word.addr()).unwrap();
        let stream = gpu.context().new_stream().unwrap();
        let how = stall_until_set(&gpu, &stream, word_dev);
        eprintln!("stalling the test's stream with {how}");
        let after = kvmem::cuda::interop::Event::new(&gpu).unwrap();
        // SAFETY: a live stream of GPU 0's primary context.
        unsafe { after.record(stream.cu_stream()) }.unwrap();

        let before = accounting::snapshot();
        let started = Instant::now();
        let (handle, end) = f
            .engine
            .copy_blocks_ordered(&stalled_src, &[0, 1], &stalled_dst, &[2, 3], Some(&after))
            .unwrap();
        let err = handle.wait().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        let (held_buffers, held_bytes) = match &err {
            Error::Transfer(TransferError::TimedOut {
                held_buffers,
                held_bytes,
                ..
            }) => (*held_buffers, *held_bytes),
            other => panic!("expected a timeout of the stalled transfer, got {other}"),
        };
        let regions = || stalled_src.regions().iter().chain(stalled_dst.regions());
        assert_eq!(held_buffers, regions().count(), "{err}");
        assert_eq!(
            held_bytes,
            regions().map(|r| r.size() as u64).sum::<u64>(),
            "{err}"
        );

        // The next transfer runs on a fresh stream: it and its read-back succeed, byte for byte.
        let moved = f
            .engine
            .copy_blocks(&src, &[1, 4], &dst, &[5, 6])
            .unwrap()
            .wait()
            .unwrap_or_else(|e| panic!("the transfer after the stall failed: {e}"));
        assert_eq!(moved.bytes, 2 * block);
        copied(&f.engine, &dst, &[5, 6], &back, &[0, 1]);
        let got = read_region(&back.regions()[0]);
        assert_eq!(got[..block], src_images[0][block..2 * block]);
        assert_eq!(got[block..2 * block], src_images[0][4 * block..5 * block]);
        let now = accounting::snapshot();
        assert_eq!(
            now.quarantined_buffers - before.quarantined_buffers,
            held_buffers as u64
        );
        assert_eq!(now.quarantined_bytes - before.quarantined_bytes, held_bytes);
        assert_eq!(now.quarantined_streams - before.quarantined_streams, 1);

        // Release the word: the stalled stream drains (into the quarantined buffers).
        release.now();
        stream.synchronize().unwrap();
        drop(end);
        // Dropping the engine returns (its worker is not stuck), and nothing more is quarantined.
        drop(f);
        let last = accounting::snapshot();
        assert_eq!(last.quarantined_streams, now.quarantined_streams);
        assert_eq!(last.quarantined_buffers, now.quarantined_buffers);
        drop((stream, after, word, src, dst, back));
    });
}

/// A read past the end of a file (truncated behind the engine's back) fails the transfer; it
/// never reports success. The engine goes on working afterwards.
fn failed_disk_reads_are_errors(backend: DiskBackend) {
    let engine = TransferEngine::new(EngineConfig {
        disk_backend: backend,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let dir = tempfile::tempdir().unwrap();
    let len = 1 << 20;
    let (file, _) = random_region(Tier::Disk, len, 0, dir.path(), &mut rng);
    let path = file
        .downcast_ref::<kvmem::DiskStorage>()
        .unwrap()
        .path()
        .to_path_buf();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(64 << 10)
        .unwrap();
    let (dst, _) = random_region(Tier::Host, len, 0, dir.path(), &mut rng);
    let err = engine
        .copy_region(&file, &dst)
        .unwrap()
        .wait()
        .expect_err("a read past the end of the file reported success");
    assert!(
        matches!(
            (backend, &err),
            (DiskBackend::IoUring, Error::Io(IoError::Short { .. }))
                | (
                    DiskBackend::NixlPosix,
                    Error::Transfer(TransferError::Failed { .. })
                )
        ),
        "{backend}: {err}"
    );

    // The engine still works.
    let (src, image) = random_region(Tier::Host, len, 0, dir.path(), &mut rng);
    let (file, _) = random_region(Tier::Disk, len, 0, dir.path(), &mut rng);
    engine.copy_region(&src, &file).unwrap().wait().unwrap();
    assert!(read_region(&file) == image, "{backend}");
}

each_disk_backend!(failed_disk_reads_are_errors: failed_disk_reads_are_errors_io_uring, failed_disk_reads_are_errors_nixl_posix);

/// Set in the child processes of the test below: what they lack (`runtime` or `plugin`).
const CHILD_ENV: &str = "KVMEM_TEST_NIXL_POSIX_MISSING";
const MISSING_TEST: &str = "nixl_posix_without_its_runtime_or_plugin_is_refused_at_submit";

/// The NIXL POSIX backend without the NIXL runtime (`KVMEM_NIXL_LIB_DIR` at an empty
/// directory) or without its plugin (`NIXL_PLUGIN_DIR` at an empty directory): `submit` returns
/// a typed error saying what to do, nothing is written, and the process does not abort. Each
/// case runs in a child process, since the runtime is loaded once per process.
#[test]
fn nixl_posix_without_its_runtime_or_plugin_is_refused_at_submit() {
    if let Ok(missing) = std::env::var(CHILD_ENV) {
        return missing_backend_child(&missing);
    }
    let empty = tempfile::tempdir().unwrap();
    for (missing, var) in [
        ("runtime", "KVMEM_NIXL_LIB_DIR"),
        ("plugin", "NIXL_PLUGIN_DIR"),
    ] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([MISSING_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, missing)
            .env(var, empty.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child without the {missing}: {}\n{stdout}\n{stderr}",
            out.status
        );
    }
}

fn missing_backend_child(missing: &str) {
    let mut f = Fixture::new();
    let (src, _) = f.layout(Tier::Host, LayoutKind::FullyContiguous, CONFIG, 4096);
    let (dst, poison) = f.layout(Tier::Disk, LayoutKind::FullyContiguous, CONFIG, 4096);
    let engine = TransferEngine::new(EngineConfig {
        disk_backend: DiskBackend::NixlPosix,
        ..EngineConfig::default()
    })
    .unwrap();
    for _ in 0..2 {
        let err = engine
            .copy_blocks(&src, &[0, 1], &dst, &[2, 3])
            .unwrap_err();
        match missing {
            "runtime" => assert!(
                matches!(err, Error::Nixl(NixlError::Unavailable { .. })),
                "{err}"
            ),
            _ => assert!(
                matches!(&err, Error::Nixl(NixlError::UnknownBackend { backend, .. }) if backend == "POSIX"),
                "{err}"
            ),
        }
        let text = err.to_string();
        assert!(
            text.contains("KVMEM_NIXL_LIB_DIR") || text.contains("plugin directory"),
            "the error does not say what to do: {text}"
        );
        assert_untouched(&dst, &poison);
    }
    // The io_uring backend does not need NIXL.
    TransferEngine::new(EngineConfig {
        disk_backend: DiskBackend::IoUring,
        ..EngineConfig::default()
    })
    .unwrap()
    .copy_blocks(&src, &[0, 1], &dst, &[2, 3])
    .unwrap()
    .wait()
    .unwrap();
}
