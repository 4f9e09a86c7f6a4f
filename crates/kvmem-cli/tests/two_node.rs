//! `kvmem bench` over NIXL with the real runtime: the loopback paths, and the two-node mode as
//! two `kvmem` processes (target and initiator) on loopback and as two network hosts (network
//! namespaces joined by a veth pair, UCX restricted to TCP), every byte checked by the
//! initiator, both exiting 0.

mod common;

use common::{json_of, kvmem};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
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

/// `kvmem bench --role target` on `port` with `blocks` blocks of `block_size`, from `command`
/// (plain `kvmem` or a wrapper).
fn spawn_target(
    mut command: Command,
    port: u16,
    blocks: &str,
    block_size: &str,
    out: Stdio,
    err: Stdio,
) -> Reaped {
    Reaped(
        command
            .args(["bench", "--role", "target", "--listen-port"])
            .arg(port.to_string())
            .args(["--blocks", blocks, "--block-size", block_size])
            .args(["--target-wait", "120"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the target"),
    )
}

/// `kvmem bench --role initiator --json` from `command` against `peer` (`host:port`), with the
/// `[sizes, iterations]` of `run` and the extra flags `extra`, writing its files to `out_dir`;
/// its stderr is piped.
fn spawn_initiator(
    mut command: Command,
    extra: &[&str],
    peer: &str,
    [sizes, iterations]: [&str; 2],
    out_dir: &Path,
    out: Stdio,
) -> Reaped {
    Reaped(
        command
            .args(["bench", "--role", "initiator", "--json"])
            .args(extra)
            .args(["--peer", peer, "--sizes", sizes, "--iterations", iterations])
            .arg("--out-dir")
            .arg(out_dir)
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the initiator"),
    )
}

/// The lines `pipe` yields, on a channel fed by a thread of its own.
fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
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
    let mut target = spawn_target(
        command(wrap[0]),
        port,
        "8",
        "256K",
        Stdio::piped(),
        Stdio::inherit(),
    );
    let stdout = target.0.stdout.take().unwrap();
    let rx = lines_of(stdout);
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the target announces its blocks");
    assert!(
        ready.contains("listening") && ready.contains("8 blocks of 262144 bytes"),
        "{ready}"
    );

    let initiator = spawn_initiator(
        command(wrap[1]),
        &[],
        &format!("{target_ip}:{port}"),
        ["4K,64K,4M", "1"],
        out_dir.path(),
        Stdio::piped(),
    );
    // Bounded: the initiator's own protocol steps time out after 30 s each.
    let out = output_of(initiator, Duration::from_secs(180), "the initiator");
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

/// The target is killed while the initiator sweeps: the initiator fails promptly with the
/// transfer's failure, not with the failure of its goodbye to the dead target (the first error
/// wins; issue 13 item 2).
#[test]
fn a_killed_target_is_reported_as_the_transfer_failure() {
    let port = free_port();
    let out_dir = tempfile::tempdir().unwrap();
    let mut logging = kvmem();
    logging.env("RUST_LOG", "info");
    let mut target = spawn_target(logging, port, "16", "1M", Stdio::null(), Stdio::piped());
    let stderr = target.0.stderr.take().unwrap();
    let rx = lines_of(stderr);
    let mut initiator = spawn_initiator(
        kvmem(),
        &[],
        &format!("127.0.0.1:{port}"),
        ["4K", "100000"],
        out_dir.path(),
        Stdio::null(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the target sends its block list");
        if line.contains("sent the block list") {
            break;
        }
    }
    // Let the sweep get going, then kill the target under it.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        initiator.0.try_wait().unwrap().is_none(),
        "the initiator finished before the target was killed"
    );
    target.0.kill().unwrap();
    target.0.wait().unwrap();
    let killed = Instant::now();
    let status = wait_with_timeout(&mut initiator, Duration::from_secs(150), "the initiator");
    let waited = killed.elapsed();
    let mut err = String::new();
    use std::io::Read;
    initiator
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "the initiator succeeded: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        !last.contains("notification") && !last.contains("bye") && !last.contains("not inside"),
        "the goodbye's failure masked the transfer's: {err}"
    );
    assert!(
        ["WRITE", "READ", "transfer", "peer", "within"]
            .iter()
            .any(|w| last.contains(w)),
        "not a transfer failure: {err}"
    );
    println!("killed target: initiator exited {status} after {waited:?}: {last}");
}

/// The project venv's Python (NIXL's wheel and numpy are installed there by scripts/setup.sh).
fn venv_python() -> std::path::PathBuf {
    let venv = std::env::var_os("KVMEM_VENV").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"),
        std::path::PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs the NIXL wheel and numpy)",
        python.display()
    );
    python
}

