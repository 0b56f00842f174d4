//! The scenarios that drive a server: [`fanout`] (delivery correctness and
//! latency), [`idle`] (connection cost and connect rate), [`churn`]
//! (connects and disconnects while traffic flows), [`multiroom`] (many
//! rooms per multiplexed socket); and what they share:
//! REST setup and joining rooms.

mod connections;
mod fanout;
mod multiroom;

pub use connections::{churn, idle};
pub use fanout::fanout;
pub use multiroom::multiroom;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Opts;
use crate::client::{self, Frame, Ws};
use crate::rest;

fn nonce() -> String {
    format!("{:x}", client::now_micros())
}

/// Rooms and users: created over REST, or just named (`--auto`).
async fn setup(o: &Opts, rooms: usize, users: usize) -> Result<(Vec<String>, Vec<String>), String> {
    let n = nonce();
    if o.auto {
        return Ok((
            (0..rooms).map(|r| format!("lg-{n}-r{r}")).collect(),
            (0..users).map(|u| format!("lg-{n}-u{u}")).collect(),
        ));
    }
    let rooms = rest::create_all(
        &o.urls[0],
        "/rooms",
        (0..rooms)
            .map(|r| json!({"name": format!("load {n} {r}")}))
            .collect(),
        8,
    )
    .await?;
    let users = rest::create_all(
        &o.urls[0],
        "/users",
        (0..users)
            .map(|u| json!({"username": format!("lg{u}")}))
            .collect(),
        32,
    )
    .await?;
    Ok((rooms, users))
}

/// A connected client: its socket, the room's offset when it joined, and how
/// long the handshake took (TCP connect to the `connected` frame).
struct Joined {
    ws: Ws,
    start: u64,
    handshake: Duration,
}

async fn join(base: &str, room: &str, user: &str) -> Result<Joined, String> {
    join_since(base, room, user, None).await
}

/// [`join`] with `since` (a reconnect that recovers what it missed).
async fn join_since(
    base: &str,
    room: &str,
    user: &str,
    since: Option<u64>,
) -> Result<Joined, String> {
    let started = Instant::now();
    let (mut ws, _) = client::connect(base, room, user, since).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return match client::scan(&t) {
                    Frame::Connected { offset } => Ok(Joined {
                        ws,
                        start: offset,
                        handshake: started.elapsed(),
                    }),
                    _ => Err(format!("first frame was not `connected`: {t}")),
                };
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed at connect: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended at connect".into()),
        }
    }
}

/// Connects every `(base, room, user)`, at most `concurrency` at a time.
async fn join_all(
    targets: Vec<(String, String, String)>,
    concurrency: usize,
) -> (Vec<Result<Joined, String>>, Duration) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|(b, r, u)| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                join(&b, &r, &u).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    (out, started.elapsed())
}
