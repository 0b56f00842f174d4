//! Tokens for the tests: HS256 with a given secret, RS256 with the test key.

use serde_json::Value;

use crate::fixture;

/// An HS256 token for `sub` with extra claims, expiring in an hour.
pub fn hs256(secret: &str, sub: &str, extra: Value) -> String {
    let mut claims = serde_json::json!({"sub": sub, "exp": now() + 3600});
    merge(&mut claims, extra);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// An RS256 token signed with the test private key.
pub fn rs256(sub: &str, extra: Value) -> String {
    let mut claims = serde_json::json!({"sub": sub, "exp": now() + 3600});
    merge(&mut claims, extra);
    let pem = std::fs::read(fixture("jwt-test-private.pem")).expect("test key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("pem"),
    )
    .expect("encode token")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}
