//! Many scattered copies through a CUDA copy stream, by every method, in every direction between
//! pinned host and device memory, checked byte for byte on random data. Run on the GPU machine
//! with `--ignored` (scripts/gpu-build.sh).

use kvmem::Completion;
use kvmem::cuda::batch::{CopyMethod, CopyStream, DeviceCopy, Location};
use kvmem::cuda::{self, CudaDevice};
use kvmem::error::BoundsError;
use kvmem::{DeviceStorage, Error, HostMemory, MemoryDescriptor, PinnedStorage};

fn gpu() -> CudaDevice {
    CudaDevice::new(0).expect("CUDA device 0 must be usable on the GPU machine")
}

/// Device 0 and a copy stream on it.
fn gpu_and_stream() -> (CudaDevice, CopyStream) {
    let gpu = gpu();
    let stream = CopyStream::new(&gpu).unwrap();
    (gpu, stream)
}

/// A generator with a fresh seed each run, printed for reproduction.
fn seeded_rng() -> fastrand::Rng {
    let seed = fastrand::u64(..);
    println!("seed {seed:#x}");
    fastrand::Rng::with_seed(seed)
}

/// A copy list moving `n` chunks of `chunk` bytes from shuffled slots of `src` to shuffled slots
/// of `dst` (slots are `stride` bytes apart), with the expected result computed on the host.
fn scattered(
    n: usize,
    chunk: usize,
    stride: usize,
    src: u64,
    dst: u64,
    rng: &mut fastrand::Rng,
) -> (Vec<DeviceCopy>, Vec<(usize, usize)>) {
    let mut from: Vec<usize> = (0..n).collect();
    let mut to: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut from);
    rng.shuffle(&mut to);
    let pairs: Vec<(usize, usize)> = from.iter().zip(&to).map(|(a, b)| (*a, *b)).collect();
    let copies = pairs
        .iter()
        .map(|&(a, b)| DeviceCopy {
            src: src + (a * stride) as u64,
            dst: dst + (b * stride) as u64,
            len: chunk as u64,
        })
        .collect();
    (copies, pairs)
}

fn expected(
    src: &[u8],
    dst_before: &[u8],
    pairs: &[(usize, usize)],
    chunk: usize,
    stride: usize,
) -> Vec<u8> {
    let mut out = dst_before.to_vec();
    for &(a, b) in pairs {
        out[b * stride..b * stride + chunk].copy_from_slice(&src[a * stride..a * stride + chunk]);
    }
    out
}

fn methods(stream: &CopyStream) -> Vec<CopyMethod> {
    assert!(
        stream.batch_supported(),
        "driver 580 has cuMemcpyBatchAsync"
    );
    assert!(
        stream.kernel_loaded(),
        "the PTX copy kernel must load on the H100"
    );
    vec![
        CopyMethod::Auto,
        CopyMethod::Batched,
        CopyMethod::Kernel,
        CopyMethod::PerCopy,
        CopyMethod::Staged,
        CopyMethod::AutoBesideCompute,
    ]
}

