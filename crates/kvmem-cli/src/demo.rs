//! `kvmem demo`: a host-only tour of the memory model that checks every step.

use crate::error::{CliError, Result};
use clap::Args;
use kvmem::{
    ArenaAllocator, Buffer, DiskStorage, HostMemory, MemoryDescriptor, OffsetBuffer, SystemStorage,
    TensorDescriptor,
};
use std::path::PathBuf;

/// Arguments of `kvmem demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's disk file (default: `$KVMEM_DISK_DIR`, else the temp dir).
    #[arg(long)]
    disk_dir: Option<PathBuf>,
    /// Bytes per KV block.
    #[arg(long, default_value_t = 64 * 1024)]
    block_size: usize,
    /// Number of blocks.
    #[arg(long, default_value_t = 64)]
    blocks: usize,
}

fn check(ok: bool, what: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(CliError::Check(what.into()))
    }
}

/// Runs `kvmem demo`.
pub fn run(args: &DemoArgs) -> Result<()> {
    let total = args
        .block_size
        .checked_mul(args.blocks)
        .ok_or(kvmem::Error::Bounds(kvmem::error::BoundsError::Overflow {
            what: "demo size",
        }))?;
    // A KV cache tensor of `blocks` blocks, described and laid over host memory.
    let tensor = TensorDescriptor::contiguous(&[args.blocks, args.block_size / 2], 2)?;
    let mut host = SystemStorage::new(total)?;
    tensor.check_fits(0, host.size())?;
    for (i, b) in host.as_mut_slice().iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    println!(
        "system storage: {} bytes at {:#x} ({})",
        host.size(),
        host.addr(),
        host.storage_kind()
    );

    // Spill it to the disk tier with O_DIRECT and read it back.
    let disk = match &args.disk_dir {
        Some(dir) => DiskStorage::new_in(dir, total)?,
        None => DiskStorage::new(total)?,
    };
    disk.write_at(0, host.as_slice())?;
    let mut back = SystemStorage::new(total)?;
    back.memset(0xEE);
    disk.read_at(0, back.as_mut_slice())?;
    check(
        back.as_slice() == host.as_slice(),
        "disk round trip changed bytes",
    )?;
    println!(
        "disk storage:   {} ({} bytes, O_DIRECT: {}) round trip verified",
        disk.path().display(),
        disk.size(),
        disk.is_direct()
    );

    // Carve an arena of blocks out of the host buffer and view one of them.
    let arena = ArenaAllocator::from_buffer(Buffer::new(host))?;
    let blocks: Vec<_> = (0..4)
        .map(|_| arena.allocate(args.block_size))
        .collect::<kvmem::Result<_>>()?;
    let view = OffsetBuffer::new(
        blocks[1].view().base().clone(),
        blocks[1].offset(),
        args.block_size,
    )?;
    check(view.addr() == blocks[1].addr(), "arena view address")?;
    println!(
        "arena:          {} blocks allocated, {} of {} bytes free",
        blocks.len(),
        arena.free_bytes(),
        arena.capacity()
    );
    drop(blocks);
    check(
        arena.free_bytes() == arena.capacity(),
        "arena did not get its blocks back",
    )?;
    println!("demo: all checks passed");
    Ok(())
}
