//! The peer allowlist (`AgentConfig::allowed_peers`) with the real runtime: metadata from an
//! agent not on the list is refused with `PeerError::NotAllowed` by every way in (envelope,
//! plain NIXL blob, listener fetch, listener push) and not kept in NIXL; its notifications are
//! dropped and counted, while an allowed peer's get through.

#[path = "nixl_common/mod.rs"]
mod common;

use common::*;
use kvmem::Error;
use kvmem::error::PeerError;
use kvmem::nixl::{Agent, AgentConfig};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn not_allowed(r: kvmem::error::Result<kvmem::nixl::Peer>, who: &str) {
    match r {
        Err(Error::Peer(PeerError::NotAllowed { peer, .. })) => assert_eq!(peer, who),
        other => panic!("expected NotAllowed for '{who}', got {other:?}"),
    }
}

/// Three agents: a friend, an intruder, and one that allows only the friend.
fn friend_intruder_guarded() -> (Agent, Agent, Agent) {
    let friend = agent("friend");
    let guarded = Agent::new(AgentConfig {
        allowed_peers: vec![friend.name().to_owned()],
        ..config("guarded")
    })
    .unwrap();
    (friend, agent("intruder"), guarded)
}

#[test]
fn metadata_from_an_agent_not_on_the_allowlist_is_refused_and_not_kept() {
    let (friend, intruder, guarded) = friend_intruder_guarded();

    // The envelope names its agent: refused before NIXL sees it.
    not_allowed(
        guarded.load_peer(&intruder.local_metadata().unwrap()),
        intruder.name(),
    );
    assert!(!guarded.peer_is_loaded(intruder.name()));
    // A plain NIXL blob names it only once loaded: refused and dropped again.
    not_allowed(
        guarded.load_peer(&intruder.local_nixl_metadata().unwrap()),
        intruder.name(),
    );
    assert!(!guarded.peer_is_loaded(intruder.name()));
    assert!(guarded.peer(intruder.name()).is_err());
    let e = guarded
        .load_peer(&intruder.local_metadata().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("allowed_peers") && e.contains(friend.name()),
        "{e}"
    );

    // The allowed peer loads as before.
    let p = guarded
        .load_peer(&friend.local_metadata().unwrap())
        .unwrap();
    assert_eq!(p.name(), friend.name());
    assert!(guarded.peer_is_loaded(friend.name()));
}

#[test]
fn notifications_from_an_agent_not_on_the_allowlist_are_dropped_and_counted() {
    let (friend, intruder, guarded) = friend_intruder_guarded();
    let meta = guarded.local_metadata().unwrap();
    friend.load_peer(&meta).unwrap();
    intruder.load_peer(&meta).unwrap();
    for i in 0..3u8 {
        intruder.notify(guarded.name(), &[b'x', i]).unwrap();
    }
    friend.notify(guarded.name(), b"hello").unwrap();
    // The friend's message arrives; by then the intruder's, sent first, were polled too.
    let got = guarded.wait_notification(friend.name(), WAIT).unwrap();
    assert_eq!(got, b"hello");
    let deadline = Instant::now() + WAIT;
    while guarded.refused_notifications() < 3 {
        assert!(
            Instant::now() < deadline,
            "the intruder's messages never arrived"
        );
        guarded.poll_notifications().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(guarded.refused_notifications(), 3);
    assert!(
        guarded
            .take_notifications(intruder.name())
            .unwrap()
            .is_empty()
    );
    assert!(guarded.take_all_notifications().unwrap().is_empty());
}

#[test]
fn listener_fetches_and_pushes_of_agents_not_on_the_allowlist_are_refused() {
    let intruder = listening_agent("intruder");
    let port = free_port();
    let guarded = Agent::new(AgentConfig {
        allowed_peers: vec!["someone-else".into()],
        ..listening_config("guarded", port)
    })
    .unwrap();
    // Fetching by a name not on the list is refused before anything is sent.
    not_allowed(
        guarded.connect_listener(intruder.name(), loopback(port), WAIT),
        intruder.name(),
    );
    // The intruder pushes its metadata to our listener; NIXL loads it on its own. Taking it up
    // is refused, and kvmem will not address the intruder (nixl-sys cannot drop metadata NIXL's
    // listener loaded: docs/SECURITY.md).
    intruder.publish_to_listener(loopback(port)).unwrap();
    let deadline = Instant::now() + WAIT;
    while !guarded.peer_is_loaded(intruder.name()) {
        assert!(Instant::now() < deadline, "the push never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    not_allowed(
        guarded.accept_pushed_peer(intruder.name(), WAIT),
        intruder.name(),
    );
    assert!(guarded.peer(intruder.name()).is_err());
    assert!(guarded.notify(intruder.name(), b"hi").is_err());
}

#[test]
fn the_allowlist_comes_from_toml_and_the_environment() {
    let c = AgentConfig::from_vars([("KVMEM_NIXL_ALLOWED_PEERS", "decode-0, decode-1,")]).unwrap();
    assert_eq!(c.allowed_peers, ["decode-0", "decode-1"]);
    assert!(c.allows_peer("decode-1") && !c.allows_peer("decode-2"));
    assert!(AgentConfig::default().allows_peer("anyone"));
    let t = AgentConfig::from_toml_str("name = \"p\"\nallowed_peers = [\"decode-0\"]\n").unwrap();
    assert_eq!(t.allowed_peers, ["decode-0"]);
}
