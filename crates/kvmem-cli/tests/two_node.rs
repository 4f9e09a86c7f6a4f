//! `kvmem bench` over NIXL with the real runtime: the loopback paths, and the two-node mode as
//! two `kvmem` processes on loopback (target and initiator), every byte checked by the
//! initiator, both exiting 0.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

/// `kvmem` with the UCX InfiniBand module left out: on machines without InfiniBand, the bundled
/// libnl-route crashes in its exit-time destructor once UCX's ib module has loaded it (the
/// process has finished its work by then, but exits with SIGSEGV). Nothing here uses InfiniBand.
fn kvmem() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmem"));
    c.env("UCX_MODULES", "^ib");
    c
}

/// Kills the child if the test fails before it exited.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_with_timeout(
    child: &mut Reaped,
    timeout: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().expect("poll a child") {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "{what} did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kvmem failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn nixl_loopback_points_have_bandwidth_and_checked_bytes() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = kvmem()
        .args(["bench", "--json", "--paths", "nixl-write,nixl-read"])
        .args(["--sizes", "64K", "--iterations", "1", "--out-dir"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let v = json_of(&out);
    let points = v["points"].as_array().unwrap();
    // 2 paths x 2 patterns x 1 size.
    assert_eq!(points.len(), 4, "{v}");
    for path in ["nixl-write", "nixl-read"] {
        for pattern in ["sequential", "scattered"] {
            let p = points
                .iter()
                .find(|p| p["path"] == path && p["pattern"] == pattern)
                .unwrap_or_else(|| panic!("no {path} {pattern} point: {v}"));
            assert!(p["gib_s"].as_f64().unwrap() > 0.0, "{p}");
            assert!(p["reference_gib_s"].as_f64().unwrap() > 0.0, "{p}");
            assert_eq!(p["block_bytes"], 64 << 10);
            let bytes = p["bytes"].as_u64().unwrap();
            assert_eq!(bytes, 64 << 20, "the default --nixl-bytes: {p}");
            assert_eq!(p["verified_bytes"].as_u64(), Some(bytes), "{p}");
        }
    }
}

#[test]
fn target_and_initiator_processes_verify_every_byte_and_exit_cleanly() {
    let port = free_port();
    let out_dir = tempfile::tempdir().unwrap();
    let mut target = Reaped(
        kvmem()
            .args(["bench", "--role", "target", "--listen-port"])
            .arg(port.to_string())
            .args([
                "--blocks",
                "8",
                "--block-size",
                "256K",
                "--target-wait",
                "120",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the target"),
    );
    let stdout = target.0.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the target announces its blocks");
    assert!(
        ready.contains("listening") && ready.contains("8 blocks of 262144 bytes"),
        "{ready}"
    );

    let initiator = Reaped(
        kvmem()
            .args(["bench", "--role", "initiator", "--json", "--peer"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--sizes", "4K,64K,4M", "--iterations", "1", "--out-dir"])
            .arg(out_dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the initiator"),
    );
    // Bounded: the initiator's own protocol steps time out after 30 s each.
    let out = {
        let mut initiator = initiator;
        let status = wait_with_timeout(&mut initiator, Duration::from_secs(180), "the initiator");
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        use std::io::Read;
        if let Some(mut s) = initiator.0.stdout.take() {
            s.read_to_end(&mut stdout).unwrap();
        }
        if let Some(mut s) = initiator.0.stderr.take() {
            s.read_to_end(&mut stderr).unwrap();
        }
        Output {
            status,
            stdout,
            stderr,
        }
    };
    let v = json_of(&out);
    let target_status = wait_with_timeout(&mut target, Duration::from_secs(30), "the target");
    assert!(
        target_status.success(),
        "target exit status {target_status}"
    );
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("is done")), "{rest:?}");

    // 2 directions x 2 patterns x 2 sizes; 4M does not fit the target's 2 MiB and is skipped.
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 8, "{v}");
    let mut verified = 0;
    for p in points {
        assert!(
            p["path"] == "remote-write" || p["path"] == "remote-read",
            "{p}"
        );
        assert!(p["gib_s"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["reference_gib_s"].as_f64().unwrap() > 0.0, "{p}");
        let bytes = p["bytes"].as_u64().unwrap();
        assert_eq!(bytes, 2 << 20, "the whole target region: {p}");
        assert_eq!(p["verified_bytes"].as_u64(), Some(bytes), "{p}");
        verified += bytes;
    }
    assert_eq!(verified, 8 * (2 << 20));
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{v}");
    println!("two-node: {verified} bytes verified by the initiator over 8 points");
}
