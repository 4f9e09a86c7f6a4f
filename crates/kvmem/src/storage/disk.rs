use crate::error::{BoundsError, Error, IoError, Result};
use crate::host::checked_range;
use crate::kind::StorageKind;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, Mode, OFlags};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable naming the directory [`DiskStorage::new`] creates its files in.
pub const DISK_DIR_ENV: &str = "KVMEM_DISK_DIR";

/// Alignment of offsets, lengths and buffer addresses for I/O on a file opened with `O_DIRECT`.
pub const DIRECT_IO_ALIGN: usize = crate::PAGE_SIZE;

/// A file that backs one region of the disk tier.
///
/// Files kvmem creates are opened `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC` with mode 0600, switched
/// to `O_DIRECT` where the file system allows it, and have their space reserved with
/// `fallocate`. Every error path closes the descriptor and removes the file; dropping the storage
/// removes the file too, but only a file it created itself and only if the path still names it.
///
/// The region's address is its offset in the file, 0: NIXL's POSIX backend addresses files by
/// `(offset, length, file descriptor)`.
pub struct DiskStorage {
    fd: OwnedFd,
    path: PathBuf,
    size: usize,
    direct: bool,
    /// Set for files this value created, and so removes on drop.
    created: Option<FileId>,
    /// Counts the file in [`accounting`](crate::accounting) while it is open.
    _open: crate::accounting::OpenFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

impl DiskStorage {
    /// Creates a file of `size` bytes in `$KVMEM_DISK_DIR`, or in the system's temporary
    /// directory when that is unset.
    ///
    /// # Errors
    /// As for [`new_in`](Self::new_in).
    pub fn new(size: usize) -> Result<Self> {
        let dir = std::env::var_os(DISK_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Self::new_in(dir, size)
    }

    /// Creates a file of `size` bytes with a fresh unique name in `dir`.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`IoError::File`] when the directory is missing or not
    /// writable, or `fallocate` cannot reserve the space. Nothing is left behind on error.
    pub fn new_in(dir: impl AsRef<Path>, size: usize) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = dir.as_ref();
        let pid = rustix::process::getpid().as_raw_nonzero();
        let mut attempts = 0;
        loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = dir.join(format!("kvmem-{pid}-{seq}-{nanos:08x}.kvd"));
            match Self::create_at(&path, size) {
                Err(Error::Io(IoError::File { source, .. }))
                    if source.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates the file `path`, which must not exist yet (nor be a symbolic link), and reserves
    /// `size` bytes in it.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`IoError::File`] when the path exists, its directory is
    /// missing or not writable, or the space cannot be reserved. Nothing is left behind on error.
    pub fn create_at(path: impl AsRef<Path>, size: usize) -> Result<Self> {
        let path = path.as_ref();
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "disk storage",
            }));
        }
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR)
            .map_err(|e| Error::io("create", path, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", path, e.into()))?;
        // From here on, dropping `storage` (on any error below) closes and removes the file.
        let mut storage = DiskStorage {
            fd,
            path: path.to_path_buf(),
            size,
            direct: false,
            created: Some(FileId::of(&st)),
            _open: crate::accounting::OpenFile::new(),
        };
        storage.direct = enable_direct_io(&storage.fd, path);
        rustix::fs::fallocate(&storage.fd, FallocateFlags::empty(), 0, size as u64)
            .map_err(|e| Error::io("reserve space (fallocate) for", path, e.into()))?;
        tracing::debug!(path = %path.display(), size, direct = storage.direct, "created disk storage");
        Ok(storage)
    }

    /// Test double for a stalled disk: opens the FIFO at `path` (read and write, so that a read
    /// waits for data instead of seeing end-of-file) as a storage of `size` bytes. A read from
    /// it blocks until someone writes into the FIFO.
    #[cfg(test)]
    pub(crate) fn stalling_fifo(path: &Path, size: usize) -> Result<Self> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("open", path, e.into()))?;
        Ok(DiskStorage {
            fd,
            path: path.to_path_buf(),
            size,
            direct: false,
            created: None,
            _open: crate::accounting::OpenFile::new(),
        })
    }

    /// Opens an existing regular file (not a symbolic link) as disk storage covering its whole
    /// current length. The file is left in place on drop.
    ///
    /// # Errors
    /// [`IoError::File`] when it cannot be opened; [`BoundsError::ZeroSize`] for an empty file.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open", path, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", path, e.into()))?;
        let size = usize::try_from(st.st_size).map_err(|_| {
            Error::Bounds(BoundsError::Overflow {
                what: "file length",
            })
        })?;
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "existing disk file",
            }));
        }
        let direct = enable_direct_io(&fd, path);
        Ok(DiskStorage {
            fd,
            path: path.to_path_buf(),
            size,
            direct,
            created: None,
            _open: crate::accounting::OpenFile::new(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True when the file is open with `O_DIRECT`, bypassing the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes all of `buf` at `offset` in the file.
    ///
    /// With `O_DIRECT`, `offset`, `buf.len()` and `buf`'s address must be multiples of
    /// [`DIRECT_IO_ALIGN`] (a [`SystemStorage`](crate::SystemStorage) is page-aligned).
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`], [`BoundsError::Misaligned`], [`IoError::File`] or [`IoError::Short`].
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_io(offset, buf.as_ptr(), buf.len())?;
        let done = pwrite_all(self.fd.as_fd(), buf, offset)
            .map_err(|e| Error::io("write", &self.path, e))?;
        expect_full("write", offset, buf.len(), done)
    }

    /// Fills all of `buf` from `offset` in the file. Alignment rules as for
    /// [`write_at`](Self::write_at).
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`], [`BoundsError::Misaligned`], [`IoError::File`] or [`IoError::Short`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_io(offset, buf.as_ptr(), buf.len())?;
        let len = buf.len();
        let done = pread_all(self.fd.as_fd(), buf, offset)
            .map_err(|e| Error::io("read", &self.path, e))?;
        expect_full("read", offset, len, done)
    }

    fn check_io(&self, offset: u64, ptr: *const u8, len: usize) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| {
            Error::Bounds(BoundsError::Overflow {
                what: "file offset",
            })
        })?;
        checked_range(start, len, self.size)?;
        if self.direct {
            let align = DIRECT_IO_ALIGN as u64;
            for (what, value) in [
                ("O_DIRECT file offset", offset),
                ("O_DIRECT length", len as u64),
                ("O_DIRECT buffer address", ptr as u64),
            ] {
                if value % align != 0 {
                    return Err(Error::Bounds(BoundsError::Misaligned {
                        what,
                        value,
                        align,
                    }));
                }
            }
        }
        Ok(())
    }
}

