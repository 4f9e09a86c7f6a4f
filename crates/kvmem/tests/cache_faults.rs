//! Faults of the disk tier: a corrupted block, a torn journal append, a directory written for
//! another geometry or model, an unwritable directory, a full disk (a file-size limit set in a
//! subprocess), and a process killed while writing. In every case the cache reports or drops
//! what is wrong and never serves a wrong block.

mod cache_common;

use cache_common::*;
use kvmem::Completion;
use kvmem::cache::{
    BlockCache, BlockKey, CacheConfig, CacheError, Capacity, HostMemoryKind, WritePolicy,
};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const CHILD_ENV: &str = "KVMEM_CACHE_FAULT_CHILD";

fn config(dir: &Path, host: usize, disk: usize, write: WritePolicy) -> CacheConfig {
    let mut c =
        CacheConfig::new(block(), Capacity::Blocks(host)).with_disk(dir, Capacity::Blocks(disk));
    c.host_memory = HostMemoryKind::System;
    c.fingerprint = "test-model".into();
    if let Some(d) = c.disk.as_mut() {
        d.write = write;
    }
    c
}

fn store(cache: &BlockCache, ks: &[BlockKey]) -> kvmem::cache::StoreReport {
    let gpu = gpu_with(ks, ks.len());
    let ids: Vec<usize> = (0..ks.len()).collect();
    cache.store(ks, &gpu, &ids, T).unwrap().wait().unwrap()
}

/// Loads `ks` and checks the bytes of every block loaded; returns the report.
fn load_checked(cache: &BlockCache, ks: &[BlockKey]) -> kvmem::cache::LoadReport {
    let gpu = gpu_with(&[], ks.len());
    let ids: Vec<usize> = (0..ks.len()).collect();
    let r = cache.load(ks, &gpu, &ids, T).unwrap().wait().unwrap();
    for (b, k) in ks.iter().enumerate() {
        if r.failed().any(|f| f == k) {
            assert!(
                read_block(&gpu, b).iter().all(|x| *x == 0),
                "a failed key's block was written"
            );
        } else {
            assert_eq!(read_block(&gpu, b), pattern(*k), "{k} served wrong bytes");
        }
    }
    r
}

