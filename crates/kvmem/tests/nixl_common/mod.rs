//! Helpers shared by the NIXL integration tests: agents, random and poisoned registered buffers,
//! a peer process the tests spawn (the test binary re-executed in a "target" role), and a
//! throw-away etcd server on loopback.
#![allow(dead_code)]

// The verbs every NIXL test calls; not every binary that includes this module uses both.
use kvmem::error::PeerError;
use kvmem::nixl::raw::{
    LocalBlocks, PreparedLocal, PreparedRemote, RemoteBlocks, Transfer, TransferOp,
};
use kvmem::nixl::{Agent, AgentConfig, NixlDescriptor, Peer, Registered};
use kvmem::{Buffer, HostMemory, MemoryDescriptor, Storage, SystemStorage};
#[allow(unused_imports)]
pub use kvmem::{Completion, nixl::raw::RawTransfers};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A name unique in this run (process id and a counter), so that tests running in parallel and
/// agents in etcd never collide.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A UCX agent with a fast listener/etcd thread.
pub fn agent(prefix: &str) -> Agent {
    Agent::new(config(prefix)).expect("start a UCX agent")
}

/// A UCX agent with a listener on a free port (needed to fetch metadata from listeners too).
pub fn listening_agent(prefix: &str) -> Agent {
    Agent::new(listening_config(prefix, free_port())).expect("start a listening UCX agent")
}

/// [`config`] with the metadata listener on `port`.
pub fn listening_config(prefix: &str, port: u16) -> AgentConfig {
    AgentConfig {
        listen: true,
        listen_port: port,
        ..config(prefix)
    }
}

pub fn config(prefix: &str) -> AgentConfig {
    AgentConfig {
        listener_delay_us: 2_000,
        ..AgentConfig::new(unique(prefix))
    }
}

/// `len` random bytes; the same seed gives the same bytes (in every process).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The byte destinations are poisoned with before a copy: never what a copy writes by accident.
pub const POISON: u8 = 0xA5;

/// A registered host buffer holding `data`.
pub fn filled(agent: &Agent, data: &[u8]) -> Buffer {
    let mut s = SystemStorage::new(data.len()).expect("allocate");
    s.copy_from(0, data).expect("fill");
    Buffer::new(agent.register(s).expect("register"))
}

/// `len` random bytes from `seed`, registered with `agent` as one block: the data, its buffer and
/// the list.
pub fn filled_blocks(agent: &Agent, seed: u64, len: usize) -> (Vec<u8>, Buffer, LocalBlocks) {
    let data = random_bytes(seed, len);
    let src = filled(agent, &data);
    let local = LocalBlocks::whole(&src).expect("a list of the whole buffer");
    (data, src, local)
}

/// A registered host buffer of `len` poisoned bytes.
pub fn poisoned(agent: &Agent, len: usize) -> Buffer {
    let mut s = SystemStorage::new(len).expect("allocate");
    s.memset(POISON);
    Buffer::new(agent.register(s).expect("register"))
}

/// Two agents for a transfer, as `(a, b, data, src, dst, peer)`: `a` holds `src` (`data`, `len`
/// random bytes from `seed`), `b` holds `dst` (as many poisoned bytes), and `a` has loaded `b`'s
/// metadata as `peer` (taken after `dst` was registered, so it carries the registration). The
/// agents are named after `prefix`.
pub fn pair(prefix: &str, seed: u64, len: usize) -> (Agent, Agent, Vec<u8>, Buffer, Buffer, Peer) {
    let a = agent(&format!("{prefix}-a"));
    let b = agent(&format!("{prefix}-b"));
    let data = random_bytes(seed, len);
    let src = filled(&a, &data);
    let dst = poisoned(&b, len);
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    (a, b, data, src, dst, peer)
}

/// How long a test waits for a transfer or a message on loopback.
pub const LOOPBACK_WAIT: Duration = Duration::from_secs(60);

