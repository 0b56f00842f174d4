//! OpenTelemetry: a message sent on node A and delivered on node B is one
//! trace. A small OTLP/HTTP (JSON) receiver in the test collects what two
//! real edge processes export.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use roomcast_tests::{Client, Edge, RedisServer};
use serde_json::{Value, json};

type Spans = Arc<Mutex<Vec<Value>>>;

/// Accepts OTLP/HTTP JSON exports; keeps every span with its resource's
/// `service.instance.id` copied in as `node`.
async fn otlp_receiver() -> (u16, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans: Spans = Arc::default();
    let store = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                                let node = rs["resource"]["attributes"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .find(|a| a["key"] == "service.instance.id")
                                    .map(|a| a["value"]["stringValue"].clone())
                                    .unwrap_or(Value::Null);
                                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                                    for span in ss["spans"].as_array().into_iter().flatten() {
                                        let mut span = span.clone();
                                        span["node"] = node.clone();
                                        store.lock().unwrap().push(span);
                                    }
                                }
                            }
                        }
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, spans)
}

fn find(spans: &Spans, f: impl Fn(&Value) -> bool) -> Option<Value> {
    spans.lock().unwrap().iter().find(|s| f(s)).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_one_trace_across_nodes() {
    let (port, spans) = otlp_receiver().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["trace-a", "trace-b"] {
        let e = Edge::start(&[
            ("REDIS_URL", url.as_str()),
            ("NODE_ID", id),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
        .await;
        e.wait_ready().await;
        nodes.push(e);
    }
    let room = nodes[0].room("traced").await;
    let (a, b) = (nodes[0].user("a").await, nodes[1].user("b").await);
    let (mut ca, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{a}"))).await;
    let (mut cb, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{b}"))).await;
    ca.send_json(&json!({"content": "traced hello"})).await;
    assert_eq!(cb.next_of("message").await["content"], "traced hello");
    cb.ws.close(None).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let (publish, deliver) = loop {
        let publish = find(&spans, |s| {
            s["name"] == "message.publish" && s["node"] == "trace-a"
        });
        let deliver = publish.as_ref().and_then(|p| {
            find(&spans, |s| {
                s["name"] == "message.deliver"
                    && s["node"] == "trace-b"
                    && s["traceId"] == p["traceId"]
            })
        });
        let closed = find(&spans, |s| {
            s["name"] == "ws.connection" && s["node"] == "trace-b"
        });
        if let (Some(p), Some(d), Some(_)) = (&publish, &deliver, closed) {
            break (p.clone(), d.clone());
        }
        assert!(
            Instant::now() < deadline,
            "spans not exported: {:#?}",
            spans.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!publish["traceId"].as_str().unwrap().is_empty());
    assert_eq!(
        deliver["traceId"], publish["traceId"],
        "one trace across nodes"
    );
    assert_eq!(
        deliver["parentSpanId"], publish["spanId"],
        "delivery is a child of the publish"
    );
    // One delivery span per node for the message (not per recipient).
    let per_node = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "message.deliver" && s["traceId"] == publish["traceId"])
        .count();
    assert_eq!(per_node, 2, "node A (the sender's echo) and node B");
}
