//! The same behavioural suite the in-memory backend passes, against a real
//! Redis started for the test. Each backend gets its own key prefix.

use roomcast_redis::{RedisOptions, Timing};
use roomcast_tests::RedisServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_passes_the_suite() {
    let server = RedisServer::start().await;
    let url = server.url();
    let shutdown = CancellationToken::new();
    let make = move |hub, len| {
        let opts = RedisOptions {
            url: url.clone(),
            key_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            node_id: "node-test".into(),
            history_len: len,
            pool_size: 8,
            timing: Timing::default(),
            lease: false,
            sweeper: false,
        };
        let shutdown = shutdown.clone();
        Box::pin(async move {
            let (backend, _tasks) = roomcast_redis::start(&opts, hub, shutdown).expect("backend");
            backend
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = roomcast_core::Backend> + Send>>
    };
    roomcast_core::conformance::run_all(&make).await;
}
