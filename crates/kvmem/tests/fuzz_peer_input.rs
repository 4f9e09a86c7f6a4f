//! Every decoder kvmem runs over bytes a peer sent, over generated and mutated inputs: the
//! metadata envelope ([`PeerMetadata::parse`]), the [`PeerManifest`] and the
//! [`LayoutDescriptor`]. Zero panics, every refusal an error of the decoder's documented kind,
//! and no allocation driven by an untrusted count before it is bounded (a counting allocator
//! watches the largest single allocation).
//!
//! CI runs `KVMEM_FUZZ_INPUTS` (default 100 000) inputs per decoder; the `#[ignore]`d
//! `..._one_million` tests run 1 000 000 each (`cargo test --release -p kvmem --test
//! fuzz_peer_input -- --ignored --nocapture`). The counts are recorded in docs/SECURITY.md.

mod fuzz_support;

use fuzz_support::{assert_clean, inputs, run};
use kvmem::Error;
use kvmem::error::{BoundsError, LayoutError, PeerError, TransferError};
use kvmem::layout::{BlockDim, LayoutConfig, LayoutKind};
use kvmem::nixl::metadata::{ENVELOPE_MAGIC, MAX_MANIFEST_REGIONS};
use kvmem::nixl::{MemType, NixlDescriptor, PeerManifest, PeerMetadata};
use kvmem::transfer::{LAYOUT_DESCRIPTOR_FORMAT, LayoutDescriptor, MAX_REMOTE_CHUNKS};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, noting the largest single request of a thread while its `WATCH` is on.
struct Counting;

thread_local! {
    static WATCH: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if WATCH.with(Cell::get) {
        LARGEST.with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest single allocation `f` made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    WATCH.with(|w| w.set(true));
    let out = f();
    WATCH.with(|w| w.set(false));
    (out, LARGEST.with(Cell::get))
}

fn manifest(regions: usize) -> PeerManifest {
    PeerManifest {
        format: 1,
        agent: "decode-3".into(),
        regions: (0..regions)
            .map(|i| NixlDescriptor::dram(0x7f00_0000_0000 + (i as u64) * (1 << 26), 1 << 26))
            .collect(),
    }
}

fn envelope(m: &PeerManifest) -> Vec<u8> {
    PeerMetadata {
        manifest: Some(m.clone()),
        nixl: b"nixl-blob-bytes".to_vec(),
    }
    .to_bytes()
    .unwrap()
}

fn layout(kind: LayoutKind, blocks: usize, layers: usize) -> LayoutDescriptor {
    let config = LayoutConfig {
        num_blocks: blocks,
        num_layers: layers,
        outer_dim: 2,
        page_size: 16,
        inner_dim: 128,
        dtype_bytes: 2,
    };
    let (count, bytes) = config.regions(kind).unwrap();
    LayoutDescriptor {
        format: LAYOUT_DESCRIPTOR_FORMAT,
        agent: "prefill-0".into(),
        config,
        kind,
        regions: (0..count)
            .map(|i| NixlDescriptor {
                addr: 0x7000_0000_0000 + (i as u64) * (bytes as u64),
                size: bytes,
                mem_type: MemType::Vram,
                device_id: 1,
            })
            .collect(),
    }
}

fn envelope_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = [0, 1, 2, 5]
        .iter()
        .map(|&n| envelope(&manifest(n)))
        .collect();
    seeds.push(b"plain nixl blob".to_vec());
    seeds
}

fn manifest_seeds() -> Vec<Vec<u8>> {
    [0, 1, 3]
        .iter()
        .map(|&n| serde_json::to_vec(&manifest(n)).unwrap())
        .collect()
}

fn layout_seeds() -> Vec<Vec<u8>> {
    [
        layout(LayoutKind::FullyContiguous, 8, 4),
        layout(LayoutKind::LayerSeparate(BlockDim::First), 4, 3),
        layout(LayoutKind::LayerSeparate(BlockDim::Second), 2, 2),
    ]
    .iter()
    .map(|d| serde_json::to_vec(d).unwrap())
    .collect()
}

