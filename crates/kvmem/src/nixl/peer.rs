//! Peers: exchanging metadata with other NIXL agents, in the three ways NIXL agents do it, so
//! that a kvmem agent can talk to any NIXL agent whatever language it is written in.
//!
//! * **Blobs** the application ships itself: [`Agent::local_metadata`] on one side,
//!   [`Agent::load_peer`] on the other. kvmem wraps NIXL's blob in an envelope that also carries
//!   a [`PeerManifest`] (see below). A plain NIXL blob (`get_local_md()` of an agent written
//!   against NIXL directly, in C++, Python or Rust) is accepted as well; such a peer simply has
//!   no manifest. [`Agent::local_nixl_metadata`] produces the plain blob for such agents.
//! * **NIXL's listener socket**: a peer started with `listen = true` serves its metadata on its
//!   port; [`Agent::connect_listener`] fetches it (and [`Agent::publish_to_listener`] pushes this
//!   agent's metadata to a peer's listener).
//! * **etcd**: with `NIXL_ETCD_ENDPOINTS` set when the agents are created (NIXL reads it then;
//!   `NIXL_ETCD_NAMESPACE` optionally scopes the keys), [`Agent::publish_etcd`] stores this
//!   agent's metadata and [`Agent::connect_etcd`] fetches a peer's by name. When a peer withdraws
//!   its metadata ([`Agent::withdraw_etcd`], or its agent is destroyed), NIXL drops it on the
//!   agents that loaded it.
//!
//! [`Agent::invalidate_peer`] forgets a peer; [`Agent::reconnect`] fetches its metadata again the
//! way it was first obtained (after the peer restarted, say). Lists built or prepared for a peer
//! belong to one connection: after an invalidation or reconnection they are refused with
//! [`PeerError::Invalidated`] and must be built again.
//!
//! # Remote validation
//!
//! Remote blocks are checked against what the peer registered before anything is posted:
//! against the peer's manifest when it sent one (when the block is added to a
//! [`RemoteBlocks`](super::raw::RemoteBlocks)), and otherwise against NIXL's own copy of the peer's
//! registrations when the transfer request is built. Either way a block outside the peer's memory
//! is reported as [`PeerError::OutOfBounds`] naming the block, not as a backend failure.
//!
//! # Envelope and manifest format (version 1)
//!
//! ```text
//! offset  size  content
//! 0       8     magic "KVMEMMD1" (ASCII)
//! 8       4     n = manifest length in bytes, little-endian u32
//! 12      n     manifest: UTF-8 JSON, see below
//! 12+n    rest  NIXL's metadata blob, exactly as nixlAgent::getLocalMD returned it
//! ```
//!
//! ```json
//! { "format": 1,
//!   "agent": "decode-3",
//!   "regions": [ { "addr": 139872004849664, "len": 67108864, "mem_type": "Dram", "device_id": 0 } ] }
//! ```
//!
//! `regions` lists every region the agent had registered when the metadata was taken: start
//! address (or file offset), length in bytes, NIXL memory type (`Dram`, `Vram`, `Block`,
//! `Object`, `File`) and device id (CUDA ordinal, file descriptor, or 0). Readers ignore unknown
//! JSON fields, so later versions may add some; a different `format` number is refused.

use super::MemType;
use super::agent::{Agent, lock};
use crate::error::{BoundsError, ConfigError, Error, NixlStatus, PeerError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The magic bytes that open a kvmem metadata envelope.
pub const ENVELOPE_MAGIC: &[u8; 8] = b"KVMEMMD1";

/// The manifest format this version writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a peer registered, shipped next to its NIXL metadata. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerManifest {
    /// Format version, [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The agent's name.
    pub agent: String,
    /// The registered regions.
    pub regions: Vec<ManifestRegion>,
}

/// One registered region in a [`PeerManifest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRegion {
    /// Start address (file offset for files).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// NIXL memory type.
    pub mem_type: MemType,
    /// CUDA ordinal, file descriptor, or 0.
    pub device_id: u64,
}

impl ManifestRegion {
    /// True when `addr..addr+len` of this memory type and device lies inside the region.
    pub fn contains(&self, mem_type: MemType, device_id: u64, addr: u64, len: usize) -> bool {
        let Some(end) = addr.checked_add(len as u64) else {
            return false;
        };
        self.mem_type == mem_type
            && self.device_id == device_id
            && addr >= self.addr
            && end <= self.addr.saturating_add(self.len)
    }
}