/// Writes `buf` at `offset`, retrying short writes; returns the bytes written, which is less than
/// `buf.len()` only when the file accepted no more.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(fd, &buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Reads into `buf` from `offset`, retrying short reads; returns the bytes read, which is less than
/// `buf.len()` only at the end of the file.
pub(crate) fn pread_all(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// [`IoError::Short`] unless `actual == expected`.
pub(crate) fn expect_full(
    op: &'static str,
    offset: u64,
    expected: usize,
    actual: usize,
) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Io(IoError::Short {
            op,
            offset,
            expected,
            actual,
        }))
    }
}

/// Switches `fd` to `O_DIRECT`; returns false (and says so) where the file system refuses.
fn enable_direct_io(fd: &OwnedFd, path: &Path) -> bool {
    let result = rustix::fs::fcntl_getfl(fd)
        .and_then(|flags| rustix::fs::fcntl_setfl(fd, flags | OFlags::DIRECT));
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "file system does not support O_DIRECT; using buffered I/O through the page cache"
            );
            false
        }
    }
}

impl Drop for DiskStorage {
    fn drop(&mut self) {
        let Some(id) = self.created else { return };
        // Remove the path only if it still names the file this value created.
        match rustix::fs::lstat(&self.path) {
            Ok(st) if FileId::of(&st) == id => {
                if let Err(e) = rustix::fs::unlink(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove disk storage file");
                }
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "disk storage path now names another file; leaving it in place"
            ),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "disk storage file already gone")
            }
        }
    }
}

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("path", &self.path)
            .field("fd", &self.fd.as_raw_fd())
            .field("size", &self.size)
            .field("direct", &self.direct)
            .field("owned", &self.created.is_some())
            .finish()
    }
}

storage_region!(
    DiskStorage,
    |s| 0,
    s.size,
    StorageKind::Disk(s.fd.as_raw_fd() as u64)
);
