//! Unit tests of the staged method's packing (`staged.rs`), in their own file.

use super::*;

const BASE: u64 = 1 << 40;

/// One slab as [`pack`] handed it out, owned.
#[derive(Debug)]
struct Slab {
    slot: usize,
    kernel: Vec<DeviceCopy>,
    dma: Vec<DeviceCopy>,
}

struct Plan {
    slabs: Vec<Slab>,
}

/// [`pack`] over `copies` in host order (the host side is the destination's for a gather).
fn pack_all<E>(
    copies: &[DeviceCopy],
    gather: bool,
    geometry: (u64, u64, usize),
    joins: &HostJoins,
    emit: impl FnMut(super::Slab<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut scratch = Vec::new();
    let shape = Shape::of(copies, Some(gather));
    pack(
        &in_host_order(copies, &shape, &mut scratch),
        gather,
        geometry,
        joins,
        emit,
    )
}

fn plan_cut(
    copies: &[DeviceCopy],
    gather: bool,
    (base, slot, slots): (u64, u64, usize),
    cuts: &[u64],
) -> Plan {
    let joins = HostJoins::Except(cuts.to_vec());
    let mut slabs = Vec::new();
    pack_all::<()>(copies, gather, (base, slot, slots), &joins, |s| {
        slabs.push(Slab {
            slot: s.slot,
            kernel: s.device_side.to_vec(),
            dma: s.dma.to_vec(),
        });
        Ok(())
    })
    .unwrap();
    Plan { slabs }
}

fn plan(copies: &[DeviceCopy], gather: bool, base: u64, slot: u64, slots: usize) -> Plan {
    plan_cut(copies, gather, (base, slot, slots), &[])
}

/// Applies a plan to byte maps (address -> byte) of the device and host, in slab order:
/// gather runs each slab's kernel copies then its DMAs, scatter the reverse.
fn apply(plan: &Plan, gather: bool, mem: &mut std::collections::HashMap<u64, u8>) {
    let run = |mem: &mut std::collections::HashMap<u64, u8>, c: &DeviceCopy| {
        let bytes: Vec<u8> = (0..c.len).map(|i| mem[&(c.src + i)]).collect();
        for (i, b) in bytes.into_iter().enumerate() {
            mem.insert(c.dst + i as u64, b);
        }
    };
    for slab in &plan.slabs {
        let kernel = &slab.kernel;
        if gather {
            kernel.iter().for_each(|c| run(mem, c));
            slab.dma.iter().for_each(|c| run(mem, c));
        } else {
            slab.dma.iter().for_each(|c| run(mem, c));
            kernel.iter().for_each(|c| run(mem, c));
        }
    }
}

fn check(copies: &[DeviceCopy], gather: bool, slot: u64, slots: usize) -> Plan {
    let plan = plan(copies, gather, BASE, slot, slots);
    let mut mem = std::collections::HashMap::new();
    for c in copies {
        for i in 0..c.len {
            mem.insert(c.src + i, ((c.src + i) * 31 % 251) as u8);
        }
    }
    apply(&plan, gather, &mut mem);
    for c in copies {
        for i in 0..c.len {
            assert_eq!(
                mem[&(c.dst + i)],
                ((c.src + i) * 31 % 251) as u8,
                "{c:?} byte {i}"
            );
        }
    }
    for (i, s) in plan.slabs.iter().enumerate() {
        assert_eq!(s.slot, i % slots);
        let bytes: u64 = s.kernel.iter().map(|c| c.len).sum();
        let dma: u64 = s.dma.iter().map(|c| c.len).sum();
        assert_eq!(bytes, dma);
        assert!(bytes <= slot);
        // Every staged byte lies in the slab's slot.
        let lo = BASE + s.slot as u64 * slot;
        for c in &s.dma {
            let staged = if gather { c.src } else { c.dst };
            assert!(staged >= lo && staged + c.len <= lo + slot);
        }
    }
    plan
}

fn copy(src: u64, dst: u64, len: u64) -> DeviceCopy {
    DeviceCopy { src, dst, len }
}

#[test]
fn a_gather_into_a_contiguous_run_is_one_dma_per_slot() {
    // Eight 16-byte device chunks in a shuffled order into one host run; 32-byte slots.
    let order = [5u64, 2, 7, 0, 3, 6, 1, 4];
    let copies: Vec<DeviceCopy> = order
        .iter()
        .enumerate()
        .map(|(k, &b)| copy(1000 + b * 16, 50_000 + k as u64 * 16, 16))
        .collect();
    let plan = check(&copies, true, 32, 2);
    assert_eq!(plan.slabs.len(), 4);
    assert!(
        plan.slabs
            .iter()
            .all(|s| s.dma.len() == 1 && s.kernel.len() == 2)
    );
    assert_eq!(
        plan.slabs.iter().map(|s| s.slot).collect::<Vec<_>>(),
        [0, 1, 0, 1]
    );
}

#[test]
fn a_scatter_from_a_contiguous_run_and_copies_split_at_slot_ends() {
    // Three 24-byte chunks (not a divisor of the 32-byte slot) from one host run.
    let copies = [
        copy(90_000, 3000, 24),
        copy(90_024, 1000, 24),
        copy(90_048, 2000, 24),
    ];
    let plan = check(&copies, false, 32, 3);
    assert_eq!(plan.slabs.len(), 3); // 72 bytes: 32 + 32 + 8
    assert!(plan.slabs.iter().all(|s| s.dma.len() == 1));
    assert_eq!(plan.slabs.iter().map(|s| s.kernel.len()).sum::<usize>(), 5); // 24+8 | 16+16 | 8
}

#[test]
fn an_onboard_listed_in_device_order_is_still_one_dma_per_slot() {
    // A contiguous host run whose chunks are listed in the order of their device
    // destinations (as a layer-separate onboard lists them), not of their host sources.
    let copies: Vec<DeviceCopy> = [3u64, 0, 2, 5, 1, 4, 7, 6]
        .iter()
        .enumerate()
        .map(|(i, &k)| copy(90_000 + k * 16, 5_000 + i as u64 * 100, 16))
        .collect();
    let plan = check(&copies, false, 64, 2);
    assert_eq!(plan.slabs.len(), 2); // 128 bytes in 64-byte slots
    assert!(
        plan.slabs.iter().all(|s| s.dma.len() == 1),
        "one DMA per slot, not one per chunk: {:?}",
        plan.slabs
    );
}

#[test]
fn scattered_host_ranges_get_a_dma_each_and_random_lists_round_trip() {
    let copies = [
        copy(0, 10_000, 8),
        copy(100, 20_000, 8),
        copy(200, 10_016, 8),
    ];
    let plan = check(&copies, true, 64, 2);
    assert_eq!(plan.slabs.len(), 1);
    assert_eq!(
        plan.slabs[0].dma.len(),
        3,
        "non-adjacent host ranges stay apart"
    );
    let mut rng = fastrand::Rng::with_seed(12);
    for round in 0..50 {
        let n = rng.usize(1..40);
        let mut at = 0u64;
        let mut copies = Vec::new();
        for k in 0..n {
            let len = rng.u64(1..100);
            copies.push(copy(
                at,
                1_000_000 + (k as u64) * 1000 + rng.u64(0..2) * 7,
                len,
            ));
            at += len + rng.u64(0..3);
        }
        let gather = round % 2 == 0;
        let copies: Vec<DeviceCopy> = if gather {
            copies
        } else {
            copies.iter().map(|c| copy(c.dst, c.src, c.len)).collect()
        };
        check(&copies, gather, rng.u64(1..130), rng.usize(1..5));
    }
}

#[test]
fn host_order_places_tiled_chunks_and_sorts_the_rest() {
    let mut rng = fastrand::Rng::with_seed(7);
    let host = |c: &DeviceCopy| c.src;
    for round in 0..40 {
        let n = rng.usize(2..300);
        let len = [16u64, 48, 4096][round % 3];
        let mut order: Vec<u64> = (0..n as u64).collect();
        rng.shuffle(&mut order);
        let mut copies: Vec<DeviceCopy> = order
            .iter()
            .enumerate()
            .map(|(i, &k)| copy(5_000 + k * len, 1 << 30 | (i as u64) << 16, len))
            .collect();
        match round % 4 {
            // A source read twice: no tiling, sorted instead.
            1 => copies[n - 1].src = copies[0].src,
            // A hole in the host run.
            2 => copies[0].src += len * n as u64,
            // Lengths differ.
            3 => copies[0].len += 16,
            _ => {}
        }
        let shape = Shape::of(&copies, Some(false));
        let mut scratch = Vec::new();
        assert_eq!(
            placed(&copies, &shape, &mut scratch),
            round % 4 == 0,
            "round {round}"
        );
        let order = in_host_order(&copies, &shape, &mut scratch);
        assert_eq!(matches!(order, HostOrder::Placed { .. }), round % 4 == 0);
        let ordered: Vec<DeviceCopy> = (0..order.len()).map(|k| *order.get(k)).collect();
        assert!(ordered.windows(2).all(|w| host(&w[0]) <= host(&w[1])));
        let mut a = ordered;
        let mut b = copies.clone();
        a.sort_unstable_by_key(|c| (c.src, c.dst));
        b.sort_unstable_by_key(|c| (c.src, c.dst));
        assert_eq!(a, b, "the same copies, reordered");
    }
}

#[test]
fn the_descriptor_bound_holds_for_what_pack_and_split_make() {
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..30 {
        let n = rng.usize(1..60);
        let copies: Vec<DeviceCopy> = (0..n as u64)
            .map(|k| copy(k << 32, (1 << 50) + (k << 24), 16 * rng.u64(1..40_000)))
            .collect();
        let slot = 16 * rng.u64(1 << 10..1 << 16);
        let mut made = 0;
        pack_all::<()>(
            &copies,
            true,
            (BASE, slot, 3),
            &HostJoins::Except(Vec::new()),
            |s| {
                let shape = Shape::of(s.device_side, None);
                made += super::split_for_kernel(s.device_side, &shape, 132).len();
                Ok(())
            },
        )
        .unwrap();
        let bound = descriptor_bound(&Shape::of(&copies, Some(true)), slot);
        assert!(made <= bound, "{made} > {bound}");
    }
}

#[test]
fn a_ring_is_eight_slots_of_whole_mib() {
    assert_eq!(slot_bytes_for(DEFAULT_STAGING_BYTES), 32 << 20);
    assert_eq!(slot_bytes_for(64 << 20), 8 << 20);
    assert_eq!(slot_bytes_for(100 << 20), 12 << 20);
    assert_eq!(slot_bytes_for(0), 1 << 20);
}

/// What `Auto` makes of `copies` from `src` to `dst`: staged or not.
fn stages(copies: &[DeviceCopy], src: Location, dst: Location) -> bool {
    suits(&Shape::between(copies, src, dst), src, dst)
}

#[test]
fn auto_stages_transfers_whose_host_side_is_one_run() {
    let (dev, host) = (Location::Device(0), Location::Host);
    let mb = 1u64 << 20;
    // 32 chunks of 1 MiB, device side shuffled, host side one run.
    let copies: Vec<DeviceCopy> = (0..32u64)
        .map(|k| copy((1 << 40) + ((k * 7) % 32) * 3 * mb, (1 << 44) + k * mb, mb))
        .collect();
    assert!(stages(&copies, dev, host));
    let reversed: Vec<DeviceCopy> = copies.iter().map(|c| copy(c.dst, c.src, c.len)).collect();
    assert!(stages(&reversed, host, dev));
    // Device to device, or host on both sides: nothing to stage.
    assert!(!stages(&copies, dev, dev));
    assert!(!stages(&copies, host, host));
    // Too small, or a hole in the host run.
    assert!(!stages(&copies[..8], dev, host));
    // Small copies: staged only from 256 MiB on.
    let chunks = |n: u64| -> Vec<DeviceCopy> {
        (0..n)
            .map(|k| {
                copy(
                    (1 << 40) + ((k * 7) % n) * 32768,
                    (1 << 44) + k * 16384,
                    16384,
                )
            })
            .collect()
    };
    assert!(!stages(&chunks(2048), dev, host));
    assert!(stages(&chunks(16384), dev, host));
    let mut holed = copies.clone();
    holed[5].dst += 64 * mb;
    assert!(!stages(&holed, dev, host));
}

#[test]
fn host_ranges_are_never_joined_across_a_registration_cut() {
    // Eight 16-byte chunks of one host run, a registration boundary after the third; one
    // 128-byte slot: without the cut one DMA, with it two, split exactly there.
    let copies: Vec<DeviceCopy> = (0..8u64)
        .map(|k| copy(1000 + ((k * 3) % 8) * 64, 50_000 + k * 16, 16))
        .collect();
    let whole = plan_cut(&copies, true, (BASE, 128, 2), &[]);
    assert_eq!(whole.slabs[0].dma.len(), 1);
    let cut = plan_cut(&copies, true, (BASE, 128, 2), &[50_048]);
    let dma = &cut.slabs[0].dma;
    assert_eq!(dma.len(), 2, "{dma:?}");
    assert_eq!((dma[0].dst, dma[0].len, dma[1].dst), (50_000, 48, 50_048));
    // Scatter: the host side is the source.
    let back: Vec<DeviceCopy> = copies.iter().map(|c| copy(c.dst, c.src, c.len)).collect();
    let cut = plan_cut(&back, false, (BASE, 128, 2), &[50_048]);
    assert_eq!(cut.slabs[0].dma.len(), 2);
    // Host memory of unknown make: no joins at all, one DMA per chunk.
    let mut dmas = 0;
    pack_all::<()>(&copies, true, (BASE, 128, 2), &HostJoins::Nowhere, |s| {
        dmas += s.dma.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(dmas, copies.len());
}
