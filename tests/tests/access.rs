//! The access table (docs/protocol.md, "Access") walked cell by cell on a
//! real node, on the embedded backend and on Redis: every REST route for
//! every kind of caller (anonymous, a bad token, a user whose token allows
//! one room, the application backend), and the attacks that were open
//! before: reading a forbidden room's history, listing everyone, creating
//! users and squatting names, spoofed display names, cross-site writes.

use roomcast_tests::{Client, Closed, Edge, RedisServer, hs256, now};
use serde_json::{Value, json};

const SECRET: &str = "access-test-secret-access-test-secret";
const KEY: &str = "access-test-server-key";

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    BadToken,
    /// alice, whose token allows only the first room.
    Alice,
    Server,
}

const EVERYONE: [Who; 4] = [Who::Anonymous, Who::BadToken, Who::Alice, Who::Server];

struct World {
    edge: Edge,
    /// The room alice's token allows, and one it does not.
    allowed: String,
    other: String,
    /// A user other than alice.
    bob: String,
    alice_token: String,
    _redis: Option<RedisServer>,
}

impl World {
    async fn start(redis: bool, extra: &[(&str, &str)]) -> World {
        let redis = if redis {
            Some(RedisServer::start().await)
        } else {
            None
        };
        let url = redis.as_ref().map(RedisServer::url);
        let mut env = vec![("JWT_SECRET", SECRET), ("SERVER_API_KEY", KEY)];
        if let Some(u) = &url {
            env.push(("REDIS_URL", u.as_str()));
        }
        env.extend_from_slice(extra);
        let edge = Edge::in_process(&env).await;
        let allowed = edge.room("allowed").await;
        let other = edge.room("other").await;
        let bob = edge.user("bob").await;
        let alice_token = hs256(
            SECRET,
            "alice",
            json!({"name": "Alice", "rooms": [allowed]}),
        );
        // alice exists once she has connected (a valid token vouches for
        // its subject).
        let (_c, _, _) =
            Client::join(&edge.ws_url(&format!("/ws/{allowed}/alice?token={alice_token}"))).await;
        World {
            edge,
            allowed,
            other,
            bob,
            alice_token,
            _redis: redis,
        }
    }

    fn auth(&self, who: Who) -> Option<String> {
        match who {
            Who::Anonymous => None,
            Who::BadToken => Some("Bearer not.a.token".into()),
            Who::Alice => Some(format!("Bearer {}", self.alice_token)),
            Who::Server => Some(format!("Bearer {KEY}")),
        }
    }

    async fn call(&self, who: Who, method: &str, path: &str, body: Option<&Value>) -> u16 {
        let auth = self.auth(who);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let body = body.map(Value::to_string);
        self.edge
            .request(method, path, &headers, body.as_deref())
            .await
            .status
    }
}

/// One row of the table: a request and the status each caller gets.
struct Row {
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// Anonymous, bad token, alice, server.
    expect: [u16; 4],
}

fn rows(w: &World) -> Vec<Row> {
    let (a, o, bob) = (&w.allowed, &w.other, &w.bob);
    let row = |method, path: String, body: Option<Value>, expect| Row {
        method,
        path,
        body,
        expect,
    };
    vec![
        row("GET", "/users".into(), None, [401, 401, 403, 200]),
        row(
            "POST",
            "/users".into(),
            Some(json!({"username": "x"})),
            [401, 401, 403, 201],
        ),
        row("GET", "/users/alice".into(), None, [401, 401, 200, 200]),
        row("GET", format!("/users/{bob}"), None, [401, 401, 403, 200]),
        row("GET", "/rooms".into(), None, [401, 401, 403, 200]),
        row(
            "POST",
            "/rooms".into(),
            Some(json!({"name": "n"})),
            [401, 401, 403, 201],
        ),
        row("GET", format!("/rooms/{a}"), None, [401, 401, 200, 200]),
        row("GET", format!("/rooms/{o}"), None, [401, 401, 403, 200]),
        row(
            "POST",
            format!("/rooms/{a}/join"),
            Some(json!({"user_id": "alice"})),
            [401, 401, 403, 200],
        ),
        row(
            "GET",
            format!("/rooms/{a}/messages"),
            None,
            [401, 401, 200, 200],
        ),
        row(
            "GET",
            format!("/rooms/{o}/messages"),
            None,
            [401, 401, 403, 200],
        ),
        row(
            "GET",
            format!("/rooms/{a}/presence"),
            None,
            [401, 401, 200, 200],
        ),
        row(
            "GET",
            format!("/rooms/{o}/presence"),
            None,
            [401, 401, 403, 200],
        ),
        row(
            "POST",
            format!("/rooms/{a}/messages"),
            Some(json!({"content": "from the backend"})),
            [401, 401, 403, 202],
        ),
        row(
            "GET",
            format!("/users/{bob}/status"),
            None,
            [401, 401, 200, 200],
        ),
        row(
            "POST",
            format!("/users/{bob}/messages"),
            Some(json!({"data": {"hello": 1}})),
            [401, 401, 403, 202],
        ),
        row(
            "POST",
            format!("/users/{bob}/disconnect"),
            Some(json!({"reconnect": true})),
            [401, 401, 403, 202],
        ),
        row("GET", "/health".into(), None, [200, 200, 200, 200]),
        row("GET", "/ready".into(), None, [200, 200, 200, 200]),
        row("GET", "/metrics".into(), None, [200, 200, 200, 200]),
        row("GET", "/".into(), None, [200, 200, 200, 200]),
    ]
}

