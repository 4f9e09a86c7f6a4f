//! Notifications: short messages agents send each other, on their own
//! ([`Agent::notify`]) or delivered by NIXL once a transfer's data has landed (the `notification`
//! argument of a transfer).
//!
//! NIXL hands out every pending notification at once; kvmem sorts them into one queue per sending
//! peer, so that waiting for one peer's message never consumes another's. Messages are bytes and
//! arrive in the order each peer sent them.

use super::agent::{Agent, lock};
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A notification and the peer that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The sending agent's name.
    pub peer: String,
    /// The message.
    pub message: Vec<u8>,
}

impl Agent {
    /// Sends `message` to `peer` (without a transfer).
    ///
    /// # Errors
    /// [`PeerError::Unknown`](crate::error::PeerError::Unknown) / [`PeerError::Invalidated`](crate::error::PeerError::Invalidated) for a peer the agent cannot address;
    /// [`NixlError::Call`](crate::error::NixlError::Call) when NIXL cannot send it.
    pub fn notify(&self, peer: &str, message: &[u8]) -> Result<()> {
        self.peer(peer)?;
        self.nixl()
            .send_notification(peer, message, None)
            .map_err(|e| Error::nixl("send a notification", e))
    }

    /// Moves the notifications NIXL has received into the per-peer queues; returns how many
    /// arrived.
    ///
    /// # Errors
    /// [`NixlError::Call`](crate::error::NixlError::Call) when NIXL cannot deliver them (for example when no running backend
    /// supports notifications).
    pub fn poll_notifications(&self) -> Result<usize> {
        let mut map = nixl_sys::NotificationMap::new()
            .map_err(|e| Error::nixl("create a notification map", e))?;
        self.nixl()
            .get_notifications(&mut map, None)
            .map_err(|e| Error::nixl("receive notifications", e))?;
        let mut received: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for peer in map.agents() {
            let peer = peer.map_err(|e| Error::nixl("read a notification's sender", e))?;
            let messages = map
                .get_notifications(peer)
                .map_err(|e| Error::nixl("read notifications", e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::nixl("read a notification", e))?;
            received.push((peer.to_owned(), messages));
        }
        let mut count = 0;
        let mut queues = lock(&self.shared.inbox.queues);
        for (peer, messages) in received {
            if !self.config().allows_peer(&peer) {
                let n = messages.len() as u64;
                let total = self.shared.inbox.refused.fetch_add(n, Ordering::Relaxed) + n;
                tracing::warn!(agent = %self.name(), %peer, dropped = n, total, "dropped notifications from a peer not on the allowlist");
                continue;
            }
            count += messages.len();
            queues.entry(peer).or_default().extend(messages);
        }
        Ok(count)
    }

    /// How many notifications this agent dropped because their sender is not on its allowlist
    /// ([`AgentConfig::allowed_peers`](super::AgentConfig::allowed_peers)).
    pub fn refused_notifications(&self) -> u64 {
        self.shared.inbox.refused.load(Ordering::Relaxed)
    }

    /// Every queued notification from `peer` (after polling NIXL), oldest first.
    ///
    /// # Errors
    /// As for [`poll_notifications`](Self::poll_notifications).
    pub fn take_notifications(&self, peer: &str) -> Result<Vec<Vec<u8>>> {
        self.poll_notifications()?;
        Ok(lock(&self.shared.inbox.queues)
            .get_mut(peer)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default())
    }

    /// Every queued notification from every peer (after polling NIXL).
    ///
    /// # Errors
    /// As for [`poll_notifications`](Self::poll_notifications).
    pub fn take_all_notifications(&self) -> Result<Vec<Notification>> {
        self.poll_notifications()?;
        let mut queues = lock(&self.shared.inbox.queues);
        let mut out = Vec::new();
        for (peer, q) in queues.iter_mut() {
            out.extend(q.drain(..).map(|message| Notification {
                peer: peer.clone(),
                message,
            }));
        }
        Ok(out)
    }

    /// Waits for the next notification from `peer` and returns it.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none arrived within `timeout`; as for
    /// [`poll_notifications`](Self::poll_notifications).
    pub fn wait_notification(&self, peer: &str, timeout: Duration) -> Result<Vec<u8>> {
        self.wait_queued(peer, timeout, |_| true)
    }

    /// Waits until `peer` sends exactly `message`, and takes it from the queue; other messages
    /// from the peer stay queued in order.
    ///
    /// # Errors
    /// As for [`wait_notification`](Self::wait_notification).
    pub fn wait_for_message(&self, peer: &str, message: &[u8], timeout: Duration) -> Result<()> {
        self.wait_queued(peer, timeout, |m| m == message).map(drop)
    }

    fn wait_queued(
        &self,
        peer: &str,
        timeout: Duration,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        let start = Instant::now();
        let mut backoff = crate::backoff::Backoff::patient();
        loop {
            {
                let mut queues = lock(&self.shared.inbox.queues);
                if let Some(q) = queues.get_mut(peer)
                    && let Some(i) = q.iter().position(|m| wanted(m))
                    && let Some(m) = q.remove(i)
                {
                    return Ok(m);
                }
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Timeout {
                    what: format!("a notification from '{peer}' on agent '{}'", self.name()),
                    waited,
                });
            }
            if self.poll_notifications()? == 0 {
                backoff.snooze();
            }
        }
    }
}
