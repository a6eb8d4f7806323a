//! The HTTP surface of its own: health, readiness and metrics for operators,
//! and the REST message routes for backends. Each submodule exports a
//! `router()`; they are merged here, once.

mod health;
mod messages;

use std::sync::Arc;

use axum::{Router, extract::FromRequestParts, http::request::Parts};

use crate::{chat::Chat, domain::Identity, error::ChatError};

pub fn router(chat: Arc<Chat>, max_body: usize) -> Router {
    Router::new()
        .merge(health::router())
        .merge(messages::router(max_body))
        .with_state(chat)
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The request's user, from its bearer token.
pub struct User(pub Identity);

impl FromRequestParts<Arc<Chat>> for User {
    type Rejection = ChatError;

    async fn from_request_parts(parts: &mut Parts, chat: &Arc<Chat>) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(bearer);
        let identity = match token {
            Some(t) => chat.verifier.verify(t),
            None => Err(crate::auth::AuthError::Missing),
        }
        .map_err(|e| {
            chat.metrics.error("unauthorized");
            ChatError::Unauthorized(e.to_string())
        })?;
        Ok(User(identity))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_header() {
        assert_eq!(super::bearer("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer("bearer  abc "), Some("abc"));
        assert_eq!(super::bearer("Basic abc"), None);
        assert_eq!(super::bearer("Bearer "), None);
    }
}
