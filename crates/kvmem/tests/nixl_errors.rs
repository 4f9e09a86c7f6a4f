//! Bad input to the NIXL layer: each case is a typed error, never a panic or a backend failure
//! in disguise (real runtime).

#[path = "nixl_common/mod.rs"]
mod common;

use common::*;
use kvmem::error::{BoundsError, ConfigError, NixlError, PeerError, TransferError};
use kvmem::nixl::raw::{LocalBlocks, RemoteBlocks, TransferOp};
use kvmem::nixl::{Agent, AgentConfig, MemType, NixlCompatible, NixlDescriptor};
use kvmem::{Buffer, DiskStorage, Error, MemoryDescriptor, StorageKind, SystemStorage};
use std::any::Any;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn unknown_backend() {
    let err = Agent::new(AgentConfig {
        backends: vec!["UCX".into(), "NOT_A_BACKEND".into()],
        ..config("unknown")
    })
    .unwrap_err();
    let Error::Nixl(NixlError::UnknownBackend { backend, installed }) = &err else {
        panic!("{err}")
    };
    assert_eq!(backend, "NOT_A_BACKEND");
    assert!(
        installed.contains("UCX") && installed.contains("POSIX"),
        "{installed}"
    );
}

#[test]
fn invalid_config_from_code() {
    let err = Agent::new(AgentConfig {
        registration_chunk: 1000,
        ..config("cfg")
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::Agent { .. })),
        "{err}"
    );
    let err = Agent::new(AgentConfig {
        backends: Vec::new(),
        ..config("cfg")
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::Agent { .. })),
        "{err}"
    );
}

/// A foreign storage of zero bytes.
#[derive(Debug)]
struct Empty;

