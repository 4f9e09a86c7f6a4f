//! `--metrics-addr`: the library's `metrics` facade counters served in Prometheus text format.
//!
//! The exporter crate installs itself as the process's recorder and answers HTTP on the given
//! address from a thread of its own, for as long as the process runs.

use crate::error::{CliError, Result};
use std::net::SocketAddr;

/// Installs the Prometheus recorder and starts serving it on `addr` (any path answers).
///
/// # Errors
/// [`CliError::Metrics`] when the address cannot be bound or a recorder is installed already.
pub fn serve(addr: SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| CliError::Metrics(format!("cannot serve metrics on {addr}: {e}")))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}
