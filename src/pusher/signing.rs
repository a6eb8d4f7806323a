//! Pusher's signatures, as pure functions: channel authorization
//! (`key:hex(HMAC-SHA256(secret, socket_id:channel[:channel_data]))`) and the
//! HTTP API's request signature. Tested against Pusher's published examples.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The app credentials the server answers to.
#[derive(Clone)]
pub struct Credentials {
    pub app_id: String,
    pub key: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("app_id", &self.app_id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn new(app_id: impl Into<String>, key: impl Into<String>, secret: impl AsRef<[u8]>) -> Self {
        Self {
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.as_ref().to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// Hex HMAC-SHA256 of `data` with the app secret.
    pub fn sign(&self, data: &str) -> String {
        let mut mac = self.mac();
        mac.update(data.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of a hex signature over `data`.
    pub fn verify(&self, data: &str, signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(data.as_bytes());
        mac.verify_slice(&signature).is_ok()
    }

    /// The `auth` a Pusher auth endpoint must return for this subscription.
    pub fn channel_auth(&self, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
        format!(
            "{}:{}",
            self.key,
            self.sign(&channel_string(socket_id, channel, channel_data))
        )
    }

    /// Checks an auth endpoint's `auth` value (`key:signature`) in constant time.
    pub fn verify_channel_auth(&self, auth: &str, socket_id: &str, channel: &str, channel_data: Option<&str>) -> bool {
        let Some((key, signature)) = auth.split_once(':') else {
            return false;
        };
        key == self.key && self.verify(&channel_string(socket_id, channel, channel_data), signature)
    }
}

impl Credentials {
    /// Checks a user authentication's `auth` (`key:signature` over
    /// `socket_id::user::user_data`, as the `pusher` SDK's `authenticateUser`
    /// signs it) in constant time.
    pub fn verify_user_auth(&self, auth: &str, socket_id: &str, user_data: &str) -> bool {
        let Some((key, signature)) = auth.split_once(':') else {
            return false;
        };
        key == self.key && self.verify(&format!("{socket_id}::user::{user_data}"), signature)
    }
}

fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// Hex MD5 of a request body (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// What the HTTP API signs: `METHOD\nPATH\nk=v&…` with every query parameter
/// but `auth_signature`, keys lowercased and sorted, values as sent (decoded).
pub fn string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}\n{path}\n{query}", method.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example credentials of Pusher's protocol documentation.
    fn creds() -> Credentials {
        Credentials::new("3", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    #[test]
    fn private_channel_auth_matches_pusher_docs() {
        let auth = creds().channel_auth("1234.1234", "private-foobar", None);
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(creds().verify_channel_auth(&auth, "1234.1234", "private-foobar", None));
        assert!(!creds().verify_channel_auth(&auth, "1234.1235", "private-foobar", None));
        assert!(!creds().verify_channel_auth(&auth.replace("278d", "999d"), "1234.1234", "private-foobar", None));
        assert!(!creds().verify_channel_auth("garbage", "1234.1234", "private-foobar", None));
    }

    #[test]
    fn presence_channel_auth_matches_pusher_docs() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            creds().channel_auth("1234.1234", "presence-foobar", Some(data)),
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn http_api_signature_matches_pusher_docs() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(body_md5(body.as_bytes()), "ec365a775a4cd0599faeb73354201b6f");
        let params: Vec<(String, String)> = [
            ("auth_version", "1.0"),
            ("auth_key", "278d425bdf160c739803"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_timestamp", "1353088179"),
            ("auth_signature", "ignored"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let to_sign = string_to_sign("post", "/apps/3/events", &params);
        assert_eq!(
            to_sign,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            creds().sign(&to_sign),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
