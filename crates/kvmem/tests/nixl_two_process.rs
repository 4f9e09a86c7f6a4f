//! Two processes over loopback with UCX (the real runtime): the test binary re-executes itself as
//! a target process, fetches its metadata from NIXL's listener socket, writes 64 MiB with a
//! notification, and shuts both sides down in order. Then: a peer killed in the middle of a
//! stream of transfers, 20 times; and a process without the NIXL runtime.

#[path = "nixl_common/mod.rs"]
mod common;

use common::*;
use kvmem::Error;
use kvmem::error::{NixlError, PeerError, TransferError};
use kvmem::nixl::Agent;
use kvmem::nixl::raw::RemoteBlocks;
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIZE: usize = 64 << 20;
const NO_RUNTIME_ROLE: &str = "no-runtime";

fn main() {
    run_target_if_requested();
    if std::env::var(ROLE_ENV).as_deref() == Ok(NO_RUNTIME_ROLE) {
        no_runtime_role();
    }
    let mut args = Arguments::from_args();
    // The kill test measures how fast a failure shows up: keep the machine to one test at a time.
    args.test_threads.get_or_insert(1);
    let trials = vec![
        Trial::test(
            "listener_write_64m_notification_shutdown_restart",
            listener_round_trip,
        ),
        Trial::test("peer_killed_mid_stream_20_times", killed_peer),
        Trial::test("missing_runtime_is_a_typed_error", missing_runtime),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// A target process named `prefix` plus a unique suffix with `len` bytes, listening on a free
/// port; `agent` connected to it, and a list of its memory.
fn listening_target(
    agent: &Agent,
    prefix: &str,
    len: usize,
) -> Result<(TargetProcess, RemoteBlocks, u16), Failed> {
    let port = free_port();
    let target = TargetProcess::spawn(&unique(prefix), len, Publish::Listener(port));
    let peer = agent.connect_listener(&target.name, loopback(port), Duration::from_secs(20))?;
    assert!(
        peer.manifest().is_none(),
        "the listener carries NIXL metadata only"
    );
    let remote = target.blocks(&peer)?;
    Ok((target, remote, port))
}

fn listener_round_trip() -> Result<(), Failed> {
    let agent = listening_agent("lsn-init");
    let (data, src, local) = filled_blocks(&agent, 31, SIZE);
    let (mut target, remote, port) = listening_target(&agent, "lsn-target", SIZE)?;
    let name = target.name.clone();
    // A transfer dropped right after posting is cancelled (or released, if already done); the
    // next transfer is unaffected and verified by the peer.
    let dropped = agent.write(&local, &remote, None)?;
    eprintln!(
        "dropped a 64 MiB WRITE that was done: {}",
        dropped.is_done()
    );
    drop(dropped);
    target.verified_write(&agent, &local, &remote, 31, "first")?;
    eprintln!("first transfer verified");

    // Coordinated shutdown (this side lets go of the peer first, then the peer exits cleanly);
    // the peer restarts under the same name on the same port (new memory, new process).
    let publish = Publish::Listener(port);
    let timeout = Duration::from_secs(20);
    let (mut target, remote) = target.restart(&agent, &local, &remote, publish, timeout)?;
    target.verified_write(&agent, &local, &remote, 31, "after-restart")?;
    agent.invalidate_peer(&name)?;
    let status = target.exit(Duration::from_secs(20));
    assert!(status.success(), "target exit status {status}");
    assert_same(bytes(&src), &data, "source after both transfers");
    Ok(())
}

const KILL_ROUNDS: usize = 20;
const STREAM_BLOCK: usize = 8 << 20;
/// How quickly the survivor must see an error after the kill.
const DETECT: Duration = Duration::from_secs(5);
/// How long the killer waits for a transfer to be in flight before killing anyway (and failing
/// the round): longer than `DETECT`, so that a `write()` that blocks shows as such.
const KILL_WAIT: Duration = Duration::from_secs(30);

fn killed_peer() -> Result<(), Failed> {
    let survivor = listening_agent("kill-survivor");
    let (data, src, local) = filled_blocks(&survivor, 41, STREAM_BLOCK);

    // The other peer, alive for the whole test.
    let (mut other, other_remote, _) = listening_target(&survivor, "kill-other", STREAM_BLOCK)?;

    let mut detect_times = Vec::new();
    let mut hangs = 0;
    for round in 0..KILL_ROUNDS {
        let (victim, remote, _) = listening_target(&survivor, "kill-victim", STREAM_BLOCK)?;
        let name = victim.name.clone();
        // Kill it from another thread after a short, varying delay, while this thread streams,
        // at a moment when a transfer is in flight: posted, its completion not yet seen. The
        // killer holds `in_flight` across the kill, so the stream cannot move on meanwhile.
        let delay = Duration::from_millis(20 + 13 * round as u64);
        let in_flight = Arc::new(Mutex::new(None::<Instant>));
        // When the victim was killed, and whether a transfer was in flight then.
        let kill_time = Arc::new(Mutex::new(None::<(Instant, bool)>));
        let killer = {
            let (kill_time, in_flight) = (kill_time.clone(), in_flight.clone());
            std::thread::spawn(move || {
                let mut victim = victim;
                std::thread::sleep(delay);
                let give_up = Instant::now() + KILL_WAIT;
                loop {
                    let flying = in_flight.lock().unwrap();
                    if flying.is_some() || Instant::now() > give_up {
                        let now = Instant::now();
                        victim.kill();
                        *kill_time.lock().unwrap() = Some((now, flying.is_some()));
                        break;
                    }
                    drop(flying);
                    std::thread::yield_now();
                }
                victim.wait(Duration::from_secs(10));
            })
        };
        let mut completed = 0u32;
        // The longest a `write()` call itself took: posting must not block on a dead peer.
        let mut longest_write = Duration::ZERO;
        let failure = loop {
            let posting = Instant::now();
            let posted = survivor.write(&local, &remote, None);
            longest_write = longest_write.max(posting.elapsed());
            match posted {
                Err(e) => break (Instant::now(), e),
                Ok(t) => {
                    *in_flight.lock().unwrap() = Some(posting);
                    let outcome = t.wait_for(DETECT * 2);
                    *in_flight.lock().unwrap() = None;
                    match outcome {
                        Ok(()) => completed += 1,
                        Err(e) => break (Instant::now(), e),
                    }
                }
            }
            // Transfers still succeed long after the kill: that is a hang too.
            if kill_time
                .lock()
                .unwrap()
                .is_some_and(|(k, _)| k.elapsed() > DETECT * 2)
            {
                break (
                    Instant::now(),
                    Error::Timeout {
                        what: "an error after the peer was killed".into(),
                        waited: DETECT * 2,
                    },
                );
            }
        };
        killer.join().expect("killer thread");
        let (killed_at, was_in_flight) = kill_time.lock().unwrap().expect("the victim was killed");
        assert!(
            was_in_flight,
            "round {round}: no transfer was in flight when the peer was killed (none seen in flight for {KILL_WAIT:?})"
        );
        assert!(
            longest_write <= DETECT,
            "round {round}: a write() call took {longest_write:?}: posting blocked on the peer"
        );
        let (failed_at, error) = failure;
        assert!(
            failed_at >= killed_at,
            "round {round}: the stream failed before the peer was killed: {error}"
        );
        let detected = failed_at - killed_at;
        eprintln!(
            "round {round}: {completed} transfers done, killed with one in flight, then after \
             {detected:?}: {error} (longest write() {longest_write:?})"
        );
        if matches!(error, Error::Timeout { .. }) || detected > DETECT {
            hangs += 1;
        }
        detect_times.push(detected);
        assert!(
            matches!(
                error,
                Error::Transfer(TransferError::Failed { .. })
                    | Error::Peer(PeerError::Unavailable { .. })
                    | Error::Timeout { .. }
            ),
            "round {round}: unexpected error kind: {error}"
        );
        // The survivor's own memory is intact...
        assert_same(bytes(&src), &data, "survivor source after the peer died");
        // ...and it still moves data with the other peer (verified there).
        let note = format!("round-{round}");
        other.verified_write(&survivor, &local, &other_remote, 41, &note)?;
        // Forget the dead peer (NIXL may have dropped it already).
        let _ = survivor.invalidate_peer(&name);
    }
    detect_times.sort();
    eprintln!(
        "detection after kill over {KILL_ROUNDS} rounds: min {:?}, median {:?}, max {:?}",
        detect_times[0],
        detect_times[KILL_ROUNDS / 2],
        detect_times[KILL_ROUNDS - 1]
    );
    assert_eq!(hangs, 0, "rounds where no error came within {DETECT:?}");
    survivor.invalidate_peer(&other.name)?;
    let status = other.exit(Duration::from_secs(20));
    assert!(status.success(), "other peer exit status {status}");
    Ok(())
}

/// Child: no NIXL runtime where it is told to look. Creating an agent must fail with
/// NixlUnavailable instead of aborting the process.
fn no_runtime_role() -> ! {
    match Agent::new(kvmem::nixl::AgentConfig::new("no-runtime")) {
        Err(Error::Nixl(NixlError::Unavailable { searched })) => {
            println!("UNAVAILABLE {searched}");
            std::process::exit(0)
        }
        Err(e) => {
            println!("OTHER {e}");
            std::process::exit(2)
        }
        Ok(_) => {
            println!("STARTED");
            std::process::exit(3)
        }
    }
}

fn missing_runtime() -> Result<(), Failed> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, NO_RUNTIME_ROLE)
        .env("KVMEM_NIXL_LIB_DIR", "/nonexistent/kvmem-no-nixl-here")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child: {} / {stdout}", out.status);
    assert!(
        stdout.starts_with("UNAVAILABLE") && stdout.contains("/nonexistent/kvmem-no-nixl-here"),
        "{stdout}"
    );
    Ok(())
}
