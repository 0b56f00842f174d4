//! The WebSocket side: connecting, and reading server frames cheaply.
//!
//! The load generator must not become the bottleneck, so it does not parse
//! every frame as JSON: server frames start with `{"type":"<kind>"` and a
//! message's `offset` and `client_id` are found by scanning for their keys
//! after the content (keys with unescaped quotes cannot occur inside a JSON
//! string).

use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Microseconds since the Unix epoch (what publishers stamp in `client_id`).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Opens a socket to `base` (http://host:port) for `room`/`user`; the
/// socket and the time to the upgrade.
pub async fn connect(
    base: &str,
    room: &str,
    user: &str,
    since: Option<u64>,
) -> Result<(Ws, Duration), String> {
    let mut url = format!("{}/ws/{room}/{user}", base.replacen("http://", "ws://", 1));
    if let Some(since) = since {
        url.push_str(&format!("?since={since}"));
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(4 << 20));
    let started = Instant::now();
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((ws, started.elapsed()))
}

/// The parts of a server frame the load generator needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Connected {
        offset: u64,
    },
    Message {
        offset: u64,
        client_id: Option<&'a str>,
    },
    Ack {
        offset: u64,
    },
    Error {
        code: &'a str,
    },
    /// `presence_diff`, `user_joined` or `user_left`: news of a member.
    Presence,
    Other,
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.rfind(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.rfind(key)? + key.len();
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}

pub fn scan(text: &str) -> Frame<'_> {
    let Some(rest) = text.strip_prefix("{\"type\":\"") else {
        return Frame::Other;
    };
    let kind = &rest[..rest.find('"').unwrap_or(0)];
    match kind {
        "message" => match number_after(text, "\"offset\":") {
            Some(offset) => Frame::Message {
                offset,
                client_id: string_after(text, "\"client_id\":\""),
            },
            None => Frame::Other,
        },
        "ack" => {
            number_after(text, "\"offset\":").map_or(Frame::Other, |offset| Frame::Ack { offset })
        }
        "connected" => number_after(text, "\"offset\":")
            .map_or(Frame::Other, |offset| Frame::Connected { offset }),
        "error" => Frame::Error {
            code: string_after(text, "\"code\":\"").unwrap_or("?"),
        },
        "presence_diff" | "user_joined" | "user_left" => Frame::Presence,
        _ => Frame::Other,
    }
}

/// A message frame's room (`room_id` comes after the content, so the last
/// occurrence of the key is the field).
pub fn room_of(text: &str) -> Option<&str> {
    string_after(text, "\"room_id\":\"")
}

/// `p<publisher>-<seq>-<send micros>`: who sent it and when.
pub fn client_id(publisher: usize, seq: u64) -> String {
    format!("p{publisher}-{seq}-{}", now_micros())
}

/// The send time stamped in a `client_id`.
pub fn sent_micros(client_id: &str) -> Option<u64> {
    client_id.rsplit('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_server_frames() {
        let m = r#"{"type":"message","id":"x","user_id":"u","username":"u","content":"a \"offset\":9 \"client_id\":\"z\"","timestamp":"t","room_id":"r","offset":42,"client_id":"p1-7-123"}"#;
        assert_eq!(
            scan(m),
            Frame::Message {
                offset: 42,
                client_id: Some("p1-7-123")
            }
        );
        let plain = r#"{"type":"message","id":"x","content":"hi","room_id":"r","offset":3}"#;
        assert_eq!(
            scan(plain),
            Frame::Message {
                offset: 3,
                client_id: None
            }
        );
        assert_eq!(
            scan(r#"{"type":"ack","id":"i","offset":5,"client_id":"c"}"#),
            Frame::Ack { offset: 5 }
        );
        assert_eq!(
            scan(r#"{"type":"error","code":"rate_limited","message":"m"}"#),
            Frame::Error {
                code: "rate_limited"
            }
        );
        assert_eq!(scan(r#"{"type":"pong"}"#), Frame::Other);
        assert_eq!(sent_micros("p1-7-123"), Some(123));
    }
}
