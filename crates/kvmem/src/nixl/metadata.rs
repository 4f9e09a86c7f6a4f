//! What kvmem ships to peers and keeps about them: the metadata envelope, the [`PeerManifest`]
//! of registered regions, and [`Peer`], a peer this agent has metadata for.
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
//!
//! Each region is a [`NixlDescriptor`] in memory; on the wire its length is the field `len`
//! (what readers of format 1 expect), not the descriptor's `size`.

use crate::error::{BoundsError, Error, PeerError, Result};
use crate::region::NixlDescriptor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The magic bytes that open a kvmem metadata envelope.
pub const ENVELOPE_MAGIC: &[u8; 8] = b"KVMEMMD1";

/// The manifest format this version writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// The most regions a peer's manifest may list: a longer list is refused while it is read,
/// before more is allocated for it.
pub const MAX_MANIFEST_REGIONS: usize = 1 << 16;

/// What a peer registered, shipped next to its NIXL metadata. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerManifest {
    /// Format version, [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The agent's name.
    pub agent: String,
    /// The registered regions (`len`, not `size`, on the wire).
    #[serde(with = "wire_regions")]
    pub regions: Vec<NixlDescriptor>,
}

impl PeerManifest {
    /// True when one of the regions holds all of `block`.
    pub fn contains(&self, block: &NixlDescriptor) -> bool {
        self.regions.iter().any(|r| r.contains(block))
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

/// How a peer's metadata was obtained, and so how [`Agent::reconnect`](super::Agent::reconnect) gets it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSource {
    /// A blob given to [`Agent::load_peer`](super::Agent::load_peer).
    Blob,
    /// Fetched from the peer's listener socket.
    Listener(SocketAddr),
    /// Fetched from etcd.
    Etcd,
    /// Pushed to this agent's listener by the peer ([`Agent::publish_to_listener`](super::Agent::publish_to_listener) there) and
    /// taken up with [`Agent::accept_pushed_peer`](super::Agent::accept_pushed_peer).
    Pushed,
}

/// A peer this agent has metadata for: a name, the connection it belongs to, and its manifest.
///
/// A snapshot: after [`Agent::invalidate_peer`](super::Agent::invalidate_peer) or [`Agent::reconnect`](super::Agent::reconnect), lists built from an
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
    pub fn regions(&self) -> &[NixlDescriptor] {
        self.manifest.as_deref().map_or(&[], |m| &m.regions)
    }

    /// How the metadata was obtained.
    pub fn source(&self) -> &PeerSource {
        &self.source
    }
}

pub(crate) struct PeerEntry {
    pub(crate) generation: u64,
    pub(crate) manifest: Option<Arc<PeerManifest>>,
    pub(crate) source: PeerSource,
}

/// The peers an agent knows, and those it invalidated (with how to reach them again).
#[derive(Default)]
pub(crate) struct PeerTable {
    pub(crate) live: HashMap<String, PeerEntry>,
    pub(crate) invalidated: HashMap<String, PeerSource>,
    next_generation: u64,
}

impl PeerTable {
    pub(crate) fn insert(
        &mut self,
        name: &str,
        manifest: Option<PeerManifest>,
        source: PeerSource,
    ) -> Peer {
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

    pub(crate) fn known(&self) -> String {
        let mut names: Vec<&str> = self.live.keys().map(String::as_str).collect();
        names.sort_unstable();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

/// The regions of a manifest as format 1 writes them: `{addr, len, mem_type, device_id}`.
mod wire_regions {
    use crate::region::{MemType, NixlDescriptor};
    use serde::de::{Error as _, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Region {
        addr: u64,
        len: u64,
        mem_type: MemType,
        device_id: u64,
    }

    pub(super) fn serialize<S: Serializer>(
        regions: &[NixlDescriptor],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(regions.iter().map(|r| Region {
            addr: r.addr,
            len: r.size as u64,
            mem_type: r.mem_type,
            device_id: r.device_id,
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<NixlDescriptor>, D::Error> {
        d.deserialize_seq(Regions)
    }

    /// Reads the regions one by one, refusing the one past [`super::MAX_MANIFEST_REGIONS`]
    /// before reading it: a peer's list never grows the vector beyond that bound.
    struct Regions;

    impl<'de> Visitor<'de> for Regions {
        type Value = Vec<NixlDescriptor>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "a list of at most {} regions",
                super::MAX_MANIFEST_REGIONS
            )
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > super::MAX_MANIFEST_REGIONS {
                return Err(A::Error::custom(too_many()));
            }
            let mut out = Vec::with_capacity(hint.min(64));
            while let Some(r) = seq.next_element::<Region>()? {
                if out.len() == super::MAX_MANIFEST_REGIONS {
                    return Err(A::Error::custom(too_many()));
                }
                let size = usize::try_from(r.len).map_err(|_| {
                    A::Error::custom(format!(
                        "a region of {} bytes does not fit this machine's address space",
                        r.len
                    ))
                })?;
                out.push(NixlDescriptor {
                    addr: r.addr,
                    size,
                    mem_type: r.mem_type,
                    device_id: r.device_id,
                });
            }
            Ok(out)
        }
    }

    fn too_many() -> String {
        format!(
            "the manifest lists more than {} regions",
            super::MAX_MANIFEST_REGIONS
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::MemType;

    fn manifest() -> PeerManifest {
        PeerManifest {
            format: 1,
            agent: "b".into(),
            regions: vec![NixlDescriptor::dram(0x1000, 0x1000)],
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
        let block = |mem_type, device_id, addr, size| NixlDescriptor {
            addr,
            size,
            mem_type,
            device_id,
        };
        assert!(m.contains(&block(MemType::Dram, 0, 0x1000, 0x1000)));
        assert!(m.contains(&block(MemType::Dram, 0, 0x1800, 0x800)));
        assert!(!m.contains(&block(MemType::Dram, 0, 0x1800, 0x801)));
        assert!(!m.contains(&block(MemType::Vram, 0, 0x1000, 1)));
        assert!(!m.contains(&block(MemType::Dram, 1, 0x1000, 1)));
        assert!(!m.contains(&block(MemType::Dram, 0, u64::MAX, 2)));
    }

    /// A manifest as kvmem 4ac4a08 wrote it (an agent with a host region and a GPU region),
    /// and the two-node block list of that version: both still parse, and write back the same.
    #[test]
    fn manifests_written_by_the_previous_version_still_parse() {
        let old = r#"{"format":1,"agent":"decode-3","regions":[{"addr":139872004849664,"len":67108864,"mem_type":"Dram","device_id":0},{"addr":140041818095616,"len":1048576,"mem_type":"Vram","device_id":1}]}"#;
        let m: PeerManifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.agent, "decode-3");
        assert_eq!(
            m.regions,
            [
                NixlDescriptor::dram(139872004849664, 67108864),
                NixlDescriptor {
                    addr: 140041818095616,
                    size: 1048576,
                    mem_type: MemType::Vram,
                    device_id: 1,
                },
            ]
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), old);
        // Unknown fields (the two-node block list adds two) are ignored.
        let blocks = r#"{"format":1,"agent":"kvmem-bench-target","regions":[{"addr":140012345344000,"len":67108864,"mem_type":"Dram","device_id":0}],"block_size":1048576,"blocks":64}"#;
        let m: PeerManifest = serde_json::from_str(blocks).unwrap();
        assert_eq!(m.regions, [NixlDescriptor::dram(140012345344000, 67108864)]);
    }
}
