//! Errors about remote peers, their metadata and blocks.

use super::NixlStatus;

use crate::region::MemType;

/// A peer is unknown or gone, or its metadata or blocks are wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// A peer name the agent has no metadata for.
    #[error(
        "agent '{agent}' knows no peer named '{peer}' (known: {known}); load its metadata first \
         (load_peer, connect_listener or connect_etcd)"
    )]
    Unknown {
        /// The local agent's name.
        agent: String,
        /// The unknown peer.
        peer: String,
        /// The peers the agent does know, comma-separated.
        known: String,
    },

    /// A peer was invalidated and has not been reconnected.
    #[error(
        "peer '{peer}' was invalidated on agent '{agent}'; reconnect to it (Agent::reconnect, or \
         load its metadata again) and prepare its lists again before transferring"
    )]
    Invalidated {
        /// The local agent's name.
        agent: String,
        /// The invalidated peer.
        peer: String,
    },

    /// NIXL dropped a peer's metadata on its own (the peer disconnected or withdrew it).
    #[error(
        "NIXL on agent '{agent}' no longer holds metadata for peer '{peer}' (it disconnected, \
         exited or withdrew its metadata); reconnect to it"
    )]
    Unavailable {
        /// The local agent's name.
        agent: String,
        /// The peer.
        peer: String,
    },

    /// A peer that is not on the agent's allowlist ([`AgentConfig::allowed_peers`](crate::nixl::AgentConfig::allowed_peers)).
    #[error(
        "agent '{agent}' does not take metadata from '{peer}': it is not on the allowlist \
         ({allowed}); add it to allowed_peers (KVMEM_NIXL_ALLOWED_PEERS) if it should be"
    )]
    NotAllowed {
        /// The local agent's name.
        agent: String,
        /// The refused peer.
        peer: String,
        /// The allowed peers, comma-separated.
        allowed: String,
    },

    /// A remote block does not lie inside memory the peer registered.
    #[error(
        "remote block {index} ({addr:#x}+{len}, {mem_type:?}, device {device_id}) is not inside \
         one region peer '{peer}' registered; use addresses inside the peer's registered regions"
    )]
    OutOfBounds {
        /// The peer.
        peer: String,
        /// Index of the block in its list.
        index: usize,
        /// Start of the block.
        addr: u64,
        /// Length of the block.
        len: usize,
        /// NIXL memory type of the block.
        mem_type: MemType,
        /// Device id of the block.
        device_id: u64,
    },

    /// Peer metadata could not be parsed or loaded.
    #[error("malformed NIXL peer metadata: {reason}; send the peer's current metadata again")]
    MalformedMetadata {
        /// What was wrong with it.
        reason: String,
        /// NIXL's status, when NIXL refused it.
        #[source]
        source: Option<NixlStatus>,
    },

    /// etcd metadata exchange without etcd configured.
    #[error(
        "agent '{agent}' cannot use etcd: NIXL_ETCD_ENDPOINTS was not set in the environment when \
         the agent was created; export it (e.g. http://127.0.0.1:2379) before starting the process"
    )]
    EtcdNotConfigured {
        /// The agent's name.
        agent: String,
    },
}
