//! The worker's HTTP probes: `/livez` (the process answers) and `/readyz` (models loaded and
//! warm, pulling jobs; false again while draining), for Kubernetes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::WorkerStats;

/// Serves the probes on `listener` until `shutdown` fires.
///
/// # Errors
/// If the listener fails.
pub async fn serve_health(
    listener: TcpListener,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(stats);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn ready(State(stats): State<Arc<WorkerStats>>) -> (StatusCode, String) {
    if stats.ready.load(Ordering::Relaxed) {
        (
            StatusCode::OK,
            format!(
                "ready: {} jobs in flight, {} done\n",
                stats.in_flight.load(Ordering::Relaxed),
                stats.jobs_done.load(Ordering::Relaxed)
            ),
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
    }
}
