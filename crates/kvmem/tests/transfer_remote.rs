//! Block transfers between two NIXL agents (UCX, the real runtime) through the transfer engine:
//! randomized WRITEs and READs between every pair of layouts, checked byte for byte against a
//! reference computed from the documented dimension orders, and every bad request refused
//! before anything moves.

mod common;
#[path = "nixl_common/mod.rs"]
mod nixl_common;

use common::cases::{geometry, random_config, reference_offset};
use kvmem::Completion;
use kvmem::error::{LayoutError, NixlError, PeerError, TransferError, UnsupportedError};
use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
use kvmem::nixl::Agent;
use kvmem::transfer::{
    EngineConfig, LayoutDescriptor, RegisteredLayout, RemoteLayout, TransferEngine, TransferHandle,
    TransferPath, TransferStats,
};
use kvmem::{Buffer, Error, HostMemory, Storage, SystemStorage};
use nixl_common::{agent, assert_same, bytes};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

/// A layout of `kind` over host regions registered with `agent`, filled with random bytes; and
/// the regions' initial contents.
fn registered(
    agent: &Agent,
    config: LayoutConfig,
    kind: LayoutKind,
    rng: &mut StdRng,
) -> (RegisteredLayout, Vec<Vec<u8>>) {
    registered_over(agent, config, kind, 1, rng, host_copy)
}

/// Host memory holding `image`.
fn host_copy(image: &[u8]) -> SystemStorage {
    let mut s = SystemStorage::new(image.len()).unwrap();
    s.copy_from(0, image).unwrap();
    s
}

/// [`registered`] over the regions (aligned to `alignment`) that `store` makes from each
/// region's random initial contents.
fn registered_over<S: Storage>(
    agent: &Agent,
    config: LayoutConfig,
    kind: LayoutKind,
    alignment: usize,
    rng: &mut StdRng,
    store: impl Fn(&[u8]) -> S,
) -> (RegisteredLayout, Vec<Vec<u8>>) {
    let (count, len) = config.regions(kind).unwrap();
    let mut images = Vec::new();
    let mut regions = Vec::new();
    for _ in 0..count {
        let mut image = vec![0u8; len];
        rng.fill_bytes(&mut image);
        let registered = agent.register(store(&image)).map_err(|e| e.error).unwrap();
        regions.push(Buffer::new(registered));
        images.push(image);
    }
    let layout = BlockLayout::new(config, kind, regions, alignment).unwrap();
    (RegisteredLayout::new(agent, layout).unwrap(), images)
}

/// `images` of `dst` after copying blocks `src_ids[i]` of `src` to `dst_ids[i]`.
fn expected(
    (src_kind, sc, src): (LayoutKind, &LayoutConfig, &[Vec<u8>]),
    (dst_kind, dc, dst): (LayoutKind, &LayoutConfig, &[Vec<u8>]),
    src_ids: &[usize],
    dst_ids: &[usize],
) -> Vec<Vec<u8>> {
    let chunk = sc.page_size * sc.inner_dim * sc.dtype_bytes;
    let mut out = dst.to_vec();
    for (&s, &d) in src_ids.iter().zip(dst_ids) {
        for l in 0..sc.num_layers {
            for o in 0..sc.outer_dim {
                let (sr, so) = reference_offset(src_kind, sc, s, l, o);
                let (dr, doff) = reference_offset(dst_kind, dc, d, l, o);
                out[dr][doff..doff + chunk].copy_from_slice(&src[sr][so..so + chunk]);
            }
        }
    }
    out
}

/// Asserts that region images `got` are `dst` after copying blocks `src_ids[i]` of `src` to
/// `dst_ids[i]` (see [`expected`]); `what` names the check.
fn assert_copied(
    got: &[Vec<u8>],
    src: (LayoutKind, &LayoutConfig, &[Vec<u8>]),
    dst: (LayoutKind, &LayoutConfig, &[Vec<u8>]),
    (src_ids, dst_ids): (&[usize], &[usize]),
    what: &str,
) {
    let want = expected(src, dst, src_ids, dst_ids);
    assert_images(got, &want, what);
}

/// Asserts that region images `got` are `want`, region by region.
fn assert_images(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: region count");
    for (r, (got, want)) in got.iter().zip(want).enumerate() {
        assert_same(got, want, &format!("{what}: region {r}"));
    }
}

