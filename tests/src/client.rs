//! A WebSocket client for the tests: connect (with headers), send JSON,
//! read the next frame or the next of a type, expect silence, see how the
//! socket closed.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client.
#[derive(Debug)]
pub struct Client {
    pub ws: Stream,
}

/// How a socket ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code and reason.
    Code(u16, String),
    /// The connection ended without a close frame.
    Abrupt(String),
}

impl Closed {
    pub fn code(&self) -> Option<u16> {
        match self {
            Closed::Code(c, _) => Some(*c),
            Closed::Abrupt(_) => None,
        }
    }
}

impl Client {
    /// Sends messages `ids` (content `msg {i}`, `client_id` `m-{i}`) and retries each, with the same
    /// `client_id`, until it is acknowledged: after an `error` frame for it, or
    /// after `patience` without an answer. Returns the ack of each and the
    /// error codes it saw.
    pub async fn send_until_acked(
        c: &mut Client,
        ids: std::ops::Range<usize>,
        gap: Duration,
        patience: Duration,
    ) -> (Vec<Value>, Vec<Value>) {
        let mut acks = Vec::new();
        let mut errors = Vec::new();
        for i in ids {
            let id = format!("m-{i}");
            let frame = json!({"type": "message", "content": format!("msg {i}"), "client_id": id});
            let started = Instant::now();
            'retry: loop {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{id} never acknowledged"
                );
                c.send_json(&frame).await;
                let deadline = Instant::now() + patience;
                while let Some(f) = c
                    .next_json_within(deadline.saturating_duration_since(Instant::now()))
                    .await
                {
                    match f["type"].as_str() {
                        Some("ack") if f["client_id"] == id.as_str() => {
                            acks.push(f);
                            break 'retry;
                        }
                        Some("error") => {
                            assert_eq!(
                                f["client_id"],
                                id.as_str(),
                                "errors name the refused frame: {f}"
                            );
                            errors.push(f);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue 'retry;
                        }
                        // Acks of earlier attempts, messages, presence.
                        _ => {}
                    }
                }
            }
            tokio::time::sleep(gap).await;
        }
        (acks, errors)
    }

    /// Connects with extra request headers.
    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(req, Some(config), false).await?;
        Ok(Client { ws })
    }

    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, &[])
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// Connects and reads `connected` and `presence`; returns both.
    pub async fn join(url: &str) -> (Client, Value, Value) {
        let mut c = Self::connect(url).await;
        let connected = c.next_json().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        let presence = c.next_json().await;
        assert_eq!(presence["type"], "presence", "{presence}");
        (c, connected, presence)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// The next text frame as JSON within 5 s; panics on anything else.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(Duration::from_secs(5))
            .await
            .expect("a frame within the deadline")
    }

    /// The next text frame as JSON, or `None` if none came in time.
    pub async fn next_json_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("server frames are JSON"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame of this type, skipping others (presence noise).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Asserts that no text frame arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(v) = self.next_json_within(within).await {
            panic!("expected no frame, got {v}");
        }
    }

    /// Reads until the socket closes (skipping data frames); how it closed.
    pub async fn closed(&mut self) -> Closed {
        self.closed_within(Duration::from_secs(15)).await
    }

    /// [`Client::closed`], waiting at most `within`.
    pub async fn closed_within(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("socket did not close"),
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return Closed::Code(f.code.into(), f.reason.to_string());
                }
                Ok(Some(Ok(Message::Close(None)))) => return Closed::Code(1005, String::new()),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Closed::Abrupt(e.to_string()),
                Ok(None) => return Closed::Abrupt("stream ended".into()),
            }
        }
    }
}
