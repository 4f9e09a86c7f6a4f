//! `kvmem bench` over NIXL with the real runtime: the loopback paths, and the two-node mode as
//! two `kvmem` processes (target and initiator) on loopback and as two network hosts (network
//! namespaces joined by a veth pair, UCX restricted to TCP), every byte checked by the
//! initiator, both exiting 0.

mod common;

use common::{json_of, kvmem};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

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

/// Runs a target and an initiator, each through `wrap` (a command prefix such as
/// `ip netns exec NS`) with extra environment `env`; the initiator reaches the target at
/// `target_ip`.
fn two_node_run(wrap: [&[&str]; 2], env: &[(&str, &str)], target_ip: &str) {
    let port = free_port();
    let out_dir = tempfile::tempdir().unwrap();
    let command = |prefix: &[&str]| {
        let mut c = match prefix.split_first() {
            None => kvmem(),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_kvmem"));
                c.env("UCX_MODULES", "^ib");
                c
            }
        };
        c.envs(env.iter().copied());
        c
    };
    let mut target = Reaped(
        command(wrap[0])
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
        command(wrap[1])
            .args(["bench", "--role", "initiator", "--json", "--peer"])
            .arg(format!("{target_ip}:{port}"))
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
    let about = v["two_node"].as_str().unwrap();
    assert!(
        about.contains("kvmem-bench-target") && about.contains("8 blocks of 262144 bytes"),
        "{about}"
    );
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{v}");
    println!(
        "two-node ({}): {verified} bytes verified by the initiator over 8 points",
        if wrap[0].is_empty() {
            "loopback"
        } else {
            "veth"
        }
    );
}

#[test]
fn target_and_initiator_processes_verify_every_byte_and_exit_cleanly() {
    two_node_run([&[], &[]], &[], "127.0.0.1");
}

/// Two network namespaces joined by a veth pair, removed again on drop.
struct VethPair {
    namespaces: [String; 2],
    /// The veth end in the first namespace.
    end_a: String,
}

impl VethPair {
    fn new() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let namespaces = [format!("kvmem-{id}-a"), format!("kvmem-{id}-b")];
        let (va, vb) = (format!("kv{id}a"), format!("kv{id}b"));
        let pair = VethPair {
            namespaces: namespaces.clone(),
            end_a: va.clone(),
        };
        let [a, b] = &namespaces;
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", "10.213.0.1/24", "dev", &va],
            vec!["-n", b, "addr", "add", "10.213.0.2/24", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run `ip`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Needs root (`ip netns`), as the CI machine runs: fails with the reason otherwise.
#[test]
fn two_hosts_joined_by_a_veth_pair_over_tcp() {
    let pair = VethPair::new()
        .unwrap_or_else(|e| panic!("this test needs root and iproute2 (`ip netns`, veth): {e}"));
    let [a, b] = &pair.namespaces;
    let exec_a: &[&str] = &["ip", "netns", "exec", a];
    let exec_b: &[&str] = &["ip", "netns", "exec", b];
    // TCP only: the processes share one kernel, so UCX would otherwise move the data through
    // shared memory instead of across the veth pair.
    two_node_run([exec_a, exec_b], &[("UCX_TLS", "tcp")], "10.213.0.1");
    // The data really crossed the veth pair: the target's end saw at least the 16 MiB the
    // initiator verified, in each direction (WRITEs in, READs out).
    let counter = |name: &str| -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", a, "cat"])
            .arg(format!("/sys/class/net/{}/statistics/{name}", pair.end_a))
            .output()
            .expect("read a veth counter");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a byte count")
    };
    let (rx, tx) = (counter("rx_bytes"), counter("tx_bytes"));
    println!("target veth end: {rx} bytes received, {tx} bytes sent");
    assert!(rx >= 16 << 20 && tx >= 16 << 20, "rx {rx}, tx {tx}");
}
