//! The operations port: `/metrics` (Prometheus text), `/healthz` (the process answers),
//! `/readyz` (source connected, every partition applying, not halted or stalled) and
//! `/status` (JSON: offsets and lag per partition, source position and checkpoint, the
//! pipeline's lease, the last error and where it happened). It answers from the moment
//! the daemon waits for the lease, so a daemon kept waiting is alive and says why it is
//! not ready.
//!
//! Handlers only read shared state; none of them touches the databases or the log's
//! data, so a scrape can never slow the pipeline down or block on it. The server stops
//! when shutdown is triggered.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::status::{ErrorReport, SourceStatus};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on http.listen = {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    name: String,
}

/// A bound, not yet serving, operations port: binding happens at start-up so that a
/// port in use fails `rowlog run` at once instead of after the pipeline started.
pub struct OpsServer {
    listener: TcpListener,
    ops: Ops,
}

impl OpsServer {
    pub async fn bind(addr: &str, metrics: Arc<Metrics>, name: String) -> Result<Self, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(Self {
            listener,
            ops: Ops { metrics, name },
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` fires.
    pub async fn serve(self, mut shutdown: Shutdown) -> Result<(), HttpError> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .with_state(self.ops);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
            .map_err(HttpError::Serve)
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    ops.metrics.refresh();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn readyz(State(ops): State<Ops>) -> Response {
    match ops.metrics.readiness() {
        Ok(()) => (
            StatusCode::OK,
            Json(Readiness {
                ready: true,
                reason: None,
            }),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct PartitionStatus {
    partition: u32,
    end_offset: i64,
    committed_offset: i64,
    lag_records: i64,
}

#[derive(Serialize)]
struct SourceReport {
    #[serde(flatten)]
    status: SourceStatus,
    lag_seconds: Option<f64>,
}

#[derive(Serialize)]
struct StatusReport {
    name: String,
    version: &'static str,
    ready: bool,
    not_ready_reason: Option<String>,
    halted: bool,
    stalled: bool,
    source: SourceReport,
    partitions: Vec<PartitionStatus>,
    /// Snapshot progress (tables done / total, rows copied), once one ran.
    snapshot: Option<crate::status::SnapshotStatus>,
    /// The pipeline's lease on the destination: not taken yet, waited for (who holds
    /// it), or held.
    lease: crate::status::LeaseStatus,
    last_error: Option<ErrorReport>,
}

async fn status(State(ops): State<Ops>) -> Json<StatusReport> {
    let m = &ops.metrics;
    m.refresh();
    let readiness = m.readiness();
    Json(StatusReport {
        name: ops.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        ready: readiness.is_ok(),
        not_ready_reason: readiness.err(),
        halted: m.is_halted(),
        stalled: m.pipeline_stalled.get() != 0,
        source: SourceReport {
            status: m.state.source(),
            lag_seconds: m.source_lag(),
        },
        partitions: m
            .partition_offsets()
            .into_iter()
            .map(
                |(partition, end_offset, committed_offset, lag_records)| PartitionStatus {
                    partition,
                    end_offset,
                    committed_offset,
                    lag_records,
                },
            )
            .collect(),
        snapshot: m.state.snapshot(),
        lease: m.state.lease(),
        last_error: m.state.last_error(),
    })
}
