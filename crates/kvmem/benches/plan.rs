//! Criterion benchmarks of the planner alone: turning block ids into merged copy lists.
//!
//! Planning is paid on every transfer, so at small blocks it is part of the bandwidth the user
//! sees. These cases are the points the GPU goals are measured on (4096 scattered 16 KiB blocks;
//! 16384 scattered 4 KiB blocks; 1024 blocks × 32 layers × k/v of a vLLM layer-separate layout
//! into a fully contiguous one, both sides scattered, gathered into one run, scattered from one),
//! planned over host memory that is never touched.
//!
//! `cargo bench -p kvmem --bench plan`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
use kvmem::transfer::TransferPlan;
use kvmem::{Buffer, SystemStorage};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::time::Duration;

fn host(bytes: usize) -> kvmem::Result<Buffer> {
    Ok(Buffer::new(SystemStorage::new(bytes)?))
}

fn ids(n: usize, seed: Option<u64>) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..n).collect();
    if let Some(seed) = seed {
        ids.shuffle(&mut StdRng::seed_from_u64(seed));
    }
    ids
}

fn layout(
    blocks: usize,
    layers: usize,
    outer: usize,
    chunk: usize,
    kind: LayoutKind,
) -> BlockLayout {
    let config = LayoutConfig {
        num_blocks: blocks,
        num_layers: layers,
        outer_dim: outer,
        page_size: 1,
        inner_dim: chunk,
        dtype_bytes: 1,
    };
    BlockLayout::allocate(config, kind, 4096, host).unwrap()
}

fn planning(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    let fc = LayoutKind::FullyContiguous;
    let vllm = LayoutKind::LayerSeparate(BlockDim::Second);
    let cases = [
        ("4096x16K fc->fc", 4096, 1, 1, fc),
        ("16384x4K fc->fc", 16384, 1, 1, fc),
        ("1024x32x2x16K vllm->fc", 1024, 32, 2, fc),
    ];
    for (name, blocks, layers, outer, dst_kind) in cases {
        let src_kind = if layers > 1 { vllm } else { fc };
        let chunk = if blocks > 4096 { 4 << 10 } else { 16 << 10 };
        let src = layout(blocks, layers, outer, chunk, src_kind);
        let dst = layout(blocks, layers, outer, chunk, dst_kind);
        g.throughput(Throughput::Elements((blocks * layers * outer) as u64));
        for (pattern, s, d) in [
            ("sequential", ids(blocks, None), ids(blocks, None)),
            ("scattered", ids(blocks, Some(1)), ids(blocks, Some(2))),
            // The engines' offload (scattered blocks into a contiguous run) and onboard.
            ("gather", ids(blocks, Some(1)), ids(blocks, None)),
            ("scatter", ids(blocks, None), ids(blocks, Some(2))),
        ] {
            g.bench_function(BenchmarkId::new(name, pattern), |b| {
                b.iter(|| TransferPlan::blocks(&src, &s, &dst, &d).unwrap().op_count())
            });
        }
    }
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! { name = benches; config = short(); targets = planning }
criterion_main!(benches);