/// Waits for `transfer`, posted by `a` with notification `note`, and for `note` to reach `b`.
#[track_caller]
pub fn wait_landed(transfer: kvmem::Result<Transfer>, a: &Agent, b: &Agent, note: &[u8]) {
    transfer.unwrap().wait_for(LOOPBACK_WAIT).unwrap();
    b.wait_for_message(a.name(), note, LOOPBACK_WAIT).unwrap();
}

/// Registers `storage` with `agent`, which must refuse it and hand the storage back (`size`
/// bytes, untouched); returns why it was refused.
#[track_caller]
pub fn refused<S: Storage>(agent: &Agent, storage: S, size: usize) -> kvmem::Error {
    let err = agent.register(storage).unwrap_err();
    assert_eq!(
        err.storage.size(),
        size,
        "the storage comes back with the cause"
    );
    err.error
}

/// Posts a WRITE of prepared block `i` of `local` to prepared block `n - 1 - i` of `remote`, for
/// all `n` blocks, and waits for it.
#[track_caller]
pub fn write_reversed(agent: &Agent, local: &PreparedLocal, remote: &PreparedRemote, n: usize) {
    let li: Vec<usize> = (0..n).collect();
    let ri: Vec<usize> = (0..n).rev().collect();
    agent
        .post_prepared_selected(TransferOp::Write, local, &li, remote, &ri, None)
        .unwrap()
        .wait_for(LOOPBACK_WAIT)
        .unwrap();
}

/// Checks that `got` holds the `block`-byte blocks of `data` in reverse order.
#[track_caller]
pub fn assert_reversed(got: &[u8], data: &[u8], block: usize, what: &str) {
    assert_eq!(got.len(), data.len(), "{what}: length");
    for (i, expected) in data.chunks(block).enumerate() {
        let j = data.len() / block - 1 - i;
        assert_same(&got[j * block..(j + 1) * block], expected, what);
    }
}

/// The bytes of a buffer made by [`filled`] or [`poisoned`].
pub fn bytes(buffer: &Buffer) -> &[u8] {
    buffer
        .downcast_ref::<Registered<SystemStorage>>()
        .expect("a registered SystemStorage")
        .as_slice()
}

/// Asserts two byte slices are equal without printing megabytes on failure.
#[track_caller]
pub fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    if let Some(i) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        panic!(
            "{what}: first difference at byte {i} of {}: got {:#04x}, expected {:#04x}",
            actual.len(),
            actual[i],
            expected[i]
        );
    }
}

/// A TCP port that was free a moment ago on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// The target process.

/// Environment of the target role (deliberately not `KVMEM_NIXL_*`, which configures agents).
pub const ROLE_ENV: &str = "KVMEM_TEST_ROLE";
const NAME_ENV: &str = "KVMEM_TEST_NAME";
const PORT_ENV: &str = "KVMEM_TEST_PORT";
const LEN_ENV: &str = "KVMEM_TEST_LEN";
const SEED_ENV: &str = "KVMEM_TEST_SEED";
const ETCD_ENV: &str = "KVMEM_TEST_ETCD";
const BLOB_ENV: &str = "KVMEM_TEST_BLOB";

/// How the target publishes its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// NIXL's listener socket on this port.
    Listener(u16),
    /// etcd (NIXL_ETCD_ENDPOINTS must be in the environment).
    Etcd,
    /// A `METADATA <hex>` line after `READY`, for [`Agent::load_peer`]: no socket of NIXL's
    /// listener stays behind when the target dies.
    Blob,
}

