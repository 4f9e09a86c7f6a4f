//! The transfer engine's CUDA paths on a real GPU: randomized block copies between every pair of
//! layouts over pinned, device, pageable host and disk tiers, checked byte for byte against a
//! reference computed from the dimension orders (tests/common/cases.rs). Run with `--ignored`.

mod common;

use common::cases::{CaseSize, every_layout_pair, every_layout_pair_of};
use common::{Tier, engine_with};
use kvmem::transfer::{CopyMethod, EngineConfig, TransferEngine};

fn engine(gpu_method: CopyMethod) -> TransferEngine {
    TransferEngine::new(EngineConfig {
        gpu_method,
        // Small bounce buffers, so staged transfers run through several slabs.
        bounce_bytes: 64 << 10,
        ..EngineConfig::default()
    })
    .unwrap()
}

/// Three random cases for every pair of layouts on each pair of tiers.
fn sweep(engine: &TransferEngine, pairs: &[(Tier, Tier)], seed: u64) {
    every_layout_pair(engine, pairs, seed, 3);
}

const GPU_PAIRS: [(Tier, Tier); 8] = [
    (Tier::Pinned, Tier::Device),
    (Tier::Device, Tier::Pinned),
    (Tier::Device, Tier::Device),
    (Tier::Host, Tier::Device),
    (Tier::Device, Tier::Host),
    (Tier::Disk, Tier::Device),
    (Tier::Device, Tier::Disk),
    (Tier::Pinned, Tier::Host),
];

/// One test per copy method, `name: method, seed;`, each sweeping every GPU tier pair with the
/// engine's GPU method set to it (one test per method, so that the GPU harness can run each by
/// name, under memcheck too). `Auto` picks per copy list; the others force one, staged included.
macro_rules! every_gpu_tier_pair_by_method {
    ($($name:ident: $method:ident, $seed:literal;)*) => {$(
        #[test]
        #[ignore = "needs a CUDA GPU"]
        fn $name() {
            sweep(&engine(CopyMethod::$method), &GPU_PAIRS, $seed);
        }
    )*};
}

every_gpu_tier_pair_by_method! {
    every_layout_pair_over_gpu_tiers_auto: Auto, 0x6B00;
    every_layout_pair_over_gpu_tiers_batched: Batched, 0x7C00;
    every_layout_pair_over_gpu_tiers_kernel: Kernel, 0x8C00;
    every_layout_pair_over_gpu_tiers_per_copy: PerCopy, 0x9C00;
    every_layout_pair_over_gpu_tiers_staged: Staged, 0xAC00;
}

/// Requests of 4,096 blocks or more between pinned and device memory, which the engine plans
/// in two parts (the head's copies start, then the rest is planned and enqueued behind them),
/// by the methods that take them, every layout pair, checked byte for byte.
#[test]
#[ignore = "needs a CUDA GPU"]
fn large_requests_planned_in_two_parts_by_every_method() {
    let pairs = [
        (Tier::Pinned, Tier::Device),
        (Tier::Device, Tier::Pinned),
        (Tier::Device, Tier::Device),
    ];
    for (i, method) in [
        CopyMethod::Auto,
        CopyMethod::Kernel,
        CopyMethod::Staged,
        CopyMethod::Batched,
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 0xB100 + 100 * i as u64;
        every_layout_pair_of(&engine(method), &pairs, seed, 1, CaseSize::Large);
    }
}

/// Pinned host memory to and from files, on each disk backend (the host ↔ disk executors, with
/// page-locked buffers).
#[test]
#[ignore = "needs a CUDA GPU"]
fn every_layout_pair_pinned_and_disk_each_disk_backend() {
    for (i, disk_backend) in kvmem::transfer::DiskBackend::ALL.into_iter().enumerate() {
        sweep(
            &engine_with(disk_backend),
            &[(Tier::Pinned, Tier::Disk), (Tier::Disk, Tier::Pinned)],
            0x8D00 + 1000 * i as u64,
        );
    }
}

/// An offload case: `n` random 64 KiB blocks of one layer in device memory, a shuffled id list
/// and the destination order 0..n.
struct Offload {
    config: kvmem::layout::LayoutConfig,
    bytes: usize,
    device: kvmem::Buffer,
    image: Vec<u8>,
    ids: Vec<usize>,
    order: Vec<usize>,
    rng: rand::rngs::StdRng,
}

const BLOCK: usize = 64 << 10;
const MIB: usize = 1 << 20;

impl Offload {
    fn new(n: usize, seed: u64) -> Self {
        use rand::{SeedableRng, seq::SliceRandom};
        let config = common::cases::geometry(n, 1, 16, 1024);
        let (_, bytes) = config
            .regions(kvmem::layout::LayoutKind::FullyContiguous)
            .unwrap();
        assert_eq!(bytes, n * BLOCK);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (device, image) = common::random_region(
            common::Tier::Device,
            bytes,
            0,
            &std::env::temp_dir(),
            &mut rng,
        );
        let mut ids: Vec<usize> = (0..n).collect();
        ids.shuffle(&mut rng);
        Self {
            config,
            bytes,
            device,
            image,
            ids,
            order: (0..n).collect(),
            rng,
        }
    }