impl MemoryDescriptor for Empty {
    fn addr(&self) -> usize {
        0x1000
    }
    fn size(&self) -> usize {
        0
    }
    fn storage_kind(&self) -> StorageKind {
        StorageKind::System
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn nixl_descriptor(&self) -> Option<NixlDescriptor> {
        None
    }
}

impl NixlCompatible for Empty {
    fn nixl_params(&self) -> (*const u8, usize, MemType, u64) {
        (0x1000 as *const u8, 0, MemType::Dram, 0)
    }
}

#[test]
fn registering_zero_bytes() {
    let a = agent("zero");
    let err = refused(&a, Empty, 0);
    assert!(
        matches!(err, Error::Bounds(BoundsError::ZeroSize { .. })),
        "{err}"
    );
}

#[test]
fn registering_memory_no_backend_supports_gives_the_storage_back() {
    // UCX does not do files: NIXL refuses, and the file comes back (still on disk).
    let a = agent("nofile");
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskStorage::new_in(dir.path(), 1 << 20).unwrap();
    let path = disk.path().to_path_buf();
    let err = a.register(disk).unwrap_err();
    assert!(
        matches!(err.error, Error::Nixl(NixlError::Call { .. })),
        "{}",
        err.error
    );
    assert!(err.storage.path() == path && path.exists());
    // `?` turns it into kvmem::Error.
    let as_error: Error = err.into();
    assert!(matches!(as_error, Error::Nixl(NixlError::Call { .. })));
}

#[test]
fn overlapping_registration() {
    let a = agent("overlap");
    let base = Buffer::new(SystemStorage::new(1 << 20).unwrap());
    let first = a
        .register(kvmem::OffsetBuffer::new(base.clone(), 0, 512 << 10).unwrap())
        .unwrap();
    let err = a
        .register(kvmem::OffsetBuffer::new(base.clone(), 256 << 10, 512 << 10).unwrap())
        .unwrap_err();
    let Error::Nixl(NixlError::AlreadyRegistered {
        existing_addr,
        existing_len,
        ..
    }) = err.error
    else {
        panic!("{}", err.error)
    };
    assert_eq!(
        (existing_addr, existing_len),
        (base.addr() as u64, 512 << 10)
    );
    // Adjacent is fine; and once deregistered the range can be registered again.
    let second = a
        .register(kvmem::OffsetBuffer::new(base.clone(), 512 << 10, 512 << 10).unwrap())
        .unwrap();
    drop(first);
    let again = a.register(kvmem::OffsetBuffer::new(base.clone(), 0, 512 << 10).unwrap());
    assert!(again.is_ok());
    drop(second);
    // Another agent may register the same range.
    let b = agent("overlap-b");
    assert!(b.register(base.clone()).is_ok());
}

#[test]
fn unregistered_memory_in_a_transfer() {
    let plain = Buffer::new(SystemStorage::new(4096).unwrap());
    let err = LocalBlocks::whole(&plain).unwrap_err();
    assert!(
        matches!(err, Error::Nixl(NixlError::NotRegistered { .. })),
        "{err}"
    );
}

#[test]
fn descriptor_outside_the_peers_registered_memory() {
    let a = agent("oob-a");
    let b = agent("oob-b");
    let src = filled(&a, &random_bytes(21, 8192));
    let dst = poisoned(&b, 8192);
    let end = dst.addr() as u64 + 8192;

    // With the manifest (kvmem envelope): refused when the block is added.
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let mut r = RemoteBlocks::new(&peer);
    for bad in [
        NixlDescriptor::dram(end, 4096),        // just past the end
        NixlDescriptor::dram(end - 4096, 8192), // straddles the end
        NixlDescriptor::dram(dst.addr() as u64 - 4096, 4096), // before the start
        NixlDescriptor {
            mem_type: MemType::Vram,
            ..NixlDescriptor::dram(dst.addr() as u64, 4096)
        },
    ] {
        let err = r.push(bad).unwrap_err();
        assert!(
            matches!(err, Error::Peer(PeerError::OutOfBounds { index: 0, .. })),
            "{err}"
        );
    }

    // A plain NIXL blob has no manifest: NIXL's own copy of the peer's registrations decides,
    // and kvmem names the offending block.
    let c = agent("oob-c");
    let peer = c.load_peer(&b.local_nixl_metadata().unwrap()).unwrap();
    assert!(peer.manifest().is_none());
    let src_c = filled(&c, &random_bytes(22, 8192));
    let mut r = RemoteBlocks::new(&peer);
    r.push(NixlDescriptor::dram(dst.addr() as u64, 4096))
        .unwrap();
    r.push(NixlDescriptor::dram(end - 4096, 8192)).unwrap();
    let mut l = LocalBlocks::new();
    l.push_range(&src_c, 0, 4096).unwrap();
    l.push_range(&src_c, 0, 8192).unwrap();
    let err = c.write(&l, &r, None).unwrap_err();
    let Error::Peer(PeerError::OutOfBounds {
        index, addr, len, ..
    }) = err
    else {
        panic!("{err}")
    };
    assert_eq!((index, addr, len), (1, end - 4096, 8192));
    assert!(
        bytes(&dst).iter().all(|&x| x == POISON),
        "nothing was written"
    );
    // Preparing the same list is refused the same way.
    assert!(matches!(
        c.prepare_remote(&r),
        Err(Error::Peer(PeerError::OutOfBounds { index: 1, .. }))
    ));
    drop(src);
}

#[test]
fn unknown_peer_name() {
    let a = agent("unknown-a");
    let b = agent("unknown-b");
    let c = agent("unknown-c");
    a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let err = a.peer("nobody").unwrap_err();
    let Error::Peer(PeerError::Unknown { peer, known, .. }) = &err else {
        panic!("{err}")
    };
    assert_eq!(peer, "nobody");
    assert!(known.contains(b.name()), "{known}");
    assert!(matches!(
        a.notify("nobody", b"x"),
        Err(Error::Peer(PeerError::Unknown { .. }))
    ));
    assert!(matches!(
        a.invalidate_peer("nobody"),
        Err(Error::Peer(PeerError::Unknown { .. }))
    ));
    assert!(matches!(
        a.reconnect("nobody", Duration::from_millis(10)),
        Err(Error::Peer(PeerError::Unknown { .. }))
    ));
    // A peer handle from another agent does not make the peer known here.
    let _dst = poisoned(&b, 4096);
    let c_peer = c.load_peer(&b.local_metadata().unwrap()).unwrap();
    let mut r = RemoteBlocks::new(&c_peer);
    r.push_region(0, 0, 4096).unwrap();
    let d = agent("unknown-d");
    let src = filled(&d, &random_bytes(23, 4096));
    let err = d
        .write(&LocalBlocks::whole(&src).unwrap(), &r, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Peer(PeerError::Unknown { .. })),
        "{err}"
    );
}

