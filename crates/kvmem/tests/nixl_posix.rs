//! File I/O through NIXL's POSIX backend (the real runtime): DRAM -> file -> DRAM.

#[path = "nixl_common/mod.rs"]
mod common;

use common::*;
use kvmem::nixl::raw::{LocalBlocks, TransferMemory, TransferOp};
use kvmem::nixl::{Agent, Registered};
use kvmem::{Buffer, DiskStorage, HostMemory, OffsetBuffer, SystemStorage};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const SIZE: usize = 64 << 20;

fn posix_agent(prefix: &str) -> Agent {
    Agent::new(kvmem::nixl::AgentConfig {
        backends: vec!["POSIX".into()],
        ..config(prefix)
    })
    .expect("start a POSIX agent")
}

/// The file's bytes, read with plain `pread` (not through NIXL).
/// Moves all of `mem` to all of `file` (`Write`) or back (`Read`), as one block each, and waits.
#[track_caller]
fn whole_file_transfer(
    agent: &Agent,
    op: TransferOp,
    mem: &impl TransferMemory,
    file: &impl TransferMemory,
) {
    let (mem, file) = (
        LocalBlocks::whole(mem).unwrap(),
        LocalBlocks::whole(file).unwrap(),
    );
    match op {
        TransferOp::Write => agent.write_to_file(&mem, &file),
        TransferOp::Read => agent.read_from_file(&mem, &file),
    }
    .unwrap()
    .wait_for(WAIT)
    .unwrap();
}

fn file_bytes(file: &Buffer) -> Vec<u8> {
    let disk = file
        .downcast_ref::<Registered<DiskStorage>>()
        .expect("a registered DiskStorage")
        .storage();
    // Page-aligned, so that it also works when the file is open with O_DIRECT.
    let mut buf = SystemStorage::new(disk_len(file)).unwrap();
    disk.read_at(0, buf.as_mut_slice()).unwrap();
    buf.as_slice().to_vec()
}

fn disk_len(file: &Buffer) -> usize {
    kvmem::MemoryDescriptor::size(file)
}

#[test]
fn dram_to_file_to_dram_64m() {
    let agent = posix_agent("posix");
    agent.require_backend("posix").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(11, SIZE);
    let src = filled(&agent, &data);
    let file = Buffer::new(
        agent
            .register(DiskStorage::new_in(dir.path(), SIZE).unwrap())
            .unwrap(),
    );
    let path = file
        .downcast_ref::<Registered<DiskStorage>>()
        .unwrap()
        .storage()
        .path()
        .to_path_buf();

    whole_file_transfer(&agent, TransferOp::Write, &src, &file);
    assert_same(&file_bytes(&file), &data, "file after NIXL write");

    let back = poisoned(&agent, SIZE);
    whole_file_transfer(&agent, TransferOp::Read, &back, &file);
    assert_same(bytes(&back), &data, "memory after NIXL read");

    // Dropping the last handle deregisters the file and then removes it.
    assert!(path.exists());
    drop(file);
    assert!(!path.exists(), "the file is removed once deregistered");
}

#[test]
fn file_blocks_at_offsets_and_prepared_file_lists() {
    const BLOCK: usize = 1 << 20;
    const N: usize = 8;
    let agent = posix_agent("posix-blocks");
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(12, N * BLOCK);
    let src = filled(&agent, &data);
    let file = Buffer::new(
        agent
            .register(DiskStorage::new_in(dir.path(), N * BLOCK).unwrap())
            .unwrap(),
    );

    // Memory block i goes to file block N-1-i, through prepared lists.
    let mut mem = LocalBlocks::new();
    let mut blocks = LocalBlocks::new();
    for i in 0..N {
        mem.push(&OffsetBuffer::new(src.clone(), i * BLOCK, BLOCK).unwrap())
            .unwrap();
        blocks
            .push(&OffsetBuffer::new(file.clone(), i * BLOCK, BLOCK).unwrap())
            .unwrap();
    }
    let pm = agent.prepare_local(&mem).unwrap();
    let pf = agent.prepare_file(&blocks).unwrap();
    assert_eq!(pf.target(), agent.name());
    write_reversed(&agent, &pm, &pf, N);
    let on_disk = file_bytes(&file);
    assert_reversed(&on_disk, &data, BLOCK, "file blocks");

    // Read file blocks 2..4 back into a poisoned buffer with a fresh (unprepared) list.
    let back = poisoned(&agent, 2 * BLOCK);
    let middle = OffsetBuffer::new(file.clone(), 2 * BLOCK, 2 * BLOCK).unwrap();
    whole_file_transfer(&agent, TransferOp::Read, &back, &middle);
    assert_same(
        bytes(&back),
        &on_disk[2 * BLOCK..4 * BLOCK],
        "file range read back",
    );
    // The prepared lists can be used again: read everything back in order.
    let all_back = poisoned(&agent, N * BLOCK);
    let mut dst = LocalBlocks::new();
    for i in 0..N {
        dst.push(&OffsetBuffer::new(all_back.clone(), i * BLOCK, BLOCK).unwrap())
            .unwrap();
    }
    let pd = agent.prepare_local(&dst).unwrap();
    agent
        .post_prepared(TransferOp::Read, &pd, &pf, None)
        .unwrap()
        .wait_for(WAIT)
        .unwrap();
    assert_same(bytes(&all_back), &on_disk, "prepared file READ");
}
