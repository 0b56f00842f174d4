//! The fixture most process tests share: several edge processes on one
//! Redis, each ready before the test goes on.

use crate::{Edge, RedisServer};

/// Starts `n` edges named `node-0`, `node-1`, ... on `redis`, with `extra`
/// environment on each, and waits until every one is ready.
pub async fn cluster(redis: &RedisServer, n: usize, extra: &[(&str, &str)]) -> Vec<Edge> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for i in 0..n {
        let id = format!("node-{i}");
        let mut env = vec![("REDIS_URL", url.as_str()), ("NODE_ID", id.as_str())];
        env.extend_from_slice(extra);
        let edge = Edge::start(&env).await;
        edge.wait_ready().await;
        nodes.push(edge);
    }
    nodes
}
