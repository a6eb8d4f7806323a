//! The one error type of the chat boundary and its single mapping to the
//! contract's codes: an ack `{ ok: false, error: { code, message } }` over
//! Socket.IO, the same body with a status over HTTP. Internal detail is logged
//! where it happens and never sent.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::domain::{RoomError, RoomId, ValidationError};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    InvalidPayload(String),
    #[error("{0}")]
    InvalidRoom(#[from] RoomError),
    #[error("join {0} first")]
    NotJoined(RoomId),
    #[error("too many events: slow down")]
    RateLimited,
    #[error("{0}")]
    TooLarge(String),
    /// The message is what the client sees; the cause was already logged.
    #[error("{0}")]
    Internal(String),
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::InvalidRoom(_) => "invalid_room",
            Self::NotJoined(_) => "not_joined",
            Self::RateLimited => "rate_limited",
            Self::TooLarge(_) => "too_large",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::InvalidPayload(_) | Self::InvalidRoom(_) | Self::NotJoined(_) => StatusCode::BAD_REQUEST,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's error body, for acks and HTTP alike.
    pub fn body(&self) -> Value {
        json!({ "ok": false, "error": { "code": self.code(), "message": self.to_string() } })
    }

    pub fn internal(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{what}");
        Self::Internal(format!("{what}; try again"))
    }
}

impl From<ValidationError> for ChatError {
    fn from(e: ValidationError) -> Self {
        match e {
            ValidationError::Invalid(m) => Self::InvalidPayload(m),
            ValidationError::TooLarge(m) => Self::TooLarge(m),
        }
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_contract_shape() {
        let e = ChatError::from(RoomError::NotCanonical {
            canonical: "chat-5-12".into(),
        });
        let body = e.body();
        assert_eq!(body["ok"], json!(false));
        assert_eq!(body["error"]["code"], json!("invalid_room"));
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("chat-5-12"))
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
