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
//!
//! The metadata itself (envelope, [`PeerManifest`], [`Peer`]) is described in
//! [`metadata`](super::metadata).

use super::agent::{Agent, lock};
use super::metadata::PeerTable;
pub use super::metadata::{
    ENVELOPE_MAGIC, MANIFEST_FORMAT, Peer, PeerManifest, PeerMetadata, PeerSource,
};
use crate::error::{ConfigError, Error, NixlStatus, PeerError, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// [`PeerError::NotAllowed`] for a peer not on the [allowlist](super::AgentConfig::allowed_peers).
    /// [`PeerError::MalformedMetadata`] when the blob cannot be parsed or NIXL refuses it (with
    /// NIXL's error as the source).
    pub fn load_peer(&self, blob: &[u8]) -> Result<Peer> {
        let metadata = PeerMetadata::parse(blob)?;
        if let Some(m) = &metadata.manifest {
            self.check_allowed(&m.agent)?;
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
        if let Err(e) = self.check_allowed(&name) {
            // A plain NIXL blob names its agent only once NIXL has loaded it: drop it again.
            if let Err(forget) = self.forget_in_nixl(&name) {
                tracing::warn!(peer = %name, error = %forget, "could not drop a refused peer's metadata");
            }
            return Err(e);
        }
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
    /// [`PeerError::NotAllowed`] for a peer not on the [allowlist](super::AgentConfig::allowed_peers).
    /// [`ConfigError::Agent`] for an IPv6 address or an agent without a listener; [`Error::Timeout`] when the metadata of an agent
    /// named `peer` did not arrive within `timeout` (wrong address, no listener, or another
    /// agent listening there); [`NixlError::Call`](crate::error::NixlError::Call) when NIXL refuses the request.
    pub fn connect_listener(
        &self,
        peer: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Peer> {
        let v4 = ipv4(addr, "connect_listener")?;
        self.require_comm_thread("connect_listener")?;
        self.check_allowed(peer)?;
        self.forget_if_known(peer)?;
        let args = socket_args(v4)?;
        // NIXL drops a request whose cached connection turns out dead (a restarted peer on the
        // same port, say) and reconnects on the next one: ask again until the deadline.
        let from = format!(" from listener {addr}");
        self.fetch_until_loaded(peer, &from, timeout, Duration::from_millis(500), || {
            self.nixl()
                .fetch_remote_md(peer, Some(&args))
                .map_err(|e| Error::nixl("request metadata from a listener", e))
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
        let v4 = ipv4(addr, "publish_to_listener")?;
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
    /// [`PeerError::NotAllowed`] for a peer not on the [allowlist](super::AgentConfig::allowed_peers).
    /// [`ConfigError::Agent`] for an agent without a listener; [`Error::Timeout`] when no metadata
    /// of an agent named `peer` arrived within `timeout`.
    pub fn accept_pushed_peer(&self, peer: &str, timeout: Duration) -> Result<Peer> {
        self.require_comm_thread("accept_pushed_peer")?;
        // NIXL's listener loads what any agent pushes on its own, and nixl-sys cannot drop
        // metadata it did not load itself: a refused peer stays unknown to kvmem (no `Peer`,
        // so no notification or transfer to it), though NIXL holds its metadata.
        self.check_allowed(peer)?;
        self.fetch_until_loaded(peer, "", timeout, timeout, || Ok(()))?;
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
    /// [`PeerError::NotAllowed`] for a peer not on the [allowlist](super::AgentConfig::allowed_peers).
    /// [`PeerError::EtcdNotConfigured`]; [`Error::Timeout`] when it did not arrive within `timeout`;
    /// [`NixlError::Call`](crate::error::NixlError::Call).
    pub fn connect_etcd(&self, peer: &str, timeout: Duration) -> Result<Peer> {
        self.require_etcd()?;
        self.check_allowed(peer)?;
        self.forget_if_known(peer)?;
        // NIXL watches for a missing key only for a few seconds; ask again until the deadline.
        self.fetch_until_loaded(peer, " from etcd", timeout, Duration::from_secs(4), || {
            self.nixl()
                .fetch_remote_md(peer, None)
                .map_err(|e| Error::nixl("request metadata from etcd", e))
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

    /// Attaches `manifest` to the live peer it names, whose metadata came without one
    /// (listener, etcd, a plain NIXL blob) and whose manifest arrived over another channel
    /// (the two-node block list, an application's own control plane). The connection stays the
    /// same (lists built for it remain valid); from then on remote blocks are checked against
    /// the manifest, and a block inside it that NIXL no longer knows is reported as the peer
    /// being unavailable (it disconnected) rather than as out of bounds.
    ///
    /// # Errors
    /// [`PeerError::Unknown`] / [`PeerError::Invalidated`] when the peer is not live;
    /// [`PeerError::MalformedMetadata`] for a manifest of another format.
    pub fn attach_manifest(&self, manifest: PeerManifest) -> Result<Peer> {
        if manifest.format != super::metadata::MANIFEST_FORMAT {
            return Err(Error::Peer(PeerError::MalformedMetadata {
                reason: format!(
                    "manifest format {} is not supported (this kvmem reads format {})",
                    manifest.format,
                    super::metadata::MANIFEST_FORMAT
                ),
                source: None,
            }));
        }
        let name = manifest.agent.clone();
        let mut peers = lock(&self.shared.peers);
        let Some(entry) = peers.live.get_mut(&name) else {
            return Err(self.missing_peer(&peers, &name));
        };
        entry.manifest = Some(Arc::new(manifest));
        Ok(Peer {
            name: name.as_str().into(),
            generation: entry.generation,
            manifest: entry.manifest.clone(),
            source: entry.source.clone(),
        })
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

    /// [`PeerError::NotAllowed`] unless the configuration allows `peer`.
    pub(crate) fn check_allowed(&self, peer: &str) -> Result<()> {
        let config = self.config();
        if config.allows_peer(peer) {
            return Ok(());
        }
        Err(Error::Peer(PeerError::NotAllowed {
            agent: self.name().to_owned(),
            peer: peer.to_owned(),
            allowed: config.allowed_peers.join(", "),
        }))
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

    /// Issues `fetch` (again every `retry`) until NIXL holds `peer`'s metadata or `timeout`;
    /// `from` ends the timeout's message (" from etcd", or empty).
    fn fetch_until_loaded(
        &self,
        peer: &str,
        from: &str,
        timeout: Duration,
        retry: Duration,
        fetch: impl Fn() -> Result<()>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut asked = None::<Instant>;
        let mut backoff = crate::backoff::Backoff::patient();
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
                    what: format!("metadata of '{peer}'{from}"),
                    waited,
                });
            }
            backoff.snooze();
        }
    }
}

/// `addr` as the IPv4 address NIXL's listener protocol takes; `origin` names the caller.
fn ipv4(addr: SocketAddr, origin: &str) -> Result<std::net::SocketAddrV4> {
    match addr {
        SocketAddr::V4(v4) => Ok(v4),
        SocketAddr::V6(_) => Err(Error::Config(ConfigError::Agent {
            origin: origin.into(),
            message: format!("{addr}: NIXL's listener protocol takes IPv4 addresses only"),
        })),
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
