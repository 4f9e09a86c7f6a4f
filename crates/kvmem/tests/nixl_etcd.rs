//! Metadata through etcd (the real runtime and a real etcd server on loopback): a target
//! process publishes its metadata, this process fetches it by name, writes 64 MiB with a
//! notification, and both shut down in order; the target restarts and is reconnected; its
//! withdrawal reaches this agent.
//!
//! Needs an `etcd` binary (Debian package `etcd-server`, installed by scripts/setup-etcd.sh):
//! without one the test fails and says so.

#[path = "nixl_common/mod.rs"]
mod common;

use common::*;
use kvmem::Error;
use kvmem::error::PeerError;
use kvmem::nixl::PeerSource;
use libtest_mimic::{Arguments, Failed, Trial};
use std::time::{Duration, Instant};

const SIZE: usize = 64 << 20;
const NAME: &str = "etcd_write_64m_notification_shutdown_restart_withdraw";

fn main() {
    run_target_if_requested();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    // etcd is started, and NIXL pointed at it, before any other thread exists.
    let etcd = Etcd::start();
    let trials = match &etcd {
        Ok(etcd) => {
            // SAFETY: still single-threaded here (the test runner starts its threads later and
            // NIXL is not loaded yet), so nothing reads the environment concurrently. NIXL reads
            // these when agents are created; target processes inherit them.
            unsafe {
                std::env::set_var("NIXL_ETCD_ENDPOINTS", &etcd.endpoint);
                std::env::set_var(
                    "NIXL_ETCD_NAMESPACE",
                    format!("/kvmem-test-{}", std::process::id()),
                );
            }
            vec![Trial::test(NAME, etcd_round_trip)]
        }
        Err(message) => {
            let message = message.clone();
            vec![Trial::test(NAME, move || Err(Failed::from(message)))]
        }
    };
    let conclusion = libtest_mimic::run(&args, trials);
    drop(etcd);
    conclusion.exit();
}

fn etcd_round_trip() -> Result<(), Failed> {
    let agent = agent("etcd-init");
    assert!(
        agent.uses_etcd(),
        "NIXL_ETCD_ENDPOINTS is set, so the agent uses etcd"
    );
    let (data, src, local) = filled_blocks(&agent, 51, SIZE);
    let name = unique("etcd-target");

    let mut target = TargetProcess::spawn(&name, SIZE, Publish::Etcd);
    let peer = agent.connect_etcd(&name, Duration::from_secs(30))?;
    assert_eq!(peer.source(), &PeerSource::Etcd);
    let remote = target.blocks(&peer)?;
    target.verified_write(&agent, &local, &remote, 51, "over-etcd")?;

    // Coordinated shutdown (the peer withdraws and exits cleanly), and a restart under the same
    // name: reconnect fetches the new metadata from etcd.
    let timeout = Duration::from_secs(30);
    let (mut target, remote) = target.restart(&agent, &local, &remote, Publish::Etcd, timeout)?;
    target.verified_write(&agent, &local, &remote, 51, "after-restart")?;

    // This time the peer withdraws while still known here: NIXL's etcd watch drops it.
    let status = target.exit(Duration::from_secs(20));
    assert!(status.success(), "target exit status {status}");
    let start = Instant::now();
    while agent.peer_is_loaded(&name) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the withdrawal did not reach this agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = agent.write(&local, &remote, None).unwrap_err();
    assert!(
        matches!(err, Error::Peer(PeerError::Unavailable { .. })),
        "{err}"
    );
    agent.invalidate_peer(&name)?;
    assert_same(bytes(&src), &data, "source");
    Ok(())
}
