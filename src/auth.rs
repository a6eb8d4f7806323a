//! JWT verification, shared by the Socket.IO handshake and the REST routes.
//! A token is turned into an [`Identity`] here and nowhere else.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde_json::{Map, Value, json};

use crate::domain::{Identity, Profile, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unauthorized: missing token")]
    Missing,
    #[error("unauthorized: token must be a string")]
    NotAString,
    #[error("unauthorized: token expired")]
    Expired,
    #[error("unauthorized: token not valid yet")]
    NotYetValid,
    #[error("unauthorized: invalid token signature")]
    BadSignature,
    #[error("unauthorized: malformed token")]
    Malformed,
    #[error("unauthorized: token has no usable user id (sub, userId or user_id)")]
    NoUserId,
    /// No token, and the app's auth endpoint did not vouch for the session
    /// (its reason; `auth endpoint failed: …` when it could not answer).
    #[error("unauthorized: {0}")]
    Session(String),
}

/// Checks tokens against the configured key: HS256 with a shared secret, or
/// RS256 with a PEM public key.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    pub fn rs256(pem: &[u8]) -> anyhow::Result<Self> {
        Ok(Self::new(DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256))
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        // `exp` is enforced when present, not required; audiences are the app's business.
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 5;
        Self { key, validation }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
                    _ => AuthError::Malformed,
                }
            })?;
        identity_from_claims(&data.claims, token)
    }
}

fn identity_from_claims(claims: &Map<String, Value>, token: &str) -> Result<Identity, AuthError> {
    let id = ["sub", "userId", "user_id"]
        .iter()
        .find_map(|k| claims.get(*k).filter(|v| !v.is_null()))
        .ok_or(AuthError::NoUserId)?;
    let user = UserId::from_json(id).ok_or(AuthError::NoUserId)?;
    let text = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| claims.get(*k).and_then(Value::as_str))
            // Stored beside every message; Postgres text cannot hold NUL.
            .map(|s| s.replace('\0', ""))
    };
    Ok(Identity {
        user,
        profile: Profile {
            username: text(&["username", "preferred_username"]),
            full_name: text(&["fullName", "name"]),
            avatar: text(&["avatar", "picture"]),
        },
        token: token.into(),
    })
}

/// Signs an HS256 token: dev mode prints one so a newcomer can connect at once.
pub fn sign_hs256(secret: &[u8], claims: &Value) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )?)
}

/// The dev token: user 1, valid for 30 days.
pub fn dev_token(secret: &[u8]) -> anyhow::Result<String> {
    let exp = jsonwebtoken::get_current_timestamp() + 30 * 24 * 3600;
    sign_hs256(
        secret,
        &json!({ "sub": 1, "username": "dev", "fullName": "Dev User", "exp": exp }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn token(claims: Value) -> String {
        sign_hs256(SECRET, &claims).expect("signs")
    }

    #[test]
    fn accepts_and_reads_claims() {
        let v = TokenVerifier::hs256(SECRET);
        let id = v
            .verify(&token(
                json!({"sub": 5, "preferred_username": "alice", "name": "Alice", "picture": "https://a/p.png"}),
            ))
            .expect("valid");
        assert_eq!(id.user.json(), &json!(5));
        assert_eq!(id.profile.username.as_deref(), Some("alice"));
        assert_eq!(id.profile.full_name.as_deref(), Some("Alice"));
        assert_eq!(id.profile.avatar.as_deref(), Some("https://a/p.png"));
    }

    #[test]
    fn nul_is_dropped_from_profile_claims() {
        let v = TokenVerifier::hs256(SECRET);
        let id = v
            .verify(&token(json!({"sub": 5, "username": "al\u{0}ice", "name": "\u{0}"})))
            .expect("valid");
        assert_eq!(id.profile.username.as_deref(), Some("alice"));
        assert_eq!(id.profile.full_name.as_deref(), Some(""));
    }

    #[test]
    fn id_claim_precedence() {
        let v = TokenVerifier::hs256(SECRET);
        let id = v.verify(&token(json!({"userId": "u1", "user_id": 3}))).expect("valid");
        assert_eq!(id.user.json(), &json!("u1"));
        let id = v.verify(&token(json!({"user_id": 3}))).expect("valid");
        assert_eq!(id.user.json(), &json!(3));
    }

    #[test]
    fn refusals() {
        let v = TokenVerifier::hs256(SECRET);
        let past = jsonwebtoken::get_current_timestamp() - 3600;
        let future = jsonwebtoken::get_current_timestamp() + 3600;
        let other = sign_hs256(b"other", &json!({"sub": 1})).expect("signs");
        let cases = [
            ("".to_owned(), AuthError::Missing),
            ("not-a-jwt".to_owned(), AuthError::Malformed),
            (other, AuthError::BadSignature),
            (token(json!({"sub": 1, "exp": past})), AuthError::Expired),
            (token(json!({"sub": 1, "nbf": future})), AuthError::NotYetValid),
            (token(json!({"name": "x"})), AuthError::NoUserId),
            (token(json!({"sub": ""})), AuthError::NoUserId),
            (token(json!({"sub": 1.5})), AuthError::NoUserId),
            (token(json!({"sub": "a\u{0}"})), AuthError::NoUserId),
        ];
        for (t, want) in cases {
            assert_eq!(v.verify(&t).err(), Some(want.clone()), "{want}");
            assert!(want.to_string().starts_with("unauthorized"));
        }
    }
}