#[test]
fn malformed_metadata_blobs() {
    let a = agent("md-a");
    let b = agent("md-b");
    let good = b.local_metadata().unwrap();
    let nixl = b.local_nixl_metadata().unwrap();
    let mut bad_json = good.clone();
    bad_json[12] = b'#';
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"definitely not NIXL metadata".to_vec()),
        ("one byte", vec![0]),
        ("truncated NIXL blob", nixl[..nixl.len() / 2].to_vec()),
        ("truncated envelope", good[..16].to_vec()),
        ("envelope with bad JSON", bad_json),
        ("own metadata", a.local_metadata().unwrap()),
    ];
    for (what, blob) in cases {
        let err = a.load_peer(&blob).unwrap_err();
        assert!(
            matches!(err, Error::Peer(PeerError::MalformedMetadata { .. })),
            "{what}: {err}"
        );
    }
    // An agent name that is not UTF-8 (written by a non-Rust agent, or forged): same length, so
    // NIXL's own framing stays intact.
    let name = b.name().as_bytes();
    let mut forged = nixl.clone();
    let mut replaced = 0;
    let mut i = 0;
    while i + name.len() <= forged.len() {
        if &forged[i..i + name.len()] == name {
            forged[i..i + name.len()].fill(0xFF);
            replaced += 1;
            i += name.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced > 0, "the blob carries the agent name");
    let err = a.load_peer(&forged).unwrap_err();
    assert!(
        matches!(err, Error::Peer(PeerError::MalformedMetadata { .. })),
        "non-UTF-8 name: {err}"
    );
    assert!(a.peers().is_empty(), "nothing was loaded");
    // The agent is unharmed: the good blob still loads.
    assert_eq!(a.load_peer(&good).unwrap().name(), b.name());
}

#[test]
fn transfers_after_the_peer_was_invalidated() {
    let (a, b, data, src, dst, peer) = pair("inval", 24, 1 << 20);
    let mut remote = RemoteBlocks::new(&peer);
    remote.push_region(0, 0, 1 << 20).unwrap();
    let local = LocalBlocks::whole(&src).unwrap();
    let pl = a.prepare_local(&local).unwrap();
    let pr = a.prepare_remote(&remote).unwrap();
    a.write(&local, &remote, None)
        .unwrap()
        .wait_for(WAIT)
        .unwrap();

    a.invalidate_peer(b.name()).unwrap();
    let is_invalidated = |e: &Error| matches!(e, Error::Peer(PeerError::Invalidated { .. }));
    let e = a.write(&local, &remote, None).unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    let e = a.read(&local, &remote, None).unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    let e = a
        .post_prepared(TransferOp::Write, &pl, &pr, None)
        .unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    let e = a.prepare_remote(&remote).unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    let e = a.notify(b.name(), b"x").unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    let e = a.peer(b.name()).unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    assert!(!a.peer_is_loaded(b.name()), "NIXL dropped the metadata");
    // A blob peer cannot be refetched; it is loaded again instead.
    assert!(matches!(
        a.reconnect(b.name(), Duration::from_millis(10)),
        Err(Error::Peer(PeerError::MalformedMetadata { .. }))
    ));
    let peer2 = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    // Lists of the old connection stay refused; new ones work.
    let e = a.write(&local, &remote, None).unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    let e = a
        .post_prepared(TransferOp::Write, &pl, &pr, None)
        .unwrap_err();
    assert!(is_invalidated(&e), "{e}");
    let mut remote2 = RemoteBlocks::new(&peer2);
    remote2.push_region(0, 0, 1 << 20).unwrap();
    wait_landed(a.write(&local, &remote2, Some(b"again")), &a, &b, b"again");
    assert_same(bytes(&dst), &data, "after reconnecting");
}

