//! Block lists: the local and remote descriptor lists a transfer names.

use super::TransferMemory;
use crate::descriptor::Buffer;
use crate::error::{BoundsError, Error, NixlError, PeerError, Result, TransferError};
use crate::nixl::peer::Peer;
use crate::region::{MemType, NixlDescriptor};

/// Adds `d` of type `mem_type` to a list, keeping the list to one memory type.
fn add(
    list: &mut Vec<NixlDescriptor>,
    list_type: &mut Option<MemType>,
    d: NixlDescriptor,
) -> Result<()> {
    let mem_type = d.mem_type;
    if d.size == 0 {
        return Err(Error::Bounds(BoundsError::ZeroSize {
            what: "transfer block",
        }));
    }
    d.addr
        .checked_add(d.size as u64)
        .ok_or(Error::Bounds(BoundsError::Overflow {
            what: "transfer block",
        }))?;
    match *list_type {
        Some(t) if t != mem_type => {
            return Err(Error::Transfer(TransferError::Mismatch {
                reason: format!(
                    "block {} is {mem_type:?} memory but the list holds {t:?} blocks; one list \
                     holds one memory type",
                    list.len()
                ),
            }));
        }
        _ => *list_type = Some(mem_type),
    }
    list.push(d);
    Ok(())
}

/// Blocks of this agent's registered memory (or registered files), in transfer order.
#[derive(Debug, Clone, Default)]
pub struct LocalBlocks {
    pub(super) mem_type: Option<MemType>,
    pub(super) descs: Vec<NixlDescriptor>,
    pub(super) owners: Vec<Buffer>,
}

impl LocalBlocks {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `n` blocks.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            mem_type: None,
            descs: Vec::with_capacity(n),
            owners: Vec::new(),
        }
    }

    /// A list of one block: all of `mem`.
    ///
    /// # Errors
    /// As for [`push`](Self::push).
    pub fn whole(mem: &impl TransferMemory) -> Result<Self> {
        let mut list = Self::new();
        list.push(mem)?;
        Ok(list)
    }

    /// Appends all of `mem` as one block.
    ///
    /// # Errors
    /// As for [`push_range`](Self::push_range).
    pub fn push(&mut self, mem: &impl TransferMemory) -> Result<&mut Self> {
        self.push_range(mem, 0, mem.size())
    }

    /// Appends `len` bytes at `offset` in `mem` as one block.
    ///
    /// # Errors
    /// [`NixlError::NotRegistered`] when `mem` is not registered memory; [`BoundsError::OutOfBounds`]
    /// when the range leaves it; [`BoundsError::ZeroSize`] for `len == 0`;
    /// [`TransferError::Mismatch`] when its memory type differs from the list's.
    pub fn push_range(
        &mut self,
        mem: &impl TransferMemory,
        offset: usize,
        len: usize,
    ) -> Result<&mut Self> {
        let Some(d) = mem.nixl_descriptor() else {
            return Err(Error::Nixl(NixlError::NotRegistered {
                what: format!(
                    "{} memory at {:#x} ({} bytes)",
                    mem.storage_kind(),
                    mem.addr(),
                    mem.size()
                ),
            }));
        };
        let Some(d) = d.slice(offset, len) else {
            return Err(Error::Bounds(BoundsError::OutOfBounds {
                offset,
                len,
                size: d.size,
            }));
        };
        add(&mut self.descs, &mut self.mem_type, d)?;
        let owner = mem.owner();
        if !self.owners.last().is_some_and(|o| o.ptr_eq(owner)) {
            self.owners.push(owner.clone());
        }
        Ok(self)
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// True when the list holds no block.
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// Total bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.descs.iter().map(|d| d.size as u64).sum()
    }

    /// The memory type of the blocks (`None` while empty).
    pub fn mem_type(&self) -> Option<MemType> {
        self.mem_type
    }
}

/// Blocks of one peer's registered memory, in transfer order.
#[derive(Debug, Clone)]
pub struct RemoteBlocks {
    pub(super) peer: Peer,
    pub(super) mem_type: Option<MemType>,
    pub(super) descs: Vec<NixlDescriptor>,
}

impl RemoteBlocks {
    /// An empty list for `peer`.
    pub fn new(peer: &Peer) -> Self {
        Self {
            peer: peer.clone(),
            mem_type: None,
            descs: Vec::new(),
        }
    }

    /// An empty list for `peer` with room for `n` blocks.
    pub(crate) fn with_capacity(peer: &Peer, n: usize) -> Self {
        Self {
            descs: Vec::with_capacity(n),
            ..Self::new(peer)
        }
    }

    /// Appends a block. When the peer shipped a manifest, the block is checked against it now.
    ///
    /// # Errors
    /// [`PeerError::OutOfBounds`] for a block outside the peer's registered regions;
    /// [`BoundsError::ZeroSize`]; [`TransferError::Mismatch`] for a memory type different from the
    /// list's.
    pub fn push(&mut self, block: NixlDescriptor) -> Result<&mut Self> {
        if let Some(m) = &self.peer.manifest
            && block.size > 0
            && !m.contains(&block)
        {
            return Err(Error::Peer(PeerError::OutOfBounds {
                peer: self.peer.name().to_owned(),
                index: self.descs.len(),
                addr: block.addr,
                len: block.size,
                mem_type: block.mem_type,
                device_id: block.device_id,
            }));
        }
        add(&mut self.descs, &mut self.mem_type, block)?;
        Ok(self)
    }

    /// Appends `len` bytes at `offset` in region `region` of the peer's manifest.
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`] for a region index or range the manifest does not have (or when
    /// the peer sent no manifest); as for [`push`](Self::push).
    pub fn push_region(&mut self, region: usize, offset: u64, len: usize) -> Result<&mut Self> {
        let regions = self.peer.regions();
        let Some(r) = regions.get(region) else {
            return Err(Error::Bounds(BoundsError::OutOfBounds {
                offset: region,
                len: 1,
                size: regions.len(),
            }));
        };
        let Some(addr) = r.addr.checked_add(offset) else {
            return Err(Error::Bounds(BoundsError::Overflow {
                what: "remote block address",
            }));
        };
        self.push(NixlDescriptor::new(r.space(), addr, len))
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// True when the list holds no block.
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }
}