impl PeerManifest {
    /// True when one of the regions holds all of `addr..addr+len`.
    pub fn contains(&self, mem_type: MemType, device_id: u64, addr: u64, len: usize) -> bool {
        self.regions
            .iter()
            .any(|r| r.contains(mem_type, device_id, addr, len))
    }
}

/// Peer metadata as kvmem ships it: NIXL's blob, and the manifest when the peer sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMetadata {
    /// What the peer registered (absent for plain NIXL blobs).
    pub manifest: Option<PeerManifest>,
    /// NIXL's own metadata blob.
    pub nixl: Vec<u8>,
}

impl PeerMetadata {
    /// The envelope bytes (a manifest) or NIXL's blob alone (no manifest).
    ///
    /// # Errors
    /// [`BoundsError::Overflow`] for a manifest over 4 GiB.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let Some(manifest) = &self.manifest else {
            return Ok(self.nixl.clone());
        };
        let json = serde_json::to_vec(manifest).map_err(|e| {
            Error::Peer(PeerError::MalformedMetadata {
                reason: format!("cannot encode the manifest: {e}"),
                source: None,
            })
        })?;
        let n = u32::try_from(json.len()).map_err(|_| {
            Error::Bounds(BoundsError::Overflow {
                what: "manifest length",
            })
        })?;
        let mut out = Vec::with_capacity(12 + json.len() + self.nixl.len());
        out.extend_from_slice(ENVELOPE_MAGIC);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.nixl);
        Ok(out)
    }

    /// Parses an envelope, or takes bytes without the magic as a plain NIXL blob.
    ///
    /// # Errors
    /// [`PeerError::MalformedMetadata`] for an empty blob, a truncated envelope, invalid manifest
    /// JSON or an unsupported manifest format.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| {
            Error::Peer(PeerError::MalformedMetadata {
                reason,
                source: None,
            })
        };
        if bytes.is_empty() {
            return Err(bad("the blob is empty".into()));
        }
        let Some(rest) = bytes.strip_prefix(ENVELOPE_MAGIC.as_slice()) else {
            return Ok(Self {
                manifest: None,
                nixl: bytes.to_vec(),
            });
        };
        let Some((len, rest)) = rest.split_first_chunk::<4>() else {
            return Err(bad(
                "the kvmem envelope is truncated before the manifest length".into(),
            ));
        };
        let n = u32::from_le_bytes(*len) as usize;
        if rest.len() < n {
            return Err(bad(format!(
                "the kvmem envelope announces a {n}-byte manifest but holds only {} bytes",
                rest.len()
            )));
        }
        let (json, nixl) = rest.split_at(n);
        let manifest: PeerManifest = serde_json::from_slice(json)
            .map_err(|e| bad(format!("the manifest is not valid JSON of format 1: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "manifest format {} is not supported (this kvmem reads format {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        if nixl.is_empty() {
            return Err(bad("the kvmem envelope holds no NIXL metadata".into()));
        }
        Ok(Self {
            manifest: Some(manifest),
            nixl: nixl.to_vec(),
        })
    }
}

/// How a peer's metadata was obtained, and so how [`Agent::reconnect`] gets it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSource {
    /// A blob given to [`Agent::load_peer`].
    Blob,
    /// Fetched from the peer's listener socket.
    Listener(SocketAddr),
    /// Fetched from etcd.
    Etcd,
    /// Pushed to this agent's listener by the peer ([`Agent::publish_to_listener`] there) and
    /// taken up with [`Agent::accept_pushed_peer`].
    Pushed,
}

/// A peer this agent has metadata for: a name, the connection it belongs to, and its manifest.
///
/// A snapshot: after [`Agent::invalidate_peer`] or [`Agent::reconnect`], lists built from an
/// older `Peer` are refused.
#[derive(Debug, Clone)]
pub struct Peer {
    pub(crate) name: Arc<str>,
    pub(crate) generation: u64,
    pub(crate) manifest: Option<Arc<PeerManifest>>,
    pub(crate) source: PeerSource,
}

impl Peer {
    /// The peer agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the peer registered, when it shipped a manifest.
    pub fn manifest(&self) -> Option<&PeerManifest> {
        self.manifest.as_deref()
    }

    /// The peer's registered regions (empty without a manifest).
    pub fn regions(&self) -> &[ManifestRegion] {
        self.manifest.as_deref().map_or(&[], |m| &m.regions)
    }

    /// How the metadata was obtained.
    pub fn source(&self) -> &PeerSource {
        &self.source
    }
}

struct PeerEntry {
    generation: u64,
    manifest: Option<Arc<PeerManifest>>,
    source: PeerSource,
}

/// The peers an agent knows, and those it invalidated (with how to reach them again).
#[derive(Default)]
pub(crate) struct PeerTable {
    live: HashMap<String, PeerEntry>,
    invalidated: HashMap<String, PeerSource>,
    next_generation: u64,
}

impl PeerTable {
    fn insert(&mut self, name: &str, manifest: Option<PeerManifest>, source: PeerSource) -> Peer {
        self.next_generation += 1;
        let entry = PeerEntry {
            generation: self.next_generation,
            manifest: manifest.map(Arc::new),
            source,
        };
        let peer = Peer {
            name: name.into(),
            generation: entry.generation,
            manifest: entry.manifest.clone(),
            source: entry.source.clone(),
        };
        self.invalidated.remove(name);
        self.live.insert(name.to_owned(), entry);
        peer
    }

    fn known(&self) -> String {
        let mut names: Vec<&str> = self.live.keys().map(String::as_str).collect();
        names.sort_unstable();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

impl Agent {
    /// This agent's metadata in kvmem's envelope: NIXL's blob plus a manifest of every region
    /// registered now. Ship it to peers and load it there with [`load_peer`](Self::load_peer).
    ///
    /// # Errors
    /// [`NixlError::Call`](crate::error::NixlError::Call) when NIXL cannot produce its metadata (no backend that supports remote
    /// transfers, for example).
    pub fn local_metadata(&self) -> Result<Vec<u8>> {
        let manifest = PeerManifest {
            format: MANIFEST_FORMAT,
            agent: self.name().to_owned(),
            regions: lock(&self.shared.registry).regions(),
        };
        PeerMetadata {
            manifest: Some(manifest),
            nixl: self.local_nixl_metadata()?,
        }
        .to_bytes()
    }

    /// NIXL's own metadata blob, for peers that are plain NIXL agents.
    ///
    /// # Errors
    /// [`NixlError::Call`](crate::error::NixlError::Call) as for [`local_metadata`](Self::local_metadata).
    pub fn local_nixl_metadata(&self) -> Result<Vec<u8>> {
        self.nixl()
            .get_local_md()
            .map_err(|e| Error::nixl("get the local metadata", e))
    }

    /// Loads a peer's metadata blob (kvmem envelope or plain NIXL blob). Loading a peer that is
    /// already known replaces its metadata (after a restart, say): lists built for the old
    /// connection are refused afterwards.
    ///
    /// # Errors
    /// [`PeerError::MalformedMetadata`] when the blob cannot be parsed or NIXL refuses it (with
    /// NIXL's error as the source).
    pub fn load_peer(&self, blob: &[u8]) -> Result<Peer> {
        let metadata = PeerMetadata::parse(blob)?;
        if let Some(m) = &metadata.manifest {
            if m.agent == self.name() {
                return Err(Error::Peer(PeerError::MalformedMetadata {
                    reason: format!("the blob is agent '{}''s own metadata", m.agent),
                    source: None,
                }));
            }
            // A restarted peer: drop the old metadata before loading the new.
            if lock(&self.shared.peers).live.contains_key(&m.agent) {
                self.forget_in_nixl(&m.agent)?;
            }
        }
        // nixl-sys panics (after the load, holding no lock) when the agent name in the blob is not
        // UTF-8; a blob from outside must not take the process down.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.nixl().load_remote_md(&metadata.nixl)
        }))
        .map_err(|_| {
            Error::Peer(PeerError::MalformedMetadata {
                reason: "the agent name in the NIXL metadata is not UTF-8".to_owned(),
                source: None,
            })
        })?;
        let name = loaded.map_err(|e| {
            Error::Peer(PeerError::MalformedMetadata {
                reason: "NIXL could not load it (not NIXL metadata, truncated, from an \
                         incompatible NIXL version, or with no backend in common)"
                    .to_owned(),
                source: Some(NixlStatus::of(&e)),
            })
        })?;
        if let Some(m) = &metadata.manifest
            && m.agent != name
        {
            // Do not keep metadata whose manifest describes another agent.
            let _ = self.forget_in_nixl(&name);
            return Err(Error::Peer(PeerError::MalformedMetadata {
                reason: format!(
                    "the manifest is for agent '{}' but the NIXL metadata is for '{name}'",
                    m.agent
                ),
                source: None,
            }));
        }
        tracing::debug!(agent = %self.name(), peer = %name, manifest = metadata.manifest.is_some(), "loaded peer metadata");
        Ok(lock(&self.shared.peers).insert(&name, metadata.manifest, PeerSource::Blob))
    }

    /// Fetches the metadata of the peer named `peer` from its listener socket at `addr` (an
    /// IPv4 address) and waits until NIXL has loaded it.
    ///
    /// The peer must run with `listen = true` on that port, and so must this agent: NIXL sends
    /// and receives socket metadata on its listener thread. That thread polls every
    /// `listener_delay_us`, so a fetch takes at least that long.
    ///
    /// # Errors
    /// [`ConfigError::Agent`] for an IPv6 address or an agent without a listener; [`Error::Timeout`] when the metadata of an agent
    /// named `peer` did not arrive within `timeout` (wrong address, no listener, or another
    /// agent listening there); [`NixlError::Call`](crate::error::NixlError::Call) when NIXL refuses the request.
    pub fn connect_listener(
        &self,
        peer: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Peer> {
        let SocketAddr::V4(v4) = addr else {
            return Err(Error::Config(ConfigError::Agent {
                origin: "connect_listener".into(),
                message: format!("{addr}: NIXL's listener protocol takes IPv4 addresses only"),
            }));
        };
        self.require_comm_thread("connect_listener")?;
        self.forget_if_known(peer)?;
        let args = socket_args(v4)?;
        // NIXL drops a request whose cached connection turns out dead (a restarted peer on the
        // same port, say) and reconnects on the next one: ask again until the deadline.
        self.fetch_until_loaded(peer, timeout, Duration::from_millis(500), || {
            self.nixl()
                .fetch_remote_md(peer, Some(&args))
                .map_err(|e| Error::nixl("request metadata from a listener", e))
        })
        .map_err(|e| match e {
            Error::Timeout { waited, .. } => Error::Timeout {
                what: format!("metadata of '{peer}' from listener {addr}"),
                waited,
            },
            e => e,
        })?;
        Ok(lock(&self.shared.peers).insert(peer, None, PeerSource::Listener(addr)))
    }

    /// Sends this agent's metadata to the listener socket at `addr`, so that the agent there
    /// can address this one (to send notifications back, or to start transfers itself).
    /// NIXL sends it in the background.
    ///
    /// # Errors
    /// As for [`connect_listener`](Self::connect_listener), without the timeout.
    pub fn publish_to_listener(&self, addr: SocketAddr) -> Result<()> {
        let SocketAddr::V4(v4) = addr else {
            return Err(Error::Config(ConfigError::Agent {
                origin: "publish_to_listener".into(),
                message: format!("{addr}: NIXL's listener protocol takes IPv4 addresses only"),
            }));
        };
        self.require_comm_thread("publish_to_listener")?;
        let args = socket_args(v4)?;
        self.nixl()
            .send_local_md(Some(&args))
            .map_err(|e| Error::nixl("send metadata to a listener", e))
    }

    /// Takes up the metadata the peer named `peer` pushed to this agent's listener socket
    /// ([`publish_to_listener`](Self::publish_to_listener) there, `send_local_md` with an
    /// address in NIXL's other bindings): waits until NIXL has loaded it, then makes the peer
    /// addressable (notifications, transfers) like one fetched with
    /// [`connect_listener`](Self::connect_listener). Useful to answer an agent whose address
    /// is not known, only its name (from a notification it sent).
    ///
    /// # Errors
    /// [`ConfigError::Agent`] for an agent without a listener; [`Error::Timeout`] when no metadata
    /// of an agent named `peer` arrived within `timeout`.
    pub fn accept_pushed_peer(&self, peer: &str, timeout: Duration) -> Result<Peer> {
        self.require_comm_thread("accept_pushed_peer")?;
        self.fetch_until_loaded(peer, timeout, timeout, || Ok(()))?;
        Ok(lock(&self.shared.peers).insert(peer, None, PeerSource::Pushed))
    }

    /// Stores this agent's metadata in etcd (under NIXL's namespace), for peers to fetch with
    /// [`connect_etcd`](Self::connect_etcd). Publish again after registering more memory.
    ///
    /// # Errors
    /// [`PeerError::EtcdNotConfigured`] unless NIXL_ETCD_ENDPOINTS was set when the agent was
    /// created; [`NixlError::Call`](crate::error::NixlError::Call) when NIXL refuses.
    pub fn publish_etcd(&self) -> Result<()> {
        self.require_etcd()?;
        self.nixl()
            .send_local_md(None)
            .map_err(|e| Error::nixl("publish metadata to etcd", e))
    }

    /// Removes this agent's metadata from etcd; agents that loaded it drop it.
    ///
    /// # Errors
    /// As for [`publish_etcd`](Self::publish_etcd).
    pub fn withdraw_etcd(&self) -> Result<()> {
        self.require_etcd()?;
        self.nixl()
            .invalidate_local_md(None)
            .map_err(|e| Error::nixl("withdraw metadata from etcd", e))
    }

    /// Fetches the metadata the peer named `peer` published in etcd, and waits until NIXL has
    /// loaded it. NIXL waits for the key to appear, so the peer may publish a little later.
    ///
    /// # Errors
    /// [`PeerError::EtcdNotConfigured`]; [`Error::Timeout`] when it did not arrive within `timeout`;
    /// [`NixlError::Call`](crate::error::NixlError::Call).
    pub fn connect_etcd(&self, peer: &str, timeout: Duration) -> Result<Peer> {
        self.require_etcd()?;
        self.forget_if_known(peer)?;
        // NIXL watches for a missing key only for a few seconds; ask again until the deadline.
        self.fetch_until_loaded(peer, timeout, Duration::from_secs(4), || {
            self.nixl()
                .fetch_remote_md(peer, None)
                .map_err(|e| Error::nixl("request metadata from etcd", e))
        })
        .map_err(|e| match e {
            Error::Timeout { waited, .. } => Error::Timeout {
                what: format!("metadata of '{peer}' from etcd"),
                waited,
            },
            e => e,
        })?;
        Ok(lock(&self.shared.peers).insert(peer, None, PeerSource::Etcd))
    }

    /// Forgets a peer: NIXL drops its metadata and disconnects from it, and kvmem refuses
    /// transfers to it with [`PeerError::Invalidated`] until it is reconnected.
    ///
    /// # Errors
    /// [`PeerError::Unknown`] for a peer the agent does not know; [`NixlError::Call`](crate::error::NixlError::Call) when NIXL
    /// refuses.
    pub fn invalidate_peer(&self, peer: &str) -> Result<()> {
        let mut peers = lock(&self.shared.peers);
        let Some(entry) = peers.live.remove(peer) else {
            return Err(self.missing_peer(&peers, peer));
        };
        peers.invalidated.insert(peer.to_owned(), entry.source);
        drop(peers);
        self.forget_in_nixl(peer)?;
        tracing::debug!(agent = %self.name(), peer, "invalidated peer");
        Ok(())
    }

    /// Fetches a peer's metadata again the way it was obtained (listener or etcd), after the peer
    /// restarted or was invalidated.
    ///
    /// # Errors
    /// [`PeerError::Unknown`]; [`PeerError::MalformedMetadata`] for a peer loaded from a blob (load
    /// its new blob with [`load_peer`](Self::load_peer)); otherwise as for
    /// [`connect_listener`](Self::connect_listener) or [`connect_etcd`](Self::connect_etcd).
    pub fn reconnect(&self, peer: &str, timeout: Duration) -> Result<Peer> {
        let source = {
            let peers = lock(&self.shared.peers);
            match (peers.live.get(peer), peers.invalidated.get(peer)) {
                (Some(e), _) => e.source.clone(),
                (None, Some(s)) => s.clone(),
                (None, None) => return Err(self.missing_peer(&peers, peer)),
            }
        };
        match source {
            PeerSource::Listener(addr) => self.connect_listener(peer, addr, timeout),
            PeerSource::Etcd => self.connect_etcd(peer, timeout),
            PeerSource::Blob => Err(Error::Peer(PeerError::MalformedMetadata {
                reason: format!(
                    "peer '{peer}' was loaded from a blob; load its current blob with load_peer"
                ),
                source: None,
            })),
            PeerSource::Pushed => Err(Error::Peer(PeerError::MalformedMetadata {
                reason: format!(
                    "peer '{peer}' pushed its metadata to this agent's listener; have it push \
                     again and call accept_pushed_peer"
                ),
                source: None,
            })),
        }
    }

    /// The peer named `name`.
    ///
    /// # Errors
    /// [`PeerError::Invalidated`] for an invalidated peer; [`PeerError::Unknown`] otherwise.
    pub fn peer(&self, name: &str) -> Result<Peer> {
        let peers = lock(&self.shared.peers);
        match peers.live.get(name) {
            Some(e) => Ok(Peer {
                name: name.into(),
                generation: e.generation,
                manifest: e.manifest.clone(),
                source: e.source.clone(),
            }),
            None => Err(self.missing_peer(&peers, name)),
        }
    }

    /// The peers this agent has metadata for.
    pub fn peers(&self) -> Vec<Peer> {
        let peers = lock(&self.shared.peers);
        let mut out: Vec<Peer> = peers
            .live
            .iter()
            .map(|(name, e)| Peer {
                name: name.as_str().into(),
                generation: e.generation,
                manifest: e.manifest.clone(),
                source: e.source.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// True while NIXL holds metadata for `peer` (false after NIXL dropped it on its own because
    /// the peer disconnected or withdrew it).
    pub fn peer_is_loaded(&self, peer: &str) -> bool {
        self.nixl().check_remote_metadata(peer, None)
    }

    /// Succeeds when `peer` is live and still the connection `generation` belongs to.
    pub(crate) fn check_peer(&self, peer: &str, generation: u64) -> Result<()> {
        let peers = lock(&self.shared.peers);
        match peers.live.get(peer) {
            Some(e) if e.generation == generation => Ok(()),
            Some(_) => Err(Error::Peer(PeerError::Invalidated {
                agent: self.name().to_owned(),
                peer: peer.to_owned(),
            })),
            None => Err(self.missing_peer(&peers, peer)),
        }
    }

    fn missing_peer(&self, peers: &PeerTable, peer: &str) -> Error {
        if peers.invalidated.contains_key(peer) {
            Error::Peer(PeerError::Invalidated {
                agent: self.name().to_owned(),
                peer: peer.to_owned(),
            })
        } else {
            Error::Peer(PeerError::Unknown {
                agent: self.name().to_owned(),
                peer: peer.to_owned(),
                known: peers.known(),
            })
        }
    }

    /// NIXL runs socket metadata exchange on its listener thread, which it only starts for
    /// agents with a listener (or etcd).
    fn require_comm_thread(&self, op: &str) -> Result<()> {
        if self.shared.config.listen || self.uses_etcd() {
            Ok(())
        } else {
            Err(Error::Config(ConfigError::Agent {
                origin: op.to_owned(),
                message: format!(
                    "agent '{}' has no listener; NIXL exchanges socket metadata on the listener \
                     thread, so start the agent with `listen = true` and a free `listen_port`",
                    self.name()
                ),
            }))
        }
    }

    fn require_etcd(&self) -> Result<()> {
        if self.uses_etcd() {
            Ok(())
        } else {
            Err(Error::Peer(PeerError::EtcdNotConfigured {
                agent: self.name().to_owned(),
            }))
        }
    }

    /// Drops a known peer's metadata before fetching it again.
    fn forget_if_known(&self, peer: &str) -> Result<()> {
        let known = lock(&self.shared.peers).live.contains_key(peer);
        if known {
            self.forget_in_nixl(peer)
        } else {
            Ok(())
        }
    }

    /// Makes NIXL drop `peer`'s metadata; already gone is fine.
    fn forget_in_nixl(&self, peer: &str) -> Result<()> {
        if !self.nixl().check_remote_metadata(peer, None) {
            // NIXL dropped it already (disconnect, etcd withdrawal) or never had it; nixl-sys
            // may still list it, which its own invalidation handles as "not found" = done.
            let _ = self.nixl().invalidate_remote_md(peer);
            return Ok(());
        }
        match self.nixl().invalidate_remote_md(peer) {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::nixl("invalidate a peer's metadata", e)),
        }
    }

    /// Issues `fetch` (again every `retry`) until NIXL holds `peer`'s metadata or `timeout`.
    fn fetch_until_loaded(
        &self,
        peer: &str,
        timeout: Duration,
        retry: Duration,
        fetch: impl Fn() -> Result<()>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut asked = None::<Instant>;
        loop {
            if asked.is_none_or(|t| t.elapsed() >= retry) {
                fetch()?;
                asked = Some(Instant::now());
            }
            if self.nixl().check_remote_metadata(peer, None) {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Timeout {
                    what: format!("metadata of '{peer}'"),
                    waited,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn socket_args(addr: std::net::SocketAddrV4) -> Result<nixl_sys::OptArgs> {
    let mut args = nixl_sys::OptArgs::new().map_err(|e| Error::nixl("create NIXL arguments", e))?;
    // An IPv4 address formats without NUL bytes, which nixl-sys would refuse.
    args.set_ip_addr(&addr.ip().to_string())
        .map_err(|e| Error::nixl("set the listener address", e))?;
    args.set_port(addr.port())
        .map_err(|e| Error::nixl("set the listener port", e))?;
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> PeerManifest {
        PeerManifest {
            format: 1,
            agent: "b".into(),
            regions: vec![ManifestRegion {
                addr: 0x1000,
                len: 0x1000,
                mem_type: MemType::Dram,
                device_id: 0,
            }],
        }
    }

    #[test]
    fn envelope_round_trip_and_plain_blobs() {
        let md = PeerMetadata {
            manifest: Some(manifest()),
            nixl: b"nixl-bytes".to_vec(),
        };
        let bytes = md.to_bytes().unwrap();
        assert!(bytes.starts_with(ENVELOPE_MAGIC));
        assert_eq!(PeerMetadata::parse(&bytes).unwrap(), md);
        let plain = PeerMetadata::parse(b"plain nixl").unwrap();
        assert_eq!((plain.manifest, plain.nixl), (None, b"plain nixl".to_vec()));
        let json = String::from_utf8(bytes[12..bytes.len() - 10].to_vec()).unwrap();
        assert_eq!(
            json,
            r#"{"format":1,"agent":"b","regions":[{"addr":4096,"len":4096,"mem_type":"Dram","device_id":0}]}"#
        );
    }

    #[test]
    fn malformed_envelopes_are_typed_errors() {
        let good = PeerMetadata {
            manifest: Some(manifest()),
            nixl: b"x".to_vec(),
        }
        .to_bytes()
        .unwrap();
        let mut bad_format = PeerMetadata {
            manifest: Some(PeerManifest {
                format: 2,
                ..manifest()
            }),
            nixl: b"x".to_vec(),
        }
        .to_bytes()
        .unwrap();
        let mut garbage_json = good.clone();
        garbage_json[12] = b'!';
        for bytes in [
            &b""[..],
            &good[..10],
            &good[..20],
            &good[..good.len() - 1],
            &garbage_json[..],
            &bad_format[..],
        ] {
            assert!(
                matches!(
                    PeerMetadata::parse(bytes),
                    Err(Error::Peer(PeerError::MalformedMetadata { .. }))
                ),
                "{bytes:?}"
            );
        }
        bad_format.clear();
    }

    #[test]
    fn manifest_containment() {
        let m = manifest();
        assert!(m.contains(MemType::Dram, 0, 0x1000, 0x1000));
        assert!(m.contains(MemType::Dram, 0, 0x1800, 0x800));
        assert!(!m.contains(MemType::Dram, 0, 0x1800, 0x801));
        assert!(!m.contains(MemType::Vram, 0, 0x1000, 1));
        assert!(!m.contains(MemType::Dram, 1, 0x1000, 1));
        assert!(!m.contains(MemType::Dram, 0, u64::MAX, 2));
    }
}