/// The agent written against NIXL's own Python API (`tests/foreign_agent.py`).
fn foreign_agent() -> Command {
    let mut c = Command::new(venv_python());
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/foreign_agent.py"
    ));
    c.env("UCX_MODULES", "^ib");
    c
}

fn output_of(mut child: Reaped, timeout: Duration, what: &str) -> Output {
    use std::io::Read;
    let status = wait_with_timeout(&mut child, timeout, what);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut s) = child.0.stdout.take() {
        s.read_to_end(&mut stdout).unwrap();
    }
    if let Some(mut s) = child.0.stderr.take() {
        s.read_to_end(&mut stderr).unwrap();
    }
    assert!(
        status.success(),
        "{what} failed ({status}): {}",
        String::from_utf8_lossy(&stderr)
    );
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A foreign initiator (NIXL's Python API) against a `kvmem bench` target. The initiator starts
/// first, so its first metadata fetches fail and it must ask again (docs/TWO_NODE.md). It checks
/// every byte: the target's poison, then its blocks written to a random permutation of the
/// target's slots, read back.
#[test]
fn a_python_nixl_initiator_against_a_kvmem_target() {
    let (port, own) = (free_port(), free_port());
    let initiator = Reaped(
        foreign_agent()
            .args(["initiator", "--target", "kvmem-bench-target", "--peer"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--own-port")
            .arg(own.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the Python initiator"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let target = spawn_target(kvmem(), port, "16", "64K", Stdio::piped(), Stdio::piped());
    let out = output_of(initiator, Duration::from_secs(120), "the Python initiator");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["blocks"], 16, "{v}");
    assert_eq!(v["verified_bytes"], 2 * 16 * 65536, "{v}");
    let t = output_of(target, Duration::from_secs(30), "the kvmem target");
    let said = String::from_utf8_lossy(&t.stdout);
    assert!(said.contains("is done; exiting"), "{said}");
    println!("Python initiator -> kvmem target: {v}");
}

/// A `kvmem bench` initiator against a foreign target (NIXL's Python API): every point's bytes
/// verified by kvmem, both exit 0. The initiator starts first here too.
#[test]
fn a_kvmem_initiator_against_a_python_nixl_target() {
    let port = free_port();
    let out_dir = tempfile::tempdir().unwrap();
    let initiator = spawn_initiator(
        kvmem(),
        &["--name", "py-target"],
        &format!("127.0.0.1:{port}"),
        ["4K,64K", "1"],
        out_dir.path(),
        Stdio::piped(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let target = Reaped(
        foreign_agent()
            .args(["target", "--name", "py-target", "--port"])
            .arg(port.to_string())
            .args(["--blocks", "16", "--block-size", "65536"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the Python target"),
    );
    let v = json_of(&output_of(
        initiator,
        Duration::from_secs(120),
        "the kvmem initiator",
    ));
    let points = v["points"].as_array().unwrap();
    // 2 directions x 2 patterns x 2 sizes over the target's 1 MiB.
    assert_eq!(points.len(), 8, "{v}");
    for p in points {
        assert_eq!(p["bytes"], 1 << 20, "{p}");
        assert_eq!(p["verified_bytes"], p["bytes"], "{p}");
    }
    assert!(v["two_node"].as_str().unwrap().contains("py-target"), "{v}");
    let t = output_of(target, Duration::from_secs(30), "the Python target");
    let said = String::from_utf8_lossy(&t.stdout);
    let done: serde_json::Value =
        serde_json::from_str(said.lines().last().unwrap_or_default()).unwrap();
    assert!(done["touched"].as_u64().unwrap() > 0, "{done}");
    println!("kvmem initiator -> Python target: 8 points verified; target {done}");
}
