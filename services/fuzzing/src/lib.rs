//! Fuzz harnesses: one function per parser that untrusted input reaches.
//! Each takes arbitrary bytes, must never panic, and checks properties of
//! what the parser accepts (not just that it returns). `fuzz/` wraps them as
//! cargo-fuzz targets for long coverage-guided runs; `tests/smoke.rs` runs
//! them over the checked-in corpus plus seconds of deterministic mutations
//! in the normal test suite.

use std::sync::OnceLock;

use roomcast_core::history::Since;
use roomcast_edge::auth::Authenticator;
use roomcast_edge::config::Settings;
use roomcast_protocol::{ClientFrame, ErrorCode, RoomId, ServerFrame, Timestamp, UserId};

/// A harness: arbitrary bytes in, a panic on a broken property.
pub type Harness = fn(&[u8]);

/// Every harness, by name (the corpus folder and the cargo-fuzz target).
pub const TARGETS: &[(&str, Harness)] = &[
    ("client_frame", client_frame),
    ("ids", ids),
    ("since", since),
    ("ws_query", ws_query),
    ("jwt", jwt),
    ("config", config),
    ("envelope", envelope),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A text frame from a client.
pub fn client_frame(data: &[u8]) {
    let t = text(data);
    match ClientFrame::parse(&t, 64) {
        Ok(ClientFrame::Message {
            content, client_id, ..
        }) => {
            assert!(
                !content.trim().is_empty() && content.len() <= 64,
                "accepted bad content"
            );
            assert!(client_id.is_none_or(|c| c.len() <= 128));
        }
        Ok(_) => {}
        Err(e) => {
            // Every refusal becomes a well-formed error frame.
            let f = ServerFrame::error_for(e.code, e.message, e.client_id);
            let v: serde_json::Value =
                serde_json::from_str(&f.to_json()).expect("error frames are JSON");
            assert_eq!(v["type"], "error");
            assert!(matches!(
                e.code,
                ErrorCode::InvalidJson
                    | ErrorCode::UnknownType
                    | ErrorCode::EmptyContent
                    | ErrorCode::TooLarge
            ));
        }
    }
}

/// Room and user ids (URL path segments, JWT claims, JSON bodies): what is
/// accepted is in the safe charset, and as part of a Redis key it cannot
/// add a key separator or a hash tag.
pub fn ids(data: &[u8]) {
    let t = text(data);
    if let Ok(id) = RoomId::parse(&t) {
        assert!(!id.as_str().is_empty() && id.as_str().len() <= 64);
        assert!(
            id.as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        );
        let keys = roomcast_redis::keys::Keys::new("rc");
        let key = keys.seq(&id);
        assert_eq!(key.split(':').count(), 3, "{key}");
        assert!(!key.contains(['{', '}', '*', '?', '[', ' ', '\n']));
    }
    let user_ok = UserId::parse(&t).is_ok();
    assert_eq!(user_ok, RoomId::parse(&t).is_ok(), "one charset for both");
}

/// `since` (an offset or a timestamp) and timestamps: accepted timestamps
/// survive a round trip through the wire format.
pub fn since(data: &[u8]) {
    let t = text(data);
    let _ = Since::parse(&t);
    if let Ok(ts) = Timestamp::parse(&t) {
        let again = Timestamp::parse(&ts.to_string()).expect("our own format parses");
        assert_eq!(again, ts);
    }
}

/// The WebSocket query string (`token`, `username`, `since`, `user_id`).
pub fn ws_query(data: &[u8]) {
    let t = text(data);
    if let Ok(q) = serde_urlencoded::from_str::<roomcast_edge::ws::handshake::WsQuery>(&t)
        && let Some(s) = q.since()
    {
        let _ = Since::parse(s);
    }
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let env = vec![(
            "JWT_SECRET".to_owned(),
            "fuzz-secret-fuzz-secret-fuzz-secret!".to_owned(),
        )];
        let settings = Settings::load(None, &env).expect("settings");
        Authenticator::from_settings(&settings).expect("authenticator")
    })
}

/// Tokens: nothing but a token signed with the secret verifies.
pub fn jwt(data: &[u8]) {
    let t = text(data);
    if let Ok(id) = authenticator().verify(Some(&t)) {
        // Random bytes cannot carry a valid HMAC; only the seeds signed
        // with the secret (in the corpus) can get here.
        assert!(!id.user_id.as_str().is_empty());
    }
}

/// Configuration values from the environment: any value either loads or
/// is refused with a message naming a setting; never a panic.
pub fn config(data: &[u8]) {
    let t = text(data);
    let mut parts = t.splitn(2, '=');
    let key = parts.next().unwrap_or_default().to_owned();
    let value = parts.next().unwrap_or_default().to_owned();
    let env = vec![(key, value)];
    if let Err(e) = Settings::load(None, &env) {
        assert!(!e.name.is_empty() && !e.problem.is_empty());
    }
}

/// What a node reads off a room channel (written by other nodes, but Redis
/// is shared infrastructure): decoded frames are always valid UTF-8.
pub fn envelope(data: &[u8]) {
    let room = RoomId::parse("r").expect("valid");
    if let Ok(got) = roomcast_redis::envelope::decode(room, bytes::Bytes::copy_from_slice(data)) {
        assert!(std::str::from_utf8(&got.envelope.frame).is_ok());
    }
}
