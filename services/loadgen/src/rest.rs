//! Setup over REST: rooms and users, created by a few workers that each keep
//! one HTTP/1.1 connection alive (thousands of short connections would eat
//! the ephemeral ports the WebSockets need).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(base: &str) -> Result<Sender, String> {
    let authority = base.trim_start_matches("http://");
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// POSTs each body in `bodies` to `path` (on `base`), `workers` at a time;
/// the `id` of each created object, in order.
pub async fn create_all(
    base: &str,
    path: &str,
    bodies: Vec<Value>,
    workers: usize,
) -> Result<Vec<String>, String> {
    let n = bodies.len();
    let bodies = std::sync::Arc::new(bodies);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers.min(n).max(1) {
        let (base, path, bodies, next) = (
            base.to_owned(),
            path.to_owned(),
            bodies.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&base).await?;
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= bodies.len() {
                    return Ok::<_, String>(out);
                }
                let req = http::Request::post(&path)
                    .header("host", base.trim_start_matches("http://"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(bodies[i].to_string())))
                    .map_err(|e| e.to_string())?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("POST {path}: {e}"))?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!(
                        "POST {path}: {status} {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let id = v["id"].as_str().ok_or("response without id")?.to_owned();
                out.push((i, id));
            }
        }));
    }
    let mut ids = vec![String::new(); n];
    for t in tasks {
        for (i, id) in t.await.map_err(|e| e.to_string())?? {
            ids[i] = id;
        }
    }
    Ok(ids)
}