/// Checks that a list submitted with `asked` ran with that method, or, for `Auto`, with the one
/// `resolve` picks for it (never `Auto` itself).
fn assert_ran_as(
    stream: &CopyStream,
    asked: CopyMethod,
    used: CopyMethod,
    (copies, src, dst): (&[DeviceCopy], Location, Location),
    what: &str,
) {
    let want = match asked {
        // Staged resolves to the kernel between device memories.
        CopyMethod::Auto | CopyMethod::Staged | CopyMethod::AutoBesideCompute => {
            stream.resolve(asked, copies, src, dst).unwrap()
        }
        forced => forced,
    };
    assert!(
        !matches!(used, CopyMethod::Auto | CopyMethod::AutoBesideCompute),
        "{what}: {used:?} was not resolved"
    );
    assert_eq!(used, want, "{what}: asked for {asked:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scattered_copies_host_device_and_back_by_every_method() {
    let (gpu, stream) = gpu_and_stream();
    let mut rng = seeded_rng();
    // Aligned 16 KiB chunks (vector path) and odd 1000-byte chunks at odd offsets (byte path);
    // 4096 chunks of 4 KiB: a list the copy kernel launches in two parts.
    for (chunk, stride, n) in [
        (16 << 10, 16 << 10, 512),
        (1000, 1003, 300),
        (2 << 20, 2 << 20, 8),
        (4 << 10, 4 << 10, 4096),
    ] {
        let size = n * stride;
        for method in methods(&stream) {
            let mut host = PinnedStorage::new(&gpu, size).unwrap();
            rng.fill(host.as_mut_slice());
            let dev = DeviceStorage::new(&gpu, size).unwrap();
            // Poison the device side through a host copy.
            let mut poison = PinnedStorage::new(&gpu, size).unwrap();
            poison.memset(0x5a);
            cuda::copy_host_to_device(&poison, &dev).unwrap();

            // H2D
            let (copies, pairs) = scattered(
                n,
                chunk,
                stride,
                host.addr() as u64,
                dev.device_ptr(),
                &mut rng,
            );
            // SAFETY: all ranges lie inside `host` (pinned, device-mapped) and `dev`, which outlive
            // the completion waited on right here; destinations are distinct slots.
            let c =
                unsafe { stream.copy_async(&copies, method, Location::Host, Location::Device(0)) }
                    .unwrap();
            let used = c.method();
            let (h, d) = (Location::Host, Location::Device(0));
            assert_ran_as(
                &stream,
                method,
                used,
                (&copies, h, d),
                &format!("H2D chunk {chunk}"),
            );
            c.wait().unwrap();
            let mut back = PinnedStorage::new(&gpu, size).unwrap();
            back.memset(0xee);
            cuda::copy_device_to_host(&dev, &mut back).unwrap();
            let want = expected(host.as_slice(), poison.as_slice(), &pairs, chunk, stride);
            assert!(
                back.as_slice() == want.as_slice(),
                "H2D {method:?} (ran as {used:?}) chunk {chunk}"
            );

            // D2H into a poisoned pinned buffer.
            let mut out = PinnedStorage::new(&gpu, size).unwrap();
            out.memset(0x33);
            let before = out.as_slice().to_vec();
            let (copies, pairs) = scattered(
                n,
                chunk,
                stride,
                dev.device_ptr(),
                out.addr() as u64,
                &mut rng,
            );
            // SAFETY: as above.
            let c =
                unsafe { stream.copy_async(&copies, method, Location::Device(0), Location::Host) }
                    .unwrap();
            let d2h = (&copies[..], d, h);
            assert_ran_as(
                &stream,
                method,
                c.method(),
                d2h,
                &format!("D2H chunk {chunk}"),
            );
            c.wait().unwrap();
            let want = expected(back.as_slice(), &before, &pairs, chunk, stride);
            assert!(
                out.as_slice() == want.as_slice(),
                "D2H {method:?} chunk {chunk}"
            );

            // D2D
            let dev2 = DeviceStorage::new(&gpu, size).unwrap();
            cuda::copy_host_to_device(&poison, &dev2).unwrap();
            let (copies, pairs) = scattered(
                n,
                chunk,
                stride,
                dev.device_ptr(),
                dev2.device_ptr(),
                &mut rng,
            );
            // SAFETY: as above.
            let c = unsafe {
                stream.copy_async(&copies, method, Location::Device(0), Location::Device(0))
            }
            .unwrap();
            let d2d = (&copies[..], d, d);
            assert_ran_as(
                &stream,
                method,
                c.method(),
                d2d,
                &format!("D2D chunk {chunk}"),
            );
            assert!(c.wait_timeout(std::time::Duration::from_secs(10)));
            assert!(c.is_done());
            c.wait().unwrap();
            let mut back2 = PinnedStorage::new(&gpu, size).unwrap();
            cuda::copy_device_to_host(&dev2, &mut back2).unwrap();
            let want = expected(back.as_slice(), poison.as_slice(), &pairs, chunk, stride);
            assert!(
                back2.as_slice() == want.as_slice(),
                "D2D {method:?} chunk {chunk}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn auto_picks_the_kernel_for_small_chunks_and_batches_for_large_ones() {
    let (_gpu, stream) = gpu_and_stream();
    let one = |len| {
        [DeviceCopy {
            src: 0x1000,
            dst: 0x2000,
            len,
        }]
    };
    let h = Location::Host;
    let d = Location::Device(0);
    let (auto, beside) = (CopyMethod::Auto, CopyMethod::AutoBesideCompute);
    for (asked, len, from, to, want) in [
        (auto, 16 << 10, h, d, CopyMethod::Kernel),
        (auto, 8 << 20, h, d, CopyMethod::Batched),
        // Device to device, the kernel's range is four times longer: 2 MiB copies stay on it,
        // 8 MiB ones go to the copy engines.
        (auto, 2 << 20, h, d, CopyMethod::Batched),
        (auto, 2 << 20, d, d, CopyMethod::Kernel),
        (auto, 8 << 20, d, d, CopyMethod::Batched),
        // Beside the engine's kernels: what Auto gives the copy kernel between host and device
        // is staged; the rest as Auto.
        (beside, 16 << 10, h, d, CopyMethod::Staged),
        (beside, 16 << 10, d, h, CopyMethod::Staged),
        (beside, 8 << 20, d, h, CopyMethod::Batched),
        (beside, 2 << 20, d, d, CopyMethod::Kernel),
    ] {
        assert_eq!(
            stream.resolve(asked, &one(len), from, to).unwrap(),
            want,
            "{asked:?}: one {len}-byte copy {from:?} -> {to:?}"
        );
    }
    // Scattered device chunks into one host run (an offload) and back (an onboard): Auto stages
    // 128 MiB of 64 KiB chunks, and 256 MiB of 16 KiB ones, but not 32 MiB of 16 KiB ones (the
    // kernel is faster there), nor a host side with holes.
    let run = |n: u64, len: u64| -> Vec<DeviceCopy> {
        let (dev, host) = (0x10_0000_0000u64, 0x40_0000_0000u64);
        (0..n)
            .map(|k| DeviceCopy {
                src: dev + (k * 7 % n) * 2 * len,
                dst: host + k * len,
                len,
            })
            .collect()
    };
    let back = |c: &[DeviceCopy]| -> Vec<DeviceCopy> {
        c.iter()
            .map(|c| DeviceCopy {
                src: c.dst,
                dst: c.src,
                len: c.len,
            })
            .collect()
    };
    let offload = run(2048, 64 << 10);
    let onboard = back(&offload);
    let large = run(16384, 16 << 10);
    let small = run(2048, 16 << 10);
    let holes: Vec<DeviceCopy> = offload
        .iter()
        .map(|c| DeviceCopy {
            dst: c.dst + (c.dst & 0xffff_ffff),
            ..*c
        })
        .collect();
    for (copies, from, to, want) in [
        (&offload, d, h, CopyMethod::Staged),
        (&onboard, h, d, CopyMethod::Staged),
        (&large, d, h, CopyMethod::Staged),
        (&small, d, h, CopyMethod::Kernel),
        (&holes, d, h, CopyMethod::Kernel),
        (&offload[..128].to_vec(), d, h, CopyMethod::Kernel),
    ] {
        assert_eq!(
            stream.resolve(auto, copies, from, to).unwrap(),
            want,
            "{} copies {from:?} -> {to:?}",
            copies.len()
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn error_empty_and_zero_length_copy_lists_are_refused() {
    let (_gpu, stream) = gpu_and_stream();
    // SAFETY: both calls are refused before anything is enqueued.
    unsafe {
        assert!(matches!(
            stream.copy_async(&[], CopyMethod::Auto, Location::Host, Location::Device(0)),
            Err(Error::Bounds(BoundsError::ZeroSize { .. }))
        ));
        let zero = [DeviceCopy {
            src: 0x1000,
            dst: 0x2000,
            len: 0,
        }];
        assert!(matches!(
            stream.copy_async(
                &zero,
                CopyMethod::Batched,
                Location::Host,
                Location::Device(0)
            ),
            Err(Error::Bounds(BoundsError::ZeroSize { .. }))
        ));
    }
}

/// The staged method on the engines' patterns, through more data than the staging ring holds
/// (so every slot is reused): scattered device chunks gathered into one contiguous pinned run,
/// and one run scattered back, random data, poisoned destinations, every byte compared; chunk
/// sizes that divide the slot and one that does not (copies split across slots).
#[test]
#[ignore = "needs a CUDA GPU"]
fn staged_gather_and_scatter_through_the_ring_match_byte_for_byte() {
    let (gpu, stream) = gpu_and_stream();
    let mut rng = seeded_rng();
    // 40-48 MiB each: more than the 32 MiB ring, so every slot is used more than once.
    for (chunk, n) in [(32 << 10, 1500), (16 << 10, 2600), (12_345, 3500)] {
        let size = chunk * n;
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        // Gather: device block order[k] -> host run position k.
        let mut src = PinnedStorage::new(&gpu, size).unwrap();
        rng.fill(src.as_mut_slice());
        let dev = DeviceStorage::new(&gpu, size).unwrap();
        cuda::copy_host_to_device(&src, &dev).unwrap();
        let mut run = PinnedStorage::new(&gpu, size).unwrap();
        run.memset(0xa5);
        let gather: Vec<DeviceCopy> = order
            .iter()
            .enumerate()
            .map(|(k, &b)| DeviceCopy {
                src: dev.device_ptr() + (b * chunk) as u64,
                dst: run.addr() as u64 + (k * chunk) as u64,
                len: chunk as u64,
            })
            .collect();
        // SAFETY: every range lies inside `dev` or `run` (pinned), which outlive the wait right
        // here; destinations are distinct positions of the run.
        let c = unsafe {
            stream.copy_async(
                &gather,
                CopyMethod::Staged,
                Location::Device(0),
                Location::Host,
            )
        }
        .unwrap();
        assert_eq!(c.method(), CopyMethod::Staged);
        c.wait().unwrap();
        for (k, &b) in order.iter().enumerate() {
            assert!(
                run.as_slice()[k * chunk..(k + 1) * chunk]
                    == src.as_slice()[b * chunk..(b + 1) * chunk],
                "gather: chunk {chunk}, position {k} (block {b})"
            );
        }
        // Scatter: host run position k -> a poisoned device block order[k].
        let back = DeviceStorage::new(&gpu, size).unwrap();
        let mut poison = PinnedStorage::new(&gpu, size).unwrap();
        poison.memset(0x3c);
        cuda::copy_host_to_device(&poison, &back).unwrap();
        let scatter: Vec<DeviceCopy> = order
            .iter()
            .enumerate()
            .map(|(k, &b)| DeviceCopy {
                src: run.addr() as u64 + (k * chunk) as u64,
                dst: back.device_ptr() + (b * chunk) as u64,
                len: chunk as u64,
            })
            .collect();
        // SAFETY: as above, with `run` as the source and `back` as the destination.
        let c = unsafe {
            stream.copy_async(
                &scatter,
                CopyMethod::Staged,
                Location::Host,
                Location::Device(0),
            )
        }
        .unwrap();
        c.wait().unwrap();
        let mut out = PinnedStorage::new(&gpu, size).unwrap();
        out.memset(0xee);
        cuda::copy_device_to_host(&back, &mut out).unwrap();
        assert!(
            out.as_slice() == src.as_slice(),
            "scatter: chunk {chunk}: the device blocks differ from the originals"
        );
    }
}