/// The statistics of a transfer that was accepted and completed; panics, naming `what`, otherwise.
fn finished(handle: kvmem::Result<TransferHandle>, what: &str) -> TransferStats {
    handle
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .wait()
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn images(layout: &RegisteredLayout) -> Vec<Vec<u8>> {
    layout
        .layout()
        .regions()
        .iter()
        .map(|r| bytes(r).to_vec())
        .collect()
}

/// Distinct destination ids and (possibly repeating) source ids, `n` of each.
fn ids(
    rng: &mut StdRng,
    n: usize,
    src_blocks: usize,
    dst_blocks: usize,
) -> (Vec<usize>, Vec<usize>) {
    let mut d: Vec<usize> = (0..dst_blocks).collect();
    d.shuffle(rng);
    d.truncate(n);
    ((0..n).map(|_| rng.random_range(0..src_blocks)).collect(), d)
}

/// The peer's layout as the initiator sees it: the descriptor goes through JSON, as it would
/// over the wire.
fn remote_of(initiator: &Agent, target: &Agent, layout: &RegisteredLayout) -> RemoteLayout {
    let peer = initiator
        .load_peer(&target.local_metadata().unwrap())
        .unwrap();
    let wire = serde_json::to_vec(&layout.descriptor()).unwrap();
    let descriptor: LayoutDescriptor = serde_json::from_slice(&wire).unwrap();
    RemoteLayout::new(initiator, &peer, descriptor).unwrap()
}

/// An engine, two UCX agents named after `prefix` and a random generator seeded with `seed`.
fn setup(prefix: &str, seed: u64) -> (TransferEngine, Agent, Agent, StdRng) {
    (
        TransferEngine::new(EngineConfig::default()).unwrap(),
        agent(&format!("{prefix}-a")),
        agent(&format!("{prefix}-b")),
        StdRng::seed_from_u64(seed),
    )
}

#[test]
fn write_and_read_between_every_layout_pair() {
    let engine = TransferEngine::new(EngineConfig::default()).unwrap();
    let (a, b) = (agent("remote-a"), agent("remote-b"));
    let mut seed = 0x5EED_0000;
    for src_kind in LayoutKind::ALL {
        for dst_kind in LayoutKind::ALL {
            for _ in 0..3 {
                seed += 1;
                let ctx = format!("{src_kind} -> {dst_kind}, seed {seed:#x}");
                let mut rng = StdRng::seed_from_u64(seed);
                let (src_blocks, dst_blocks) = (rng.random_range(1..12), rng.random_range(1..12));
                let (sc, dc, _) = random_config(false, &mut rng, src_blocks, dst_blocks);
                let (local, local_img) = registered(&a, sc, src_kind, &mut rng);
                let (target, target_img) = registered(&b, dc, dst_kind, &mut rng);
                let remote = remote_of(&a, &b, &target);

                // WRITE local -> peer.
                let n = rng.random_range(1..=src_blocks.min(dst_blocks));
                let (s_ids, d_ids) = ids(&mut rng, n, src_blocks, dst_blocks);
                let write = engine.transfer(&local, &s_ids, &remote, &d_ids);
                let stats = finished(write, &format!("{ctx}: write"));
                assert_eq!(stats.path, TransferPath::LocalToRemote, "{ctx}");
                assert_eq!(
                    stats.bytes,
                    n * sc.chunks_per_block().unwrap() * sc.chunk_bytes().unwrap()
                );
                assert_copied(
                    &images(&target),
                    (src_kind, &sc, &local_img),
                    (dst_kind, &dc, &target_img),
                    (&s_ids, &d_ids),
                    &format!("{ctx}: peer after WRITE"),
                );

                // READ peer -> a third layout, of yet another kind, with other ids.
                let back_kind = LayoutKind::ALL[rng.random_range(0..3)];
                let bc = LayoutConfig {
                    num_blocks: rng.random_range(1..12),
                    ..sc
                };
                let (back, back_img) = registered(&a, bc, back_kind, &mut rng);
                let n = rng.random_range(1..=dst_blocks.min(bc.num_blocks));
                let (s_ids, d_ids) = ids(&mut rng, n, dst_blocks, bc.num_blocks);
                let read = engine.read_remote(&remote, &s_ids, &back, &d_ids);
                let stats = finished(read, &format!("{ctx}: read"));
                assert_eq!(stats.path, TransferPath::RemoteToLocal, "{ctx}");
                assert_copied(
                    &images(&back),
                    (dst_kind, &dc, &images(&target)),
                    (back_kind, &bc, &back_img),
                    (&s_ids, &d_ids),
                    &format!("{ctx}: local after READ"),
                );
            }
        }
    }
}

#[test]
fn notification_arrives_after_the_blocks() {
    let (engine, a, b, mut rng) = setup("remote-notify", 7);
    let config = geometry(8, 2, 4, 64);
    let fc = LayoutKind::FullyContiguous;
    let (local, local_img) = registered(&a, config, fc, &mut rng);
    let vllm = LayoutKind::LayerSeparate(BlockDim::Second);
    let (target, target_img) = registered(&b, config, vllm, &mut rng);
    let remote = remote_of(&a, &b, &target);
    let (s_ids, d_ids) = ([5, 0, 3], [1, 7, 2]);
    let handle = engine
        .write_remote(&local, &s_ids, &remote, &d_ids, Some(b"blocks 1,7,2 ready"))
        .unwrap();
    // The peer learns of the blocks from the notification alone, then finds them in place.
    let note = b
        .wait_notification(a.name(), std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(note, b"blocks 1,7,2 ready");
    assert_copied(
        &images(&target),
        (fc, &config, &local_img),
        (vllm, &config, &target_img),
        (&s_ids, &d_ids),
        "peer after notification",
    );
    handle.wait().unwrap();
}

#[test]
fn bad_requests_fail_before_anything_moves() {
    let (engine, a, b, mut rng) = setup("remote-bad", 11);
    let config = geometry(4, 2, 2, 32);
    let fc = LayoutKind::FullyContiguous;
    let (local, _) = registered(&a, config, fc, &mut rng);
    let (target, target_img) = registered(&b, config, fc, &mut rng);
    let remote = remote_of(&a, &b, &target);
    let untouched = || {
        assert_images(
            &images(&target),
            &target_img,
            "peer memory after a refused request",
        )
    };

    let err = |r: kvmem::Result<kvmem::transfer::TransferHandle>| r.map(|_| ()).unwrap_err();
    assert!(matches!(
        err(engine.write_remote(&local, &[0, 1], &remote, &[0], None)),
        Error::Layout(LayoutError::BlockCountMismatch { src: 2, dst: 1 })
    ));
    assert!(matches!(
        err(engine.write_remote(&local, &[4], &remote, &[0], None)),
        Error::Layout(LayoutError::BlockOutOfRange {
            side: "source",
            block: 4,
            num_blocks: 4
        })
    ));
    assert!(matches!(
        err(engine.write_remote(&local, &[0], &remote, &[9], None)),
        Error::Layout(LayoutError::BlockOutOfRange {
            side: "destination",
            block: 9,
            ..
        })
    ));
    assert!(matches!(
        err(engine.write_remote(&local, &[0, 1], &remote, &[2, 2], None)),
        Error::Layout(LayoutError::DuplicateBlock { block: 2 })
    ));
    assert!(matches!(
        err(engine.read_remote(&remote, &[0, 1], &local, &[3, 3])),
        Error::Layout(LayoutError::DuplicateBlock { block: 3 })
    ));
    let (other_shape, _) = registered(
        &a,
        LayoutConfig {
            num_layers: 3,
            ..config
        },
        fc,
        &mut rng,
    );
    assert!(matches!(
        err(engine.write_remote(&other_shape, &[0], &remote, &[0], None)),
        Error::Layout(LayoutError::Mismatch {
            what: "layers",
            src: 3,
            dst: 2
        })
    ));

    // A local layout over unregistered memory cannot meet a peer; two peers cannot meet.
    let plain =
        BlockLayout::allocate(config, fc, 1, |n| Ok(Buffer::new(SystemStorage::new(n)?))).unwrap();
    assert!(matches!(
        err(engine.transfer(&plain, &[0], &remote, &[0])),
        Error::Unsupported(UnsupportedError::Endpoints { .. })
    ));
    assert!(matches!(
        err(engine.transfer(&remote, &[0], &remote, &[1])),
        Error::Unsupported(UnsupportedError::Endpoints { .. })
    ));
    assert!(matches!(
        RegisteredLayout::new(&a, plain.clone())
            .map(|_| ())
            .unwrap_err(),
        Error::Nixl(NixlError::NotRegistered { .. })
    ));

    // Descriptors that do not fit the peer.
    let peer = remote.peer().clone();
    let good = target.descriptor();
    let refused = |d: LayoutDescriptor| RemoteLayout::new(&a, &peer, d).map(|_| ()).unwrap_err();
    assert!(matches!(
        refused(LayoutDescriptor {
            agent: "someone-else".into(),
            ..good.clone()
        }),
        Error::Transfer(TransferError::Mismatch { .. })
    ));
    assert!(matches!(
        refused(LayoutDescriptor {
            format: 2,
            ..good.clone()
        }),
        Error::Transfer(TransferError::Mismatch { .. })
    ));
    let mut short = good.clone();
    short.regions[0].size -= 1;
    assert!(matches!(
        refused(short),
        Error::Transfer(TransferError::Mismatch { .. })
    ));
    let mut layered = good.clone();
    layered.kind = LayoutKind::LayerSeparate(BlockDim::First);
    assert!(matches!(
        refused(layered),
        Error::Transfer(TransferError::Mismatch { .. })
    ));
    // Past the end of what the peer registered: caught against the peer's manifest.
    let mut outside = good.clone();
    outside.regions[0].addr += 4096;
    assert!(matches!(
        refused(outside),
        Error::Peer(PeerError::OutOfBounds { .. })
    ));

    untouched();
    // The same engine still moves blocks after all those refusals.
    engine
        .write_remote(&local, &[1], &remote, &[2], None)
        .unwrap()
        .wait()
        .unwrap();
}

#[test]
fn a_dropped_handle_keeps_the_memory_until_the_transfer_ends() {
    let (engine, a, b, mut rng) = setup("remote-drop", 13);
    let config = geometry(64, 4, 16, 128);
    let fc = LayoutKind::FullyContiguous;
    let (target, _) = registered(&b, config, fc, &mut rng);
    let remote = remote_of(&a, &b, &target);
    let (first, second): (Vec<usize>, Vec<usize>) = ((0..32).collect(), (32..64).collect());
    let first_img = {
        let (local, local_img) = registered(&a, config, fc, &mut rng);
        // The notification tells the peer when the dropped transfer's blocks are all in place.
        let handle = engine
            .write_remote(&local, &first, &remote, &first, Some(b"first half"))
            .unwrap();
        drop(handle);
        // `local`, its registrations and prepared list are dropped here, under a possibly
        // running transfer that keeps what it uses alive.
        local_img
    };
    // A later transfer over the same peer layout still completes and is correct.
    let (local, local_img) = registered(&a, config, fc, &mut rng);
    engine
        .write_remote(&local, &second, &remote, &second, None)
        .unwrap()
        .wait()
        .unwrap();
    // The dropped transfer ran to the end, from memory that stayed alive: the peer has its bytes.
    let note = b
        .wait_notification(a.name(), std::time::Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the dropped transfer never completed: {e}"));
    assert_eq!(note, b"first half");
    let half = local_img[0].len() / 2;
    let target_img = images(&target);
    assert_same(
        &target_img[0][..half],
        &first_img[0][..half],
        "peer's first half (the dropped transfer)",
    );
    assert_same(
        &target_img[0][half..],
        &local_img[0][half..],
        "peer's second half",
    );
}

/// A layer-separate layout in GPU memory, registered with NIXL (VRAM), written to a peer's host
/// layout and read back into another GPU layout: the disaggregated-serving path, GPU KV blocks
/// to and from another node's memory.
#[test]
#[ignore = "needs a CUDA GPU"]
fn device_layouts_write_to_and_read_from_a_peer() {
    use kvmem::DeviceStorage;
    use kvmem::cuda;
    let gpu = common::gpu();
    let (engine, a, b, mut rng) = setup("remote-gpu", 17);
    let config = geometry(32, 4, 16, 64);
    let vllm = LayoutKind::LayerSeparate(BlockDim::Second);
    // Device regions with random contents, registered with agent `a`.
    let device_layout = |rng: &mut StdRng| {
        registered_over(&a, config, vllm, 256, rng, |image| {
            let d = DeviceStorage::new(&gpu, image.len()).unwrap();
            cuda::copy_host_to_device(&host_copy(image), &d).unwrap();
            d
        })
    };
    let device_images = |layout: &RegisteredLayout| -> Vec<Vec<u8>> {
        layout
            .layout()
            .regions()
            .iter()
            .map(|r| {
                let mut staging = SystemStorage::new(kvmem::MemoryDescriptor::size(r)).unwrap();
                cuda::copy_device_to_host(r, &mut staging).unwrap();
                staging.as_slice().to_vec()
            })
            .collect()
    };
    let (gpu_src, src_img) = device_layout(&mut rng);
    let fc = LayoutKind::FullyContiguous;
    let (target, target_img) = registered(&b, config, fc, &mut rng);
    let remote = remote_of(&a, &b, &target);

    let (s_ids, d_ids) = ids(&mut rng, 20, 32, 32);
    engine
        .write_remote(&gpu_src, &s_ids, &remote, &d_ids, None)
        .unwrap()
        .wait()
        .unwrap();
    assert_copied(
        &images(&target),
        (vllm, &config, &src_img),
        (fc, &config, &target_img),
        (&s_ids, &d_ids),
        "peer host layout after a WRITE from GPU memory",
    );

    let (gpu_dst, dst_img) = device_layout(&mut rng);
    let (s2, d2) = ids(&mut rng, 24, 32, 32);
    engine
        .read_remote(&remote, &s2, &gpu_dst, &d2)
        .unwrap()
        .wait()
        .unwrap();
    assert_copied(
        &device_images(&gpu_dst),
        (fc, &config, &images(&target)),
        (vllm, &config, &dst_img),
        (&s2, &d2),
        "GPU layout after a READ from the peer",
    );
}
