//! Layering, flat names, validation messages and masking, on `Settings::load`.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn defaults_are_valid_and_development() {
    let s = Settings::load(None, &[]).unwrap();
    assert_eq!(s.server.port, 8000);
    assert!(!s.websocket_auto_rooms() && !s.join_auto_users());
}

#[test]
fn layers_override_in_order() {
    let dir = std::env::temp_dir().join(format!("roomcast-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[server]\nport = 9000\nnode_id = \"from-file\"\n[history]\nmax_len = 7\n",
    )
    .unwrap();
    let s = Settings::load(
        Some(&file),
        &env(&[
            ("ROOMCAST__SERVER__PORT", "9100"),
            ("ROOMCAST__HISTORY__MAX_LEN", "9"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (s.server.port, s.server.node_id.as_str(), s.history.max_len),
        (9100, "from-file", 9)
    );
    let s = Settings::load(
        Some(&file),
        &env(&[
            ("ROOMCAST__SERVER__PORT", "9100"),
            ("PORT", "9200"),
            ("ENVIRONMENT", "production"),
            ("ALLOW_UNAUTHENTICATED", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(s.server.port, 9200, "flat names win");
    assert!(s.websocket_auto_rooms() && s.join_auto_rooms() && s.join_auto_users());
    let s = Settings::load(
        None,
        &env(&[
            ("ENVIRONMENT", "production"),
            ("ALLOW_UNAUTHENTICATED", "true"),
            ("ALLOW_JOIN_AUTO_USERS", "false"),
        ]),
    )
    .unwrap();
    assert!(!s.join_auto_users() && s.join_auto_rooms());
}

#[test]
fn bad_values_name_the_setting() {
    let err = |pairs: &[(&str, &str)]| Settings::load(None, &env(pairs)).unwrap_err().to_string();
    assert!(err(&[("PORT", "eighty")]).contains("PORT"));
    assert!(err(&[("PORT", "65536")]).contains("PORT"));
    assert!(err(&[("METRICS_PORT", "0")]).contains("METRICS_PORT"));
    assert_eq!(
        Settings::load(None, &env(&[("PORT", "0")]))
            .unwrap()
            .server
            .port,
        0,
        "0 asks for a free port"
    );
    assert!(err(&[("ALLOW_WEBSOCKET_AUTO_ROOMS", "maybe")]).contains("ALLOW_WEBSOCKET_AUTO_ROOMS"));
    assert!(err(&[("ENVIRONMENT", "staging")]).contains("ENVIRONMENT"));
    assert!(
        err(&[("ROOMCAST__WEBSOCKET__OUTBOUND_QUEUE", "0")]).contains("websocket.outbound_queue")
    );
    assert!(err(&[("ROOMCAST__SERVER__PORT", "x")]).contains("server.port"));
    assert!(err(&[("ROOMCAST__PRESENCE__SUMMARY_PAGE", "0")]).contains("presence.summary_page"));
    assert!(err(&[("ROOMCAST__PRESENCE__DIFF_MAX", "1001")]).contains("presence.diff_max"));
    assert!(err(&[("ROOMCAST__REDIS__ACK_TIMEOUT_MS", "0")]).contains("redis.ack_timeout_ms"));
    assert!(err(&[("REDIS_SENTINELS", "h:1")]).contains("REDIS_SENTINEL_MASTER"));
    assert!(
        err(&[("REDIS_SENTINELS", "h"), ("REDIS_SENTINEL_MASTER", "m")])
            .contains("REDIS_SENTINELS")
    );
    assert!(err(&[("REDIS_SENTINEL_MASTER", "m")]).contains("REDIS_SENTINELS"));
    assert!(
        err(&[
            ("REDIS_URL", "redis://h"),
            ("REDIS_SENTINELS", "h:1"),
            ("REDIS_SENTINEL_MASTER", "m")
        ])
        .contains("not both")
    );
    assert!(
        err(&[("ROOMCAST__SERVER__PROT", "1")]).contains("prot"),
        "typos are caught"
    );
    assert!(err(&[("REDIS_URL", "localhost:6379")]).contains("REDIS_URL"));
    assert!(err(&[("FRONTEND_URL", "example.com")]).contains("FRONTEND_URL"));
    assert!(err(&[("JWT_SECRET", "a"), ("JWT_PUBLIC_KEY_FILE", "/x")]).contains("JWT_SECRET"));
}

#[test]
fn printing_masks_secrets() {
    let s = Settings::load(
        None,
        &env(&[
            ("JWT_SECRET", "hunter2-hunter2-hunter2-hunter2-"),
            ("PUBLISH_API_KEY", "pk-pk-pk-pk-pk-pk"),
            ("REDIS_URL", "redis://u:pw@h:6379/0"),
        ]),
    )
    .unwrap();
    let out = s.to_masked_toml();
    assert!(!out.contains("hunter2") && !out.contains("pk-pk") && !out.contains("pw@"));
    assert!(out.contains("redis://u:********@h:6379/0"));
}

#[test]
fn secrets_fail_closed() {
    let err = |pairs: &[(&str, &str)]| Settings::load(None, &env(pairs)).unwrap_err().to_string();
    // Empty is not "unset": an empty JWT_SECRET must not turn auth off.
    assert!(err(&[("JWT_SECRET", "")]).contains("JWT_SECRET"));
    assert!(err(&[("JWT_SECRET", "short")]).contains("JWT_SECRET"));
    assert!(err(&[("ROOMCAST__AUTH__JWT_SECRET", "")]).contains("JWT_SECRET"));
    assert!(err(&[("PUBLISH_API_KEY", "")]).contains("PUBLISH_API_KEY"));
    assert!(err(&[("SERVER_API_KEY", "tiny")]).contains("SERVER_API_KEY"));
    assert!(err(&[("ROOMCAST__AUTH__PUBLISH_API_KEY", "tiny")]).contains("server_api_key"));
    assert!(err(&[("ENVIRONMENT", "production")]).contains("ALLOW_UNAUTHENTICATED"));
    let ok = |pairs: &[(&str, &str)]| Settings::load(None, &env(pairs)).unwrap();
    let long = "0123456789abcdef0123456789abcdef";
    assert!(
        ok(&[("ENVIRONMENT", "production"), ("JWT_SECRET", long)])
            .auth
            .jwt_secret
            .is_some()
    );
    ok(&[
        ("ENVIRONMENT", "production"),
        ("ALLOW_UNAUTHENTICATED", "true"),
    ]);
    let s = ok(&[("PUBLISH_API_KEY", "0123456789abcdef")]);
    assert_eq!(s.auth.server_api_key.as_deref(), Some("0123456789abcdef"));
    let s = ok(&[("ROOMCAST__LIMITS__TRUSTED_PROXIES", "10.0.0.1,10.0.0.2")]);
    assert_eq!(s.limits.trusted_proxies, ["10.0.0.1", "10.0.0.2"]);
    assert!(err(&[("ROOMCAST__LIMITS__TRUSTED_PROXIES", "nope")]).contains("trusted_proxies"));
}
