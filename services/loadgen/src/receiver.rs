//! `roomcast-loadgen hook-receiver`: the trivial application backend the
//! benchmark puts behind the publish hook: it answers every POST with
//! `{"action":"accept"}` at once, so what is measured is roomcast's cost of
//! asking (a pooled HTTP round trip per message), not the application's.
//! It listens on `--listen` (port 0: any; the address is printed as
//! `listening on ADDR`) until killed.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ACCEPT: &[u8] = br#"{"action":"accept"}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole request, as an application would.
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(ACCEPT)))
        .expect("a valid response"))
}

/// Serves until the process is killed.
pub async fn run(listen: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