#[test]
fn lists_that_do_not_fit_together() {
    let (a, _b, _, src, _dst, peer) = pair("fit", 25, 8192);
    let mut r = RemoteBlocks::new(&peer);
    r.push_region(0, 0, 4096).unwrap();
    let whole = LocalBlocks::whole(&src).unwrap();
    assert!(matches!(
        a.write(&whole, &r, None),
        Err(Error::Transfer(TransferError::Mismatch { .. }))
    ));
    assert!(matches!(
        a.write(&LocalBlocks::new(), &r, None),
        Err(Error::Transfer(TransferError::Mismatch { .. }))
    ));
    let mut two = LocalBlocks::new();
    two.push_range(&src, 0, 4096)
        .unwrap()
        .push_range(&src, 4096, 4096)
        .unwrap();
    assert!(matches!(
        a.write(&two, &r, None),
        Err(Error::Transfer(TransferError::Mismatch { .. }))
    ));
    assert!(matches!(
        r.push(NixlDescriptor::dram(0, 0)),
        Err(Error::Bounds(BoundsError::ZeroSize { .. }))
    ));
    assert!(matches!(
        LocalBlocks::new().push_range(&src, 8000, 4096),
        Err(Error::Bounds(BoundsError::OutOfBounds { .. }))
    ));
    // Prepared lists of another agent are refused.
    let other = agent("fit-other");
    let osrc = filled(&other, &random_bytes(26, 4096));
    let foreign = other
        .prepare_local(&LocalBlocks::whole(&osrc).unwrap())
        .unwrap();
    let pr = a.prepare_remote(&r).unwrap();
    assert!(matches!(
        a.post_prepared(TransferOp::Write, &foreign, &pr, None),
        Err(Error::Transfer(TransferError::Mismatch { .. }))
    ));
}

#[test]
fn etcd_without_endpoints_and_bad_listener_addresses() {
    let a = Agent::new(AgentConfig::new(unique("noetcd"))).unwrap();
    let configured = std::env::var_os("NIXL_ETCD_ENDPOINTS").is_some_and(|v| !v.is_empty());
    assert_eq!(a.uses_etcd(), configured);
    if !configured {
        assert!(matches!(
            a.publish_etcd(),
            Err(Error::Peer(PeerError::EtcdNotConfigured { .. }))
        ));
        assert!(matches!(
            a.connect_etcd("x", Duration::from_millis(10)),
            Err(Error::Peer(PeerError::EtcdNotConfigured { .. }))
        ));
    }
    let v6 = "[::1]:5555".parse().unwrap();
    assert!(matches!(
        a.connect_listener("x", v6, Duration::from_millis(10)),
        Err(Error::Config(ConfigError::Agent { .. }))
    ));
    // Without a listener of its own, the agent cannot exchange socket metadata at all.
    assert!(matches!(
        a.connect_listener("x", loopback(free_port()), Duration::from_millis(10)),
        Err(Error::Config(ConfigError::Agent { .. }))
    ));
    // Nobody listens there: a timeout, not a hang.
    let a = listening_agent("lsn-timeout");
    let start = std::time::Instant::now();
    let err = a
        .connect_listener("x", loopback(free_port()), Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A manifest attached to a listener-fetched peer (which came without one) bounds its remote
/// blocks from then on, on the same connection: lists built before stay valid.
#[test]
fn an_attached_manifest_bounds_a_listener_peers_blocks() {
    let port = free_port();
    let b = Agent::new(listening_config("attach-b", port)).unwrap();
    let dst = poisoned(&b, 1 << 16);
    let a = listening_agent("attach-a");
    let peer = a.connect_listener(b.name(), loopback(port), WAIT).unwrap();
    assert!(peer.manifest().is_none());
    let inside = NixlDescriptor::dram(dst.addr() as u64, 4096);
    let outside = NixlDescriptor::dram(dst.addr() as u64 + (1 << 16), 4096);
    let mut before = RemoteBlocks::new(&peer);
    before.push(inside).unwrap();
    // Without a manifest kvmem cannot check the block; with one it can.
    RemoteBlocks::new(&peer).push(outside).unwrap();
    let manifest = kvmem::nixl::PeerMetadata::parse(&b.local_metadata().unwrap())
        .unwrap()
        .manifest
        .unwrap();
    let peer = a.attach_manifest(manifest.clone()).unwrap();
    assert_eq!(peer.manifest(), Some(&manifest));
    let err = RemoteBlocks::new(&peer).push(outside).unwrap_err();
    assert!(
        matches!(err, Error::Peer(PeerError::OutOfBounds { .. })),
        "{err}"
    );
    let src = filled(&a, &random_bytes(9, 4096));
    let t = a
        .write(&LocalBlocks::whole(&src).unwrap(), &before, None)
        .unwrap();
    t.wait_for(WAIT).unwrap();
    assert_same(
        &bytes(&dst)[..4096],
        bytes(&src),
        "written through the older list",
    );
    let mut wrong = manifest;
    wrong.agent = "nobody-knows-me".into();
    let err = a.attach_manifest(wrong).unwrap_err();
    assert!(
        matches!(err, Error::Peer(PeerError::Unknown { .. })),
        "{err}"
    );
}