/// Runs the target role when this process was started as one; returns false otherwise.
///
/// The target registers `len` poisoned bytes, publishes its metadata, prints
/// `READY <addr> <len>` and then obeys commands on stdin, one per line:
/// * `VERIFY <peer> <message> <seed>`: wait for `message` from `peer`, compare the buffer with
///   `random_bytes(seed, len)` and print `VERIFIED` or `MISMATCH <details>`;
/// * `EXIT`: withdraw the metadata (etcd), drop the agent and exit 0.
pub fn run_target_if_requested() -> bool {
    if std::env::var(ROLE_ENV).as_deref() != Ok("target") {
        return false;
    }
    let code = match target_main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("target failed: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn target_main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::var(NAME_ENV)?;
    let len: usize = std::env::var(LEN_ENV)?.parse()?;
    let etcd = std::env::var(ETCD_ENV).is_ok();
    let blob = std::env::var(BLOB_ENV).is_ok();
    let mut cfg = AgentConfig {
        listener_delay_us: 2_000,
        ..AgentConfig::new(name)
    };
    if !etcd && !blob {
        cfg.listen = true;
        cfg.listen_port = std::env::var(PORT_ENV)?.parse()?;
    }
    let agent = Agent::new(cfg)?;
    let dst = poisoned(&agent, len);
    if etcd {
        agent.publish_etcd()?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {} {}", dst.addr(), dst.size())?;
    if blob {
        let hex: String = agent
            .local_metadata()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        writeln!(out, "METADATA {hex}")?;
    }
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["VERIFY", peer, message, seed] => {
                agent.wait_for_message(peer, message.as_bytes(), Duration::from_secs(60))?;
                let expected = random_bytes(seed.parse()?, len);
                match bytes(&dst).iter().zip(&expected).position(|(a, b)| a != b) {
                    None => writeln!(out, "VERIFIED")?,
                    Some(i) => writeln!(out, "MISMATCH at byte {i}")?,
                }
                out.flush()?;
            }
            ["EXIT"] => {
                if etcd {
                    agent.withdraw_etcd()?;
                    // NIXL withdraws in its background thread; give it a moment to reach etcd.
                    std::thread::sleep(Duration::from_millis(300));
                }
                drop(dst);
                drop(agent);
                return Ok(());
            }
            other => return Err(format!("unknown command {other:?}").into()),
        }
    }
    Err("stdin closed before EXIT".into())
}

/// A spawned target process, controlled through its stdin/stdout.
pub struct TargetProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub name: String,
    pub addr: u64,
    pub len: usize,
}

