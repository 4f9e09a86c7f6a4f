//! Criterion benchmarks of the transfer paths that need no GPU: host ↔ host and host ↔ disk.
//!
//! Each group pairs a block transfer with its reference, one large copy of the same bytes over
//! the same path, so a regression in the planner or an executor shows as a drop in the ratio.
//! Host ↔ disk runs on each disk backend (`io_uring`, and `nixl-posix` where the NIXL runtime
//! loads), plus the fixed per-transfer cost of each.
//! `KVMEM_DISK_DIR` picks the directory of the disk files (default: the system temp dir).
//!
//! `cargo bench -p kvmem --bench transfer_host`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kvmem::Completion;
use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine};
use kvmem::{Buffer, DiskStorage, HostMemory, MemoryDescriptor, SystemStorage};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::time::Duration;

const TOTAL: usize = 64 << 20;

fn config(block: usize, blocks: usize) -> LayoutConfig {
    LayoutConfig {
        num_blocks: blocks,
        num_layers: 1,
        outer_dim: 1,
        page_size: 1,
        inner_dim: block,
        dtype_bytes: 1,
    }
}

fn host(bytes: usize) -> kvmem::Result<Buffer> {
    let mut s = SystemStorage::new(bytes)?;
    s.memset(0x5a); // fault the pages in
    Ok(Buffer::new(s))
}

fn disk(bytes: usize) -> kvmem::Result<Buffer> {
    Ok(Buffer::new(DiskStorage::new(bytes)?))
}

fn scattered(n: usize, seed: u64) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..n).collect();
    ids.shuffle(&mut StdRng::seed_from_u64(seed));
    ids
}

fn host_to_host(c: &mut Criterion) {
    let engine = TransferEngine::new(EngineConfig::default()).unwrap();
    let mut g = c.benchmark_group("host->host");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    for block in [16 << 10, 64 << 10, 2 << 20] {
        let n = TOTAL / block;
        let cfg = config(block, n);
        let src = BlockLayout::allocate(cfg, LayoutKind::FullyContiguous, 4096, host).unwrap();
        let dst = BlockLayout::allocate(cfg, LayoutKind::FullyContiguous, 4096, host).unwrap();
        let (s, d) = (scattered(n, 1), scattered(n, 2));
        g.bench_function(BenchmarkId::new("scattered", block), |b| {
            b.iter(|| {
                engine
                    .copy_blocks(&src, &s, &dst, &d)
                    .unwrap()
                    .wait()
                    .unwrap()
            })
        });
    }
    let a = host(TOTAL).unwrap();
    let b2 = host(TOTAL).unwrap();
    g.bench_function("reference (one region copy)", |b| {
        b.iter(|| engine.copy_region(&a, &b2).unwrap().wait().unwrap())
    });
    let mut x = SystemStorage::new(TOTAL).unwrap();
    x.memset(1);
    let mut y = SystemStorage::new(TOTAL).unwrap();
    y.memset(2);
    g.bench_function("one memcpy, one thread", |b| {
        b.iter(|| y.as_mut_slice().copy_from_slice(x.as_slice()))
    });
    g.finish();

    // Layer-separate (vLLM) -> fully contiguous: 32 layers x k/v x 16 KiB chunks.
    let mut g = c.benchmark_group("host->host layouts");
    let cfg = LayoutConfig {
        num_blocks: 32,
        num_layers: 32,
        outer_dim: 2,
        page_size: 16,
        inner_dim: 512,
        dtype_bytes: 2,
    };
    let bytes = 32 * cfg.block_bytes().unwrap();
    g.throughput(Throughput::Bytes(bytes as u64));
    let src = BlockLayout::allocate(cfg, LayoutKind::LayerSeparate(BlockDim::Second), 4096, host)
        .unwrap();
    let dst = BlockLayout::allocate(cfg, LayoutKind::FullyContiguous, 4096, host).unwrap();
    let ids = scattered(32, 3);
    g.bench_function(
        "layer-separate(block-second) -> fully-contiguous, 16 KiB chunks",
        |b| {
            b.iter(|| {
                engine
                    .copy_blocks(&src, &ids, &dst, &ids)
                    .unwrap()
                    .wait()
                    .unwrap()
            })
        },
    );
    g.finish();
}