/// Waits until every write-through copy of the cache is on disk (its background part).
fn settle(cache: &BlockCache, keys: &[BlockKey]) {
    for _ in 0..500 {
        if keys.iter().all(|k| cache.residency(*k).disk) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("write-through did not reach disk");
}

/// A write-through cache of 8 host and 8 disk blocks in `dir`.
fn write_through(dir: &Path) -> BlockCache {
    BlockCache::open(config(dir, 8, 8, WritePolicy::WriteThrough)).unwrap()
}

/// [`write_through`] with `keys` stored and on disk.
fn stored_on_disk(dir: &Path, keys: &[BlockKey]) -> BlockCache {
    let cache = write_through(dir);
    store(&cache, keys);
    settle(&cache, keys);
    cache
}

#[test]
fn corrupted_block_is_detected_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (0..4).map(key).collect();
    drop(stored_on_disk(dir.path(), &ks));
    // Flip bytes in slot 1 of the block file (write-through fills slots 0..4 in order).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("blocks.kvd"))
        .unwrap();
    f.seek(SeekFrom::Start(BLOCK_BYTES as u64 + 100)).unwrap();
    f.write_all(&[0xa5; 16]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let cache = write_through(dir.path());
    assert_eq!(cache.stats().recovered, 4);
    let r = load_checked(&cache, &ks);
    assert_eq!(
        r.corrupt,
        vec![ks[1]],
        "exactly the corrupted block is caught: {r:?}"
    );
    assert_eq!(r.from_disk, 3);
    assert!(
        !cache.residency(ks[1]).present(),
        "a corrupt block is dropped"
    );
    assert_eq!(cache.stats().corrupt, 1);
    cache.check_invariants().unwrap();
    drop(cache);
    // The drop is journaled: the next process does not even try it.
    let cache = write_through(dir.path());
    assert_eq!(cache.stats().recovered, 3);
    assert!(!cache.residency(ks[1]).present());
}

#[test]
fn torn_journal_append_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (10..13).map(key).collect();
    drop(stored_on_disk(dir.path(), &ks));
    // Half a record appended, as a crash in the middle of an append leaves it.
    let path = dir.path().join("journal.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let half = bytes[..28].to_vec();
    bytes.extend_from_slice(&half);
    std::fs::write(&path, &bytes).unwrap();
    let cache = write_through(dir.path());
    assert_eq!(cache.stats().recovered, 3);
    assert!(load_checked(&cache, &ks).complete());
}

#[test]
fn another_geometry_or_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(BlockCache::open(config(dir.path(), 4, 8, WritePolicy::WriteBack)).unwrap());
    let mut other_model = config(dir.path(), 4, 8, WritePolicy::WriteBack);
    other_model.fingerprint = "another-model".into();
    let e = BlockCache::open(other_model).unwrap_err();
    assert!(
        matches!(e, kvmem::Error::Cache(CacheError::DirectoryMismatch { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains("another-model") && e.to_string().contains("test-model"),
        "{e}"
    );
    let mut other_shape = config(dir.path(), 4, 8, WritePolicy::WriteBack);
    other_shape.block.num_layers = 4;
    assert!(matches!(
        BlockCache::open(other_shape),
        Err(kvmem::Error::Cache(CacheError::DirectoryMismatch { .. }))
    ));
    assert!(matches!(
        BlockCache::open(config(dir.path(), 4, 16, WritePolicy::WriteBack)),
        Err(kvmem::Error::Cache(CacheError::DirectoryMismatch { .. }))
    ));
    // And one directory is one cache at a time.
    let open = BlockCache::open(config(dir.path(), 4, 8, WritePolicy::WriteBack)).unwrap();
    assert!(matches!(
        BlockCache::open(config(dir.path(), 4, 8, WritePolicy::WriteBack)),
        Err(kvmem::Error::Cache(CacheError::DirectoryLocked { .. }))
    ));
    drop(open);
}

#[test]
fn unwritable_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the directory should be: fails even for root.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let e =
        BlockCache::open(config(&file.join("cache"), 4, 8, WritePolicy::WriteBack)).unwrap_err();
    assert!(
        e.to_string().contains("not-a-dir"),
        "the error names the path: {e}"
    );
    // A read-only file system.
    let e = BlockCache::open(config(
        Path::new("/proc/kvmem-cache"),
        4,
        8,
        WritePolicy::WriteBack,
    ));
    assert!(e.is_err());
}

/// Spawns this test binary as a child running `mode` in `dir`.
fn child(mode: &str, dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "fault_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, mode)
    .env("KVMEM_CACHE_FAULT_DIR", dir);
    c
}

/// Runs the child in `mode` to its end and returns what it printed; asserts that it succeeded.
fn child_output(mode: &str, dir: &Path) -> String {
    let out = child(mode, dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn full_disk_fails_writes_cleanly_and_keeps_what_was_journaled() {
    let dir = tempfile::tempdir().unwrap();
    // A file-size limit below the block file: the cache cannot be created, and says so.
    let text = child_output("fsize-tiny", dir.path());
    assert!(
        text.contains("OPEN-FAILED") && text.contains("blocks.kvd"),
        "{text}"
    );
    assert!(
        !dir.path().join("blocks.kvd").exists(),
        "no partial block file is left behind"
    );

    // A limit that lets the block file and some journal records through.
    let dir = tempfile::tempdir().unwrap();
    let text = child_output("fsize-journal", dir.path());
    let failures: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("DISK-WRITE-FAILURES "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {text}"));
    assert!(
        failures > 0,
        "the limit must have refused journal appends: {text}"
    );
    // Without the limit, a new process recovers what the journal names; a slot rewritten
    // after the journal filled up no longer matches its checksum and is dropped, never served.
    let cache = BlockCache::open(config(dir.path(), 4, 2, WritePolicy::WriteThrough)).unwrap();
    assert!(cache.stats().recovered <= 2);
    let on_disk: Vec<_> = (0..100)
        .map(key)
        .filter(|k| cache.residency(*k).disk)
        .collect();
    assert_eq!(on_disk.len() as u64, cache.stats().recovered);
    let r = load_checked(&cache, &on_disk);
    assert_eq!(r.from_disk + r.corrupt.len(), on_disk.len(), "{r:?}");
    cache.check_invariants().unwrap();
}

#[test]
fn killed_while_writing_recovers_completed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child("write-forever", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let mut stored = 0;
    while let Some(Ok(line)) = lines.next() {
        if line.starts_with("STORED") {
            stored += 1;
            if stored >= 30 {
                break;
            }
        }
    }
    // SIGKILL in the middle of writing: no destructor, no flush.
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(stored >= 30, "the child stopped early");
    let cache = BlockCache::open(config(dir.path(), 4, 64, WritePolicy::WriteThrough)).unwrap();
    let recovered = cache.stats().recovered;
    assert!(
        recovered >= 20,
        "completed writes are recovered: {recovered}"
    );
    let ks: Vec<_> = (0..200).map(key).collect();
    let on_disk: Vec<_> = ks
        .iter()
        .copied()
        .filter(|k| cache.residency(*k).disk)
        .collect();
    let mut corrupt = 0;
    for chunk in on_disk.chunks(4) {
        corrupt += load_checked(&cache, chunk).corrupt.len();
    }
    // A block is journaled only after its write completed, so nothing is torn here; a torn
    // one would be caught by load_checked's checksum (corrupt) and never served.
    assert_eq!(corrupt, 0);
    cache.check_invariants().unwrap();
}

/// The child side of the subprocess tests; does nothing unless started by one of them.
#[test]
#[ignore = "run as a subprocess by the fault tests"]
fn fault_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var("KVMEM_CACHE_FAULT_DIR").unwrap());
    let limit = limit_file_size;
    match mode.as_str() {
        "fsize-tiny" => {
            limit(8 * 1024);
            match BlockCache::open(config(&dir, 4, 64, WritePolicy::WriteThrough)) {
                Ok(_) => println!("OPENED"),
                Err(e) => println!("OPEN-FAILED {e}"),
            }
        }
        "fsize-journal" => {
            // RLIMIT_FSIZE caps each file: the 2-block disk tier (8 KiB) fits, the journal stops
            // at about 166 records while 100 write-through stores append about 198.
            limit(2 * BLOCK_BYTES as u64 + 20 * 56);
            let cache = BlockCache::open(config(&dir, 4, 2, WritePolicy::WriteThrough)).unwrap();
            for i in 0..100 {
                let r = store(&cache, &[key(i)]);
                assert_eq!(r.stored, 1, "host stores work with a full disk");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(300));
            println!();
            println!("DISK-WRITE-FAILURES {}", cache.stats().disk_write_failures);
        }
        "write-forever" => {
            let cache = BlockCache::open(config(&dir, 4, 64, WritePolicy::WriteThrough)).unwrap();
            for i in 0.. {
                store(&cache, &[key(i % 200)]);
                println!("STORED {i}");
                let _ = std::io::stdout().flush();
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}
