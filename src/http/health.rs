//! `/healthz` (the process serves), `/readyz` (its dependencies answer) and
//! `/metrics` (Prometheus text).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::chat::Chat;

pub fn router() -> Router<Arc<Chat>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

async fn ready(State(chat): State<Arc<Chat>>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), chat.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready".to_owned()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable".to_owned())
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database timed out".to_owned()),
    }
}

async fn metrics(State(chat): State<Arc<Chat>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        chat.metrics.render(),
    )
}
