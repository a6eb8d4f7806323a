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

/// Ready while the database and (with many nodes) Redis answer within 2 s each,
/// so a load balancer stops sending clients to a node that lost either.
async fn ready(State(chat): State<Arc<Chat>>) -> impl IntoResponse {
    const LIMIT: Duration = Duration::from_secs(2);
    match tokio::time::timeout(LIMIT, chat.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unavailable");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
        }
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "database timed out"),
    }
    if let Some(redis) = &chat.redis {
        let answer = tokio::time::timeout(LIMIT, redis.ping()).await;
        chat.metrics.redis_up.set(i64::from(matches!(answer, Ok(Ok(())))));
        match answer {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: redis unavailable");
                return (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable");
            }
            Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "redis timed out"),
        }
    }
    (StatusCode::OK, "ready")
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