impl TargetProcess {
    /// Starts the test binary itself as a target named `name` and waits for `READY`.
    pub fn spawn(name: &str, len: usize, publish: Publish) -> TargetProcess {
        let exe = std::env::current_exe().expect("own executable");
        let mut cmd = Command::new(exe);
        cmd.env(ROLE_ENV, "target")
            .env(NAME_ENV, name)
            .env(LEN_ENV, len.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match publish {
            Publish::Listener(port) => cmd.env(PORT_ENV, port.to_string()),
            Publish::Etcd => cmd.env(ETCD_ENV, "1"),
            Publish::Blob => cmd.env(BLOB_ENV, "1"),
        };
        let mut child = cmd.spawn().expect("spawn the target process");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut target = TargetProcess {
            child,
            stdin,
            lines: rx,
            name: name.to_owned(),
            addr: 0,
            len: 0,
        };
        let ready = target.expect_line(Duration::from_secs(30));
        let words: Vec<&str> = ready.split_whitespace().collect();
        let ["READY", addr, len] = words.as_slice() else {
            panic!("target {name} said {ready:?} instead of READY");
        };
        target.addr = addr.parse().expect("address");
        target.len = len.parse().expect("length");
        target
    }

    /// The next line the target prints.
    pub fn expect_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("target {} printed nothing for {timeout:?}", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                panic!(
                    "target {} closed its output (exit status {status:?})",
                    self.name
                )
            }
        }
    }

    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write a command to the target");
        stdin.flush().expect("flush");
    }

    /// Asks the target to exit cleanly and waits for it.
    pub fn exit(mut self, timeout: Duration) -> ExitStatus {
        self.send("EXIT");
        self.wait(timeout)
    }

    /// Waits for the process to end (it must, within `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the target") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "target {} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the target dies without any cleanup.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill the target");
    }

    /// The target's memory, as a one-block list for `peer` (its current connection).
    pub fn blocks(&self, peer: &Peer) -> kvmem::Result<RemoteBlocks> {
        let mut remote = RemoteBlocks::new(peer);
        remote.push(NixlDescriptor::dram(self.addr, self.len))?;
        Ok(remote)
    }

    /// Writes `local` (the bytes of `seed`) to `remote` with the notification `note`, and has
    /// the target compare its memory with `seed`'s bytes. The target starts waiting for the
    /// notification first, then the data goes out.
    pub fn verified_write(
        &mut self,
        agent: &Agent,
        local: &LocalBlocks,
        remote: &RemoteBlocks,
        seed: u64,
        note: &str,
    ) -> kvmem::Result<()> {
        self.send(&format!("VERIFY {} {note} {seed}", agent.name()));
        agent
            .write(local, remote, Some(note.as_bytes()))?
            .wait_for(LOOPBACK_WAIT)?;
        let answer = self.expect_line(LOOPBACK_WAIT);
        assert_eq!(answer, "VERIFIED", "the target compared its bytes");
        Ok(())
    }

    /// Coordinated shutdown and restart: `agent` lets go of the peer, the target exits cleanly,
    /// and a new target process starts under the same name (new memory) and is reconnected with
    /// `reconnect`; lists of the old connection (`old`) are then refused, not sent to stale
    /// addresses. Returns the new target and a list of its memory.
    pub fn restart(
        self,
        agent: &Agent,
        local: &LocalBlocks,
        old: &RemoteBlocks,
        publish: Publish,
        reconnect: Duration,
    ) -> kvmem::Result<(TargetProcess, RemoteBlocks)> {
        let (name, len) = (self.name.clone(), self.len);
        agent.invalidate_peer(&name)?;
        let status = self.exit(Duration::from_secs(20));
        assert!(status.success(), "target exit status {status}");
        let target = TargetProcess::spawn(&name, len, publish);
        let peer = agent.reconnect(&name, reconnect)?;
        let err = agent.write(local, old, None).unwrap_err();
        assert!(
            matches!(err, kvmem::Error::Peer(PeerError::Invalidated { .. })),
            "old lists are refused: {err}"
        );
        let remote = target.blocks(&peer)?;
        Ok((target, remote))
    }
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        // Never leave a target behind, whatever happened in the test.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// etcd.

/// A throw-away etcd server on loopback with its own data directory and free ports.
pub struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    ///
    /// # Errors
    /// A message saying what is missing when there is no `etcd` binary or it does not start.
    pub fn start() -> Result<Etcd, String> {
        let binary = find_etcd().ok_or_else(|| {
            "no `etcd` binary on PATH or in /usr/bin: install it with scripts/setup-etcd.sh \
             (Debian package etcd-server)"
                .to_owned()
        })?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir for etcd: {e}"))?;
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&binary)
            .arg("--name=kvmem-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=kvmem-test={peer_url}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut etcd = Etcd {
            child,
            _dir: dir,
            endpoint,
        };
        let start = Instant::now();
        while !etcd.healthy(client) {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                let log =
                    std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default();
                return Err(format!("etcd exited with {status}: {log}"));
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err("etcd did not become healthy within 20 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(etcd)
    }

    fn healthy(&self, port: u16) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut reply);
        reply.contains("\"health\":\"true\"") || reply.contains("\"health\": \"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_etcd() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Waiting with a limit: a test fails with [`kvmem::Error::Timeout`] instead of hanging.
pub trait WaitFor: Completion + Sized {
    /// Waits at most `timeout`, then returns the outcome; a completion still running after
    /// `timeout` is an error.
    fn wait_for(self, timeout: Duration) -> kvmem::Result<Self::Output> {
        if !self.wait_timeout(timeout) {
            return Err(kvmem::Error::Timeout {
                what: "a transfer to finish".into(),
                waited: timeout,
            });
        }
        self.wait()
    }
}

impl<C: Completion> WaitFor for C {}