fn host_disk(c: &mut Criterion) {
    let mut g = c.benchmark_group("host<->disk");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    let block = 1 << 20;
    let n = TOTAL / block;
    let cfg = config(block, n);
    let mem = BlockLayout::allocate(cfg, LayoutKind::FullyContiguous, 4096, host).unwrap();
    let file = BlockLayout::allocate(cfg, LayoutKind::FullyContiguous, 4096, disk).unwrap();
    let (s, d) = (scattered(n, 4), scattered(n, 5));
    let (m, f) = (&mem.regions()[0], &file.regions()[0]);
    assert_eq!(m.size(), f.size());
    // Both disk backends on the same buffers and file, one after the other.
    for backend in DiskBackend::ALL {
        let engine = TransferEngine::new(EngineConfig {
            disk_backend: backend,
            ..EngineConfig::default()
        })
        .unwrap();
        if let Err(e) = engine.copy_region(m, f).and_then(|h| h.wait()) {
            eprintln!("skipping the {backend} disk backend: {e}");
            continue;
        }
        for (op, (from, from_ids), (to, to_ids)) in [
            ("write", (&mem, &s), (&file, &d)),
            ("read", (&file, &d), (&mem, &s)),
        ] {
            g.bench_function(format!("{backend}: {op} 1 MiB scattered"), |b| {
                b.iter(|| {
                    engine
                        .copy_blocks(from, from_ids, to, to_ids)
                        .unwrap()
                        .wait()
                        .unwrap()
                })
            });
        }
        for (op, from, to) in [("write", m, f), ("read", f, m)] {
            g.bench_function(
                format!("{backend}: {op} reference (one region copy)"),
                |b| b.iter(|| engine.copy_region(from, to).unwrap().wait().unwrap()),
            );
        }
    }
    g.finish();

    // The fixed cost of a transfer: one 4 KiB block. For nixl-posix it includes registering
    // and deregistering the host buffer and the file, which that backend does per transfer.
    let mut g = c.benchmark_group("host<->disk per-transfer cost");
    let small = config(4096, 16);
    let mem = BlockLayout::allocate(small, LayoutKind::FullyContiguous, 4096, host).unwrap();
    let file = BlockLayout::allocate(small, LayoutKind::FullyContiguous, 4096, disk).unwrap();
    for backend in DiskBackend::ALL {
        let engine = TransferEngine::new(EngineConfig {
            disk_backend: backend,
            ..EngineConfig::default()
        })
        .unwrap();
        if engine
            .copy_blocks(&mem, &[0], &file, &[0])
            .and_then(|h| h.wait())
            .is_err()
        {
            continue;
        }
        g.bench_function(format!("{backend}: write one 4 KiB block"), |b| {
            b.iter(|| {
                engine
                    .copy_blocks(&mem, &[3], &file, &[5])
                    .unwrap()
                    .wait()
                    .unwrap()
            })
        });
    }
    // What nixl-posix adds per transfer: register and deregister a host region and a file
    // region with a POSIX-only agent (the executor's own agent does exactly this).
    if let Ok(agent) = kvmem::nixl::Agent::new(kvmem::nixl::AgentConfig {
        backends: vec!["POSIX".to_owned()],
        ..kvmem::nixl::AgentConfig::new("")
    }) {
        let (hm, fm) = (&mem.regions()[0], &file.regions()[0]);
        g.bench_function(
            "nixl-posix: register + deregister host and file regions",
            |b| {
                b.iter(|| {
                    let h = agent.register(hm.clone()).unwrap();
                    let f = agent.register(fm.clone()).unwrap();
                    drop((f, h));
                })
            },
        );
    }
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = short(); targets = host_to_host, host_disk }
criterion_main!(benches);