    fn layout(&self, region: &kvmem::Buffer) -> kvmem::layout::BlockLayout {
        kvmem::layout::BlockLayout::new(
            self.config,
            kvmem::layout::LayoutKind::FullyContiguous,
            vec![region.clone()],
            4096,
        )
        .unwrap()
    }

    /// A fresh region of the case's size on `tier`, of other random bytes.
    fn region(&mut self, tier: common::Tier) -> kvmem::Buffer {
        common::random_region(tier, self.bytes, 0, &std::env::temp_dir(), &mut self.rng).0
    }

    /// Offloads the device blocks `ids` into `host` in order with `engine`.
    fn offload(&self, engine: &TransferEngine, host: &kvmem::Buffer) -> kvmem::Result<()> {
        use kvmem::Completion as _;
        engine
            .copy_blocks(
                &self.layout(&self.device),
                &self.ids,
                &self.layout(host),
                &self.order,
            )
            .and_then(|h| h.wait())
            .map(drop)
    }

    fn assert_offloaded(&self, host: &kvmem::Buffer, what: &str) {
        let got = common::read_region(host);
        for (k, &b) in self.ids.iter().enumerate() {
            assert!(
                got[k * BLOCK..(k + 1) * BLOCK] == self.image[b * BLOCK..(b + 1) * BLOCK],
                "{what}: host block {k} is not device block {b}"
            );
        }
    }

    /// Offloads into `host` with `engine`, checks every block, then onboards into a device
    /// buffer of other (random) bytes in the offloaded order and checks it against the image.
    fn round_trip(&mut self, engine: &TransferEngine, host: &kvmem::Buffer, what: &str) {
        use kvmem::Completion as _;
        self.offload(engine, host).unwrap();
        self.assert_offloaded(host, what);
        let back = self.region(common::Tier::Device);
        engine
            .copy_blocks(
                &self.layout(host),
                &self.order,
                &self.layout(&back),
                &self.ids,
            )
            .unwrap()
            .wait()
            .unwrap();
        assert!(
            common::read_region(&back) == self.image,
            "{what}: the onboard differs from the original"
        );
    }
}

/// Auto stages an offload of whole blocks into one host run, and the staged method moves a slot
/// by one DMA where host ranges adjoin; a pinned buffer page-locked in several registrations
/// must still see no DMA across two (the driver refuses one): 64 MiB of scattered 64 KiB blocks
/// from the device into pinned memory registered in 4 MiB pieces, through a ring of 32 MiB
/// (4 MiB slots, offset from the registrations by the layout's start), and back, byte-exact,
/// with `Auto` and with the staged method forced.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_staged_offload_into_pinned_memory_registered_in_pieces_and_back() {
    use kvmem::storage::{MappedPinnedOptions, MappedPinnedStorage};
    use kvmem::{Buffer, HostMemory as _, OffsetBuffer};
    let gpu = common::gpu();
    let mut case = Offload::new(1024, 0x5EED);
    for gpu_method in [CopyMethod::Auto, CopyMethod::Staged] {
        let options = MappedPinnedOptions {
            registration_chunk: 4 * MIB,
            ..Default::default()
        };
        let mut pinned =
            MappedPinnedStorage::with_options(&gpu, case.bytes + MIB, &options).unwrap();
        assert!(pinned.registered_ranges().len() > 16);
        pinned.as_mut_slice().fill(0x5a);
        // The layout starts 64 KiB in, so slots and registrations do not line up.
        let host =
            Buffer::new(OffsetBuffer::new(Buffer::new(pinned), 64 << 10, case.bytes).unwrap());
        let engine = TransferEngine::new(EngineConfig {
            gpu_method,
            staging_bytes: 32 * MIB,
            ..EngineConfig::default()
        })
        .unwrap();
        case.round_trip(&engine, &host, &format!("{gpu_method:?}"));
    }
}

