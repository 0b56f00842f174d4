//! The same behavioural suite the in-memory backend passes, against a real
//! Redis started for each check (one test per check). Each backend gets its
//! own key prefix.

use std::future::Future;
use std::pin::Pin;

use roomcast_core::Backend;
use roomcast_redis::{RedisOptions, Timing};
use roomcast_tests::RedisServer;
use tokio_util::sync::CancellationToken;

/// A Redis server and the token that stops the backends' tasks; both end
/// with the test.
struct Guard {
    _server: RedisServer,
    shutdown: CancellationToken,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

roomcast_core::backend_suite!(|| async {
    let server = RedisServer::start().await;
    let url = server.url();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let make = move |hub, history| {
        let opts = RedisOptions {
            target: roomcast_redis::target::TargetSpec::Url(url.clone()),
            key_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            node_id: "node-test".into(),
            history,
            pool_size: 8,
            timing: Timing::default(),
            lease: false,
            sweeper: false,
            events: roomcast_core::conformance::RECORD_ALL,
            summary: Default::default(),
            ack: None,
        };
        let shutdown = token.clone();
        Box::pin(async move {
            let (backend, _tasks) = roomcast_redis::start(&opts, hub, shutdown).expect("backend");
            backend
        }) as Pin<Box<dyn Future<Output = Backend> + Send>>
    };
    (
        Guard {
            _server: server,
            shutdown,
        },
        make,
    )
});