fn envelope_decoder(b: &[u8]) -> Result<bool, String> {
    match PeerMetadata::parse(b) {
        Ok(m) => {
            // What parsed writes back and parses to the same.
            let again = PeerMetadata::parse(&m.to_bytes().map_err(|e| e.to_string())?)
                .map_err(|e| format!("a parsed envelope does not parse again: {e}"))?;
            if again != m {
                return Err("a parsed envelope changed on the round trip".into());
            }
            Ok(true)
        }
        Err(Error::Peer(PeerError::MalformedMetadata { .. })) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

fn manifest_decoder(b: &[u8]) -> Result<bool, String> {
    // A manifest is JSON; serde's error is the decoder's typed refusal.
    match serde_json::from_slice::<PeerManifest>(b) {
        Ok(m) if m.regions.len() <= MAX_MANIFEST_REGIONS => Ok(true),
        Ok(m) => Err(format!("{} regions were accepted", m.regions.len())),
        Err(_) => Ok(false),
    }
}

fn layout_decoder(b: &[u8]) -> Result<bool, String> {
    match LayoutDescriptor::decode(b) {
        Ok(d) => match d.check() {
            Ok(n) if n <= MAX_REMOTE_CHUNKS => Ok(true),
            other => Err(format!("decode accepted what check says: {other:?}")),
        },
        Err(
            Error::Transfer(TransferError::Mismatch { .. })
            | Error::Bounds(BoundsError::Overflow { .. } | BoundsError::ZeroSize { .. })
            | Error::Layout(LayoutError::Invalid(_)),
        ) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

fn fuzz_all(n: u64) {
    let t = run(
        "metadata envelope",
        1,
        n,
        &envelope_seeds(),
        envelope_decoder,
    );
    assert_clean("metadata envelope", &t);
    let t = run("PeerManifest", 2, n, &manifest_seeds(), manifest_decoder);
    assert_clean("PeerManifest", &t);
    let t = run("LayoutDescriptor", 3, n, &layout_seeds(), layout_decoder);
    assert_clean("LayoutDescriptor", &t);
}

#[test]
fn peer_decoders_survive_mutated_input() {
    fuzz_all(inputs(100_000));
}

#[test]
#[ignore = "1M inputs per decoder: run in release by the lead (see the module docs)"]
fn peer_decoders_survive_one_million_inputs_each() {
    fuzz_all(1_000_000);
}

/// An envelope announcing a 4 GiB manifest in a few bytes is refused without allocating it.
#[test]
fn an_envelope_claiming_a_huge_manifest_allocates_nothing_large() {
    let mut b = ENVELOPE_MAGIC.to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(b"{}");
    let (r, largest) = largest_allocation(|| PeerMetadata::parse(&b));
    assert!(
        matches!(r, Err(Error::Peer(PeerError::MalformedMetadata { .. }))),
        "{r:?}"
    );
    assert!(largest < 4096, "largest allocation {largest} bytes");
}

/// A manifest listing more than [`MAX_MANIFEST_REGIONS`] regions is refused while it is read:
/// the vector never grows past the bound.
#[test]
fn a_manifest_with_too_many_regions_is_refused_while_reading() {
    let json = serde_json::to_vec(&manifest(MAX_MANIFEST_REGIONS + 1)).unwrap();
    let (r, largest) = largest_allocation(|| {
        serde_json::from_slice::<PeerManifest>(&json).map(|m| m.regions.len())
    });
    let e = r.expect_err("the manifest was accepted").to_string();
    assert!(e.contains("more than 65536 regions"), "{e}");
    // 2^16 descriptors of 32 bytes, doubled once by the vector's growth.
    assert!(largest <= 2 * 32 * MAX_MANIFEST_REGIONS + 4096, "{largest}");
    // The bound itself is accepted.
    let json = serde_json::to_vec(&manifest(MAX_MANIFEST_REGIONS)).unwrap();
    assert_eq!(
        serde_json::from_slice::<PeerManifest>(&json)
            .unwrap()
            .regions
            .len(),
        MAX_MANIFEST_REGIONS
    );
}

/// A layout descriptor claiming 2^40 blocks (2^42 chunks) in a few hundred bytes, with
/// regions large enough on paper, is refused before anything is allocated for its chunks.
#[test]
fn a_layout_claiming_2_pow_40_blocks_is_refused_before_allocating() {
    for blocks in [1usize << 40, MAX_REMOTE_CHUNKS / 4 + 1] {
        let mut d = layout(LayoutKind::FullyContiguous, 1, 2);
        d.config.num_blocks = blocks;
        d.config.page_size = 1;
        d.config.inner_dim = 1;
        d.config.dtype_bytes = 1;
        d.regions[0].size = usize::MAX / 2;
        d.regions[0].addr = 0x1000;
        let json = serde_json::to_vec(&d).unwrap();
        let (r, largest) = largest_allocation(|| LayoutDescriptor::decode(&json));
        assert!(
            matches!(r, Err(Error::Bounds(BoundsError::Overflow { .. }))),
            "{blocks} blocks: {r:?}"
        );
        assert!(
            largest < 64 << 10,
            "{blocks} blocks: largest allocation {largest}"
        );
    }
}