/// Pinned memory kvmem did not pin itself (an engine's `pin_memory()` tensor), taken as
/// `ExternalHostMemory::new_pinned`: the driver reports the allocations or registrations that
/// cover it, and the copies are split, and the staged method's DMAs joined, by those. One
/// `cuMemHostAlloc` is one range; memory registered in 4 MiB pieces is one per piece; pageable
/// memory is none. A staged offload into each and back is byte-exact, with consecutive blocks
/// placed across every registration boundary, so that a copy merged across one would be
/// refused by the driver if it were not split there.
#[test]
#[ignore = "needs a CUDA GPU"]
fn pinned_memory_kvmem_did_not_pin_is_split_and_joined_by_its_registrations() {
    use kvmem::cuda::interop::pinned_ranges;
    use kvmem::storage::{ExternalHostMemory, MappedPinnedOptions, MappedPinnedStorage};
    use kvmem::{Buffer, HostMemory as _, MemoryDescriptor as _, PinnedStorage};
    let gpu = common::gpu();
    let mut case = Offload::new(1024, 0xE7E2);
    let whole = PinnedStorage::new(&gpu, case.bytes).unwrap();
    let options = MappedPinnedOptions {
        registration_chunk: 4 * MIB,
        ..Default::default()
    };
    let pieces = MappedPinnedStorage::with_options(&gpu, case.bytes, &options).unwrap();
    assert_eq!(pieces.registered_ranges().len(), case.bytes / (4 * MIB));
    let (w, p) = (whole.addr(), pieces.addr());
    let one = |r: std::ops::Range<usize>| Some(std::iter::once(r).collect::<Vec<_>>());
    assert_eq!(pinned_ranges(w, case.bytes), one(w..w + case.bytes));
    assert_eq!(
        pinned_ranges(w + 4096, 8 * MIB),
        one(w + 4096..w + 4096 + 8 * MIB)
    );
    assert_eq!(
        pinned_ranges(p, case.bytes),
        Some(pieces.registered_ranges())
    );
    assert_eq!(pinned_ranges(p + MIB, MIB), one(p + MIB..p + 2 * MIB));
    let pageable = vec![0u8; 8 * MIB];
    assert_eq!(
        pinned_ranges(pageable.as_ptr() as usize, pageable.len()),
        None
    );
    // Host blocks 64k - 1 and 64k (the two sides of a 4 MiB registration boundary) take
    // consecutive device blocks: their chunks are contiguous on both sides, so the planner
    // merges them into one copy across the boundary.
    let per_piece = 4 * MIB / BLOCK;
    let boundaries: Vec<usize> = (1..case.ids.len() / per_piece)
        .map(|k| k * per_piece)
        .collect();
    for &b in &boundaries {
        let next = case.ids[b - 1] + 1;
        if let Some(j) = case.ids.iter().position(|&v| v == next)
            && !boundaries.iter().any(|&c| j == c || j + 1 == c)
        {
            case.ids.swap(b, j);
        }
    }
    let merged = boundaries
        .iter()
        .filter(|&&b| case.ids[b] == case.ids[b - 1] + 1);
    assert!(
        merged.count() >= 8,
        "too few blocks placed across registration boundaries"
    );
    for (what, addr) in [("one allocation", w), ("4 MiB registrations", p)] {
        // SAFETY: `whole` and `pieces` are page-locked, `case.bytes` long, and outlive `host`
        // (dropped at the end of this iteration); nothing else touches them meanwhile.
        let external = unsafe { ExternalHostMemory::new_pinned(addr as *mut u8, case.bytes) };
        let mut external = external.unwrap();
        assert_eq!(
            external.registered_ranges().map(<[_]>::to_vec),
            pinned_ranges(addr, case.bytes),
            "{what}: the registrations kept when the memory was taken"
        );
        external.as_mut_slice().fill(0x5a);
        let host = Buffer::new(external);
        for gpu_method in [CopyMethod::Staged, CopyMethod::Batched] {
            let engine = TransferEngine::new(EngineConfig {
                gpu_method,
                staging_bytes: 32 * MIB,
                ..EngineConfig::default()
            })
            .unwrap();
            case.round_trip(&engine, &host, &format!("{what}, {gpu_method:?}"));
        }
    }
}

/// Without device memory for the staging ring (here: a 1 TiB ring), `Auto` copies with the
/// kernel instead, byte-exact, while the staged method, asked for by name, fails with an error
/// that names the ring, before anything moves.
#[test]
#[ignore = "needs a CUDA GPU"]
fn auto_falls_back_to_the_kernel_when_the_staging_ring_cannot_be_allocated() {
    use kvmem::cuda::batch::{CopyStream, DeviceCopy, Location};
    let mut case = Offload::new(512, 0xF411); // 32 MiB
    // The precondition: `Auto` stages a transfer of this shape (so the Auto case below really
    // falls back, rather than never trying).
    let copies: Vec<DeviceCopy> = (0..512)
        .map(|k| DeviceCopy {
            src: (1 << 40) + (case.ids[k] * BLOCK) as u64,
            dst: (1 << 44) + (k * BLOCK) as u64,
            len: BLOCK as u64,
        })
        .collect();
    let stream = CopyStream::new(&common::gpu()).unwrap();
    assert_eq!(
        stream
            .resolve(
                CopyMethod::Auto,
                &copies,
                Location::Device(0),
                Location::Host
            )
            .unwrap(),
        CopyMethod::Staged
    );
    for gpu_method in [CopyMethod::Auto, CopyMethod::Staged] {
        let host = case.region(common::Tier::Pinned);
        let engine = TransferEngine::new(EngineConfig {
            gpu_method,
            staging_bytes: 1 << 40,
            ..EngineConfig::default()
        })
        .unwrap();
        let done = case.offload(&engine, &host);
        if gpu_method == CopyMethod::Staged {
            let e = done.expect_err("a 1 TiB staging ring cannot be allocated");
            assert!(e.to_string().contains("staging ring"), "{e}");
        } else {
            done.unwrap();
            case.assert_offloaded(&host, "Auto");
        }
    }
}