async fn walk_the_table(redis: bool) {
    let w = World::start(redis, &[]).await;
    let mut wrong = Vec::new();
    for r in rows(&w) {
        for (who, expect) in EVERYONE.iter().zip(r.expect) {
            let got = w.call(*who, r.method, &r.path, r.body.as_ref()).await;
            if got != expect {
                wrong.push(format!(
                    "{} {} as {who:?}: {got}, expected {expect}",
                    r.method, r.path
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // A token in the query or a cookie counts as in the header.
    let path = format!("/rooms/{}/messages?token={}", w.allowed, w.alice_token);
    assert_eq!(w.edge.get(&path).await.status, 200);
    let cookie = format!("token={}", w.alice_token);
    let r = w
        .edge
        .request(
            "GET",
            &format!("/rooms/{}/presence", w.allowed),
            &[("cookie", &cookie)],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    // Refusals are counted.
    let refused = w
        .edge
        .metric("roomcast_requests_refused_total{reason=\"unauthorized\"}")
        .await;
    assert!(refused >= 20.0, "{refused}");
}

#[tokio::test]
async fn every_cell_of_the_access_table_on_the_embedded_backend() {
    walk_the_table(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_of_the_access_table_on_redis() {
    walk_the_table(true).await;
}

/// Where settings let users create rooms and join over REST, they do so
/// only for themselves, in rooms their token allows, under their token's
/// name: an anonymous caller can no longer create "dave" as "Evil Dave".
#[tokio::test]
async fn users_act_only_as_themselves_under_their_tokens_name() {
    let w = World::start(
        false,
        &[
            ("ROOMCAST__AUTH__USERS_CREATE_ROOMS", "true"),
            ("ROOMCAST__AUTH__USERS_JOIN_ROOMS", "true"),
            ("ALLOW_JOIN_AUTO_USERS", "true"),
        ],
    )
    .await;
    assert_eq!(
        w.call(Who::Alice, "POST", "/rooms", Some(&json!({"name": "mine"})))
            .await,
        201
    );
    let join = |user: &str, name: &str| json!({"user_id": user, "username": name});
    let path = format!("/rooms/{}/join", w.allowed);
    assert_eq!(
        w.call(Who::Alice, "POST", &path, Some(&join("alice", "A")))
            .await,
        200
    );
    assert_eq!(
        w.call(Who::Alice, "POST", &path, Some(&join("dave", "Evil Dave")))
            .await,
        403
    );
    assert_eq!(
        w.call(
            Who::Anonymous,
            "POST",
            &path,
            Some(&join("dave", "Evil Dave"))
        )
        .await,
        401
    );
    let other = format!("/rooms/{}/join", w.other);
    assert_eq!(
        w.call(Who::Alice, "POST", &other, Some(&join("alice", "A")))
            .await,
        403
    );
    // dave's own token names him: the body's name does not stick.
    let dave = hs256(SECRET, "dave", json!({"name": "Dave"}));
    let r = w
        .edge
        .request(
            "POST",
            &path,
            &[("authorization", &format!("Bearer {dave}"))],
            Some(&join("dave", "Evil Dave").to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = w
        .edge
        .request(
            "GET",
            "/users/dave",
            &[("authorization", &format!("Bearer {KEY}"))],
            None,
        )
        .await
        .json();
    assert_eq!(stored["username"], "Dave");
}

/// A token's identity and name win over the query; the name claim is held
/// to the username rules; `nbf` is checked.
#[tokio::test]
async fn a_token_says_who_connects() {
    let w = World::start(false, &[]).await;
    let room = &w.allowed;
    // No name in the token: `?username=` does not let bob pose as Alice.
    let bob = hs256(SECRET, "bob-2", json!({}));
    let (_c, connected, _) = Client::join(
        &w.edge
            .ws_url(&format!("/ws/{room}/bob-2?token={bob}&username=Alice")),
    )
    .await;
    assert_eq!(connected["username"], "bob-2");
    for bad_name in [
        "x".repeat(11_000),
        "line\r\nbreak".into(),
        "evil\u{202E}txt".into(),
    ] {
        let t = hs256(SECRET, "mallory", json!({"name": bad_name}));
        let mut c = Client::connect(&w.edge.ws_url(&format!("/ws/{room}/mallory?token={t}"))).await;
        assert_eq!(c.closed().await.code(), Some(4001), "name {bad_name:?}");
    }
    let later = hs256(SECRET, "early", json!({"nbf": now() + 3600}));
    let mut c = Client::connect(&w.edge.ws_url(&format!("/ws/{room}/early?token={later}"))).await;
    assert_eq!(c.closed().await.code(), Some(4001), "not valid before nbf");
}

/// Issuer and audience, when configured, are required and checked.
#[tokio::test]
async fn issuer_and_audience_when_configured() {
    let edge = Edge::in_process(&[
        ("JWT_SECRET", SECRET),
        ("SERVER_API_KEY", KEY),
        ("ROOMCAST__AUTH__JWT_ISSUER", "https://issuer.example"),
        ("ROOMCAST__AUTH__JWT_AUDIENCE", "roomcast"),
    ])
    .await;
    let room = edge.room("r").await;
    let good = hs256(
        SECRET,
        "ivy",
        json!({"iss": "https://issuer.example", "aud": "roomcast"}),
    );
    Client::join(&edge.ws_url(&format!("/ws/{room}/ivy?token={good}"))).await;
    for claims in [
        json!({"aud": "roomcast"}),
        json!({"iss": "https://evil.example", "aud": "roomcast"}),
        json!({"iss": "https://issuer.example", "aud": "other"}),
        json!({"iss": "https://issuer.example"}),
    ] {
        let t = hs256(SECRET, "ivy", claims.clone());
        let mut c = Client::connect(&edge.ws_url(&format!("/ws/{room}/ivy?token={t}"))).await;
        assert_eq!(c.closed().await.code(), Some(4001), "{claims}");
    }
}

/// With auth off (development) the node is open as before, except server
/// publishing, which needs the key.
#[tokio::test]
async fn auth_off_keeps_the_open_development_behaviour() {
    let edge = Edge::in_process(&[("SERVER_API_KEY", KEY)]).await;
    let user = edge.post("/users", &json!({"username": "u"})).await;
    assert_eq!(user.status, 201);
    let room = edge.post("/rooms", &json!({"name": "r"})).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        "/users".to_owned(),
        "/rooms".into(),
        format!("/rooms/{room}/messages"),
    ] {
        assert_eq!(edge.get(&path).await.status, 200, "{path}");
    }
    let publish = format!("/rooms/{room}/messages");
    assert_eq!(
        edge.post(&publish, &json!({"content": "x"})).await.status,
        401
    );
    let auth = format!("Bearer {KEY}");
    let r = edge
        .request(
            "POST",
            &publish,
            &[("authorization", &auth)],
            Some(r#"{"content":"x"}"#),
        )
        .await;
    assert_eq!(r.status, 202);
}

/// CORS is decided before the handler: a cross-site `text/plain` POST from
/// an origin not in `FRONTEND_URL` is refused and writes nothing.
#[tokio::test]
async fn a_cross_site_write_is_refused_before_it_runs() {
    let edge = Edge::in_process(&[("FRONTEND_URL", "https://chat.example")]).await;
    let before = edge.get("/rooms").await.json().as_array().unwrap().len();
    let evil = edge
        .request(
            "POST",
            "/rooms",
            &[
                ("origin", "https://evil.example"),
                ("content-type", "text/plain"),
            ],
            Some(r#"{"name":"planted"}"#),
        )
        .await;
    assert_eq!(evil.status, 403);
    assert_eq!(
        edge.get("/rooms").await.json().as_array().unwrap().len(),
        before
    );
    let good = edge
        .request(
            "POST",
            "/rooms",
            &[("origin", "https://chat.example")],
            Some(r#"{"name":"ok"}"#),
        )
        .await;
    assert_eq!(good.status, 201);
    assert_eq!(
        good.headers["access-control-allow-origin"],
        "https://chat.example"
    );
    assert!(
        edge.metric("roomcast_requests_refused_total{reason=\"cross_site\"}")
            .await
            >= 1.0
    );
}

/// Production without `FRONTEND_URL`: pages of this node's own origin may
/// open sockets, other origins may not (unless `auth.allow_any_origin`).
#[tokio::test]
async fn production_without_frontend_url_is_same_origin_only() {
    let edge = Edge::in_process(&[
        ("ENVIRONMENT", "production"),
        ("ALLOW_UNAUTHENTICATED", "true"),
    ])
    .await;
    let own = format!("http://127.0.0.1:{}", edge.port);
    let url = edge.ws_url("/ws/lobby/carol");
    let (mut ok, ..) = {
        let mut c = Client::connect_with(&url, &[("origin", &own)])
            .await
            .unwrap();
        let first = c.next_json().await;
        (c, first)
    };
    ok.send_json(&json!({"type": "ping"})).await;
    let mut evil = Client::connect_with(&url, &[("origin", "https://evil.example")])
        .await
        .unwrap();
    assert_eq!(
        evil.closed().await,
        Closed::Code(4003, "origin not allowed".into())
    );
    let open = Edge::in_process(&[
        ("ENVIRONMENT", "production"),
        ("ALLOW_UNAUTHENTICATED", "true"),
        ("ROOMCAST__AUTH__ALLOW_ANY_ORIGIN", "true"),
    ])
    .await;
    let mut any = Client::connect_with(
        &open.ws_url("/ws/lobby/carol"),
        &[("origin", "https://evil.example")],
    )
    .await
    .unwrap();
    assert_eq!(any.next_json().await["type"], "connected");
}
