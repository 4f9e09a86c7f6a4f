//! Disk storage on real files: O_DIRECT I/O through the descriptor, permissions, refusal of
//! existing paths and symlinks, and no file left behind after any error.

use kvmem::error::{BoundsError, IoError};
use kvmem::{DiskStorage, Error, HostMemory, MemoryDescriptor, StorageKind, SystemStorage};
use rustix::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn random_bytes(buf: &mut [u8], mut seed: u64) {
    for b in buf {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
}

#[test]
fn direct_io_round_trip_through_the_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1 << 20;
    let disk = DiskStorage::new_in(dir.path(), size).unwrap();
    // /tmp and the target dir live on ext4 here, which supports O_DIRECT.
    assert!(disk.is_direct(), "expected O_DIRECT on {:?}", dir.path());
    assert_eq!(
        disk.storage_kind(),
        StorageKind::Disk(disk.fd().as_raw_fd() as u64)
    );
    assert_eq!(std::fs::metadata(disk.path()).unwrap().len(), size as u64);

    let mut src = SystemStorage::new(size).unwrap();
    random_bytes(src.as_mut_slice(), 0x9e37_79b9);
    // Raw pwrite on the descriptor the storage reports (what NIXL's POSIX backend does).
    let n = rustix::io::pwrite(disk.fd(), src.as_slice(), 0).unwrap();
    assert_eq!(n, size);
    let mut dst = SystemStorage::new(size).unwrap();
    dst.memset(0xA5);
    disk.read_at(0, dst.as_mut_slice()).unwrap();
    assert!(
        dst.as_slice() == src.as_slice(),
        "bytes changed on the way through the file"
    );

    // A partial, aligned write in the middle lands where it should.
    let page = kvmem::PAGE_SIZE;
    let mut patch = SystemStorage::new(page).unwrap();
    patch.memset(0x11);
    disk.write_at(8 * page as u64, patch.as_slice()).unwrap();
    disk.read_at(0, dst.as_mut_slice()).unwrap();
    assert!(
        dst.as_slice()[8 * page..9 * page]
            .iter()
            .all(|b| *b == 0x11)
    );
    assert!(dst.as_slice()[..8 * page] == src.as_slice()[..8 * page]);
}

#[test]
fn direct_io_rejects_misaligned_and_out_of_range_requests() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskStorage::new_in(dir.path(), 64 * 1024).unwrap();
    assert!(disk.is_direct());
    let buf = SystemStorage::new(8192).unwrap();
    let s = buf.as_slice();
    assert!(matches!(
        disk.write_at(1, &s[..4096]),
        Err(Error::Bounds(BoundsError::Misaligned { .. }))
    ));
    assert!(matches!(
        disk.write_at(0, &s[..100]),
        Err(Error::Bounds(BoundsError::Misaligned { .. }))
    ));
    assert!(matches!(
        disk.write_at(0, &s[1..4097]),
        Err(Error::Bounds(BoundsError::Misaligned { .. }))
    ));
    assert!(matches!(
        disk.write_at(64 * 1024, &s[..4096]),
        Err(Error::Bounds(BoundsError::OutOfBounds { .. }))
    ));
    assert!(matches!(
        disk.write_at(u64::MAX, &s[..4096]),
        Err(Error::Bounds(BoundsError::OutOfBounds { .. })
            | Error::Bounds(BoundsError::Overflow { .. }))
    ));
}

#[test]
fn created_file_is_private_and_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskStorage::new_in(dir.path(), 4096).unwrap();
    let path = disk.path().to_path_buf();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(meta.is_file());
    let (ptr, len, mem, dev) = kvmem::nixl::NixlCompatible::nixl_params(&disk);
    assert_eq!(
        (ptr as usize, len, mem, dev),
        (
            0,
            4096,
            kvmem::nixl::MemType::File,
            disk.fd().as_raw_fd() as u64
        )
    );
    drop(disk);
    assert!(!path.exists());
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn refuses_existing_paths_and_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("taken");
    std::fs::write(&existing, b"keep me").unwrap();
    let err = DiskStorage::create_at(&existing, 4096).unwrap_err();
    assert!(
        matches!(&err, Error::Io(IoError::File { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err}"
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let target = dir.path().join("target");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(DiskStorage::create_at(&link, 4096).is_err());
    assert!(!target.exists(), "the symlink was followed");
    let mut names = entries(dir.path());
    names.sort();
    assert_eq!(names, ["link", "taken"]);
}

#[test]
fn no_file_left_behind_after_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist.
    assert!(matches!(
        DiskStorage::new_in(dir.path().join("missing"), 4096),
        Err(Error::Io(IoError::File { .. }))
    ));
    // A "directory" that is a regular file.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        DiskStorage::new_in(&file, 4096),
        Err(Error::Io(IoError::File { .. }))
    ));
    // A size fallocate cannot reserve: the file was created, then must be removed.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let err = DiskStorage::new_in(&sub, 1 << 62).unwrap_err();
    assert!(
        matches!(&err, Error::Io(IoError::File { op, .. }) if op.contains("fallocate")),
        "{err}"
    );
    assert!(entries(&sub).is_empty(), "left behind: {:?}", entries(&sub));
    // Zero bytes.
    assert!(matches!(
        DiskStorage::new_in(&sub, 0),
        Err(Error::Bounds(BoundsError::ZeroSize { .. }))
    ));
    assert!(entries(&sub).is_empty());
}

#[test]
fn unwritable_directory_is_an_error() {
    // /proc refuses new files even for root.
    assert!(matches!(
        DiskStorage::new_in("/proc/self", 4096),
        Err(Error::Io(IoError::File { .. }))
    ));
    if !rustix::process::geteuid().is_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        assert!(matches!(
            DiskStorage::new_in(dir.path(), 4096),
            Err(Error::Io(IoError::File { .. }))
        ));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(entries(dir.path()).is_empty());
    }
}

#[test]
fn open_existing_leaves_the_file_and_drop_spares_a_replaced_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.bin");
    std::fs::write(&path, vec![7u8; 8192]).unwrap();
    let disk = DiskStorage::open_existing(&path).unwrap();
    assert_eq!(disk.size(), 8192);
    drop(disk);
    assert!(path.exists(), "open_existing must not remove the file");

    // A created file whose path was replaced behind our back: the replacement survives drop.
    let disk = DiskStorage::new_in(dir.path(), 4096).unwrap();
    let p = disk.path().to_path_buf();
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"someone else's").unwrap();
    let ino = std::fs::metadata(&p).unwrap().ino();
    drop(disk);
    assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
}

#[test]
fn tmpfs_falls_back_or_goes_direct_and_still_round_trips() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        panic!("/dev/shm is missing on this machine; this test needs a tmpfs");
    }
    let disk = DiskStorage::new_in(shm, 16 * 1024).unwrap();
    let mut src = SystemStorage::new(16 * 1024).unwrap();
    random_bytes(src.as_mut_slice(), 42);
    disk.write_at(0, src.as_slice()).unwrap();
    let mut dst = SystemStorage::new(16 * 1024).unwrap();
    disk.read_at(0, dst.as_mut_slice()).unwrap();
    assert!(dst.as_slice() == src.as_slice());
    if !disk.is_direct() {
        // Buffered I/O has no alignment rules.
        disk.write_at(3, &src.as_slice()[..5]).unwrap();
    }
}
