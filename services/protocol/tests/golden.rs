//! Golden tests: the exact JSON every frame has on the wire. A change here is
//! a change to the contract that existing frontends speak.

use roomcast_protocol::*;
use serde_json::{Value, json};

fn room() -> RoomId {
    RoomId::parse("3f2504e0-4f89-11d3-9a0c-0305e82c3301").unwrap()
}
fn user() -> UserId {
    UserId::parse("u-1").unwrap()
}
fn ts() -> Timestamp {
    Timestamp::parse("2026-11-22T10:00:00.5Z").unwrap()
}
fn json_of(f: &ServerFrame) -> Value {
    serde_json::from_str(&f.to_json()).unwrap()
}

fn message(client_id: Option<&str>) -> ServerFrame {
    ServerFrame::Message(MessageFrame {
        id: "m-1".into(),
        user_id: user(),
        username: "alice".into(),
        content: "hi".into(),
        timestamp: ts(),
        room_id: room(),
        offset: 7,
        client_id: client_id.map(str::to_owned),
    })
}

#[test]
fn message_has_exactly_the_contract_fields() {
    assert_eq!(
        message(None).to_json(),
        r#"{"type":"message","id":"m-1","user_id":"u-1","username":"alice","content":"hi","timestamp":"2026-11-22T10:00:00.500000Z","room_id":"3f2504e0-4f89-11d3-9a0c-0305e82c3301","offset":7}"#
    );
    let with_client = json_of(&message(Some("c-1")));
    let mut keys: Vec<_> = with_client.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "client_id",
            "content",
            "id",
            "offset",
            "room_id",
            "timestamp",
            "type",
            "user_id",
            "username"
        ]
    );
    assert_eq!(with_client["client_id"], "c-1");
    assert!(with_client["offset"].is_u64(), "offset is a JSON integer");
}

#[test]
fn connected_and_presence() {
    let c = ServerFrame::Connected(ConnectedFrame {
        room_id: Some(room()),
        user_id: user(),
        username: "alice".into(),
        node_id: "node-a".into(),
        offset: Some(3),
        epoch: Some("e1".into()),
        recovered: None,
    });
    assert_eq!(
        json_of(&c),
        json!({"type":"connected","room_id":room().as_str(),"user_id":"u-1","username":"alice",
               "node_id":"node-a","offset":3,"epoch":"e1"})
    );
    let ServerFrame::Connected(mut inner) = c else {
        unreachable!()
    };
    inner.recovered = Some(false);
    assert_eq!(
        json_of(&ServerFrame::Connected(inner))["recovered"],
        json!(false)
    );

    let p = ServerFrame::Presence(PresenceFrame {
        room_id: room(),
        users: vec![PresenceUser {
            user_id: user(),
            username: "alice".into(),
        }],
        count: None,
    });
    assert_eq!(
        json_of(&p),
        json!({"type":"presence","room_id":room().as_str(),"users":[{"user_id":"u-1","username":"alice"}]})
    );
}

#[test]
fn summarised_presence_and_its_diff() {
    let alice = PresenceUser {
        user_id: user(),
        username: "alice".into(),
    };
    let p = ServerFrame::Presence(PresenceFrame {
        room_id: room(),
        users: vec![alice.clone()],
        count: Some(5000),
    });
    assert_eq!(
        json_of(&p),
        json!({"type":"presence","room_id":room().as_str(),
               "users":[{"user_id":"u-1","username":"alice"}],"count":5000})
    );
    let diff = PresenceDiffFrame {
        room_id: room(),
        joins: vec![alice.clone()],
        leaves: vec![PresenceUser {
            user_id: UserId::parse("u-2").unwrap(),
            username: "bob \"18446744073709551615\"".into(),
        }],
        omitted: None,
        count: 4999,
    };
    let json = ServerFrame::PresenceDiff(diff.clone()).to_json();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"type":"presence_diff","room_id":room().as_str(),
               "joins":[{"user_id":"u-1","username":"alice"}],
               "leaves":[{"user_id":"u-2","username":"bob \"18446744073709551615\""}],
               "count":4999})
    );
    // The pieces a script joins around the count give the same frame, even
    // when a username holds the placeholder.
    let (before, after) = diff.split_at_count();
    assert_eq!(format!("{before}4999{after}"), json);
    // A node lists at most a page of changes and counts the rest.
    let capped = PresenceDiffFrame {
        omitted: Some(250),
        ..diff
    };
    assert_eq!(json_of(&ServerFrame::PresenceDiff(capped))["omitted"], 250);
}

#[test]
fn events_typing_ack_pong_error() {
    let ev = UserEventFrame {
        room_id: room(),
        user_id: user(),
        username: "alice".into(),
        timestamp: ts(),
    };
    let expected = |t: &str| {
        json!({"type":t,"room_id":room().as_str(),"user_id":"u-1","username":"alice",
               "timestamp":"2026-11-22T10:00:00.500000Z"})
    };
    assert_eq!(
        json_of(&ServerFrame::UserJoined(ev.clone())),
        expected("user_joined")
    );
    assert_eq!(json_of(&ServerFrame::UserLeft(ev)), expected("user_left"));
    assert_eq!(
        json_of(&ServerFrame::Typing(TypingFrame {
            room_id: room(),
            user_id: user(),
            username: "alice".into(),
            is_typing: true
        })),
        json!({"type":"typing","room_id":room().as_str(),"user_id":"u-1","username":"alice","is_typing":true})
    );
    assert_eq!(
        json_of(&ServerFrame::Ack(AckFrame {
            id: "m-1".into(),
            offset: 9,
            client_id: None,
            room_id: None,
        })),
        json!({"type":"ack","id":"m-1","offset":9,"client_id":null})
    );
    assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    assert_eq!(
        ServerFrame::error(ErrorCode::RateLimited, "slow down").to_json(),
        r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
    );
    assert_eq!(
        ServerFrame::error_for(ErrorCode::TooLarge, "big", Some("c-9".into())).to_json(),
        r#"{"type":"error","code":"too_large","message":"big","client_id":"c-9"}"#
    );
}

#[test]
fn every_error_code_has_its_wire_name() {
    for (code, name) in [
        (ErrorCode::InvalidJson, "invalid_json"),
        (ErrorCode::UnknownType, "unknown_type"),
        (ErrorCode::EmptyContent, "empty_content"),
        (ErrorCode::TooLarge, "too_large"),
        (ErrorCode::RateLimited, "rate_limited"),
        (ErrorCode::Unavailable, "unavailable"),
        (ErrorCode::OutcomeUnknown, "outcome_unknown"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::Rejected, "rejected"),
    ] {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(name));
        assert_eq!(code.as_str(), name);
    }
}

#[test]
fn close_codes_are_the_contract_numbers() {
    for (code, n) in [
        (CloseCode::Normal, 1000),
        (CloseCode::GoingAway, 1001),
        (CloseCode::Protocol, 1002),
        (CloseCode::InvalidPayload, 1007),
        (CloseCode::Policy, 1008),
        (CloseCode::TooLarge, 1009),
        (CloseCode::Internal, 1011),
        (CloseCode::Restart, 1012),
        (CloseCode::Unauthorized, 4001),
        (CloseCode::Forbidden, 4003),
        (CloseCode::NotFound, 4004),
    ] {
        assert_eq!(code.code(), n);
        assert_eq!(CloseCode::from_code(n), Some(code));
    }
}

#[test]
fn client_frames_parse_seed_and_typed_shapes() {
    let p = |s: &str| ClientFrame::parse(s, 10);
    assert_eq!(
        p(r#"{"content":"hi"}"#),
        Ok(ClientFrame::Message {
            content: "hi".into(),
            client_id: None,
            room_id: None,
        })
    );
    assert_eq!(
        p(r#"{"content":"hi","user":"legacy-extra"}"#).unwrap(),
        ClientFrame::Message {
            content: "hi".into(),
            client_id: None,
            room_id: None,
        }
    );
    assert_eq!(
        p(r#"{"type":"message","content":"hi","client_id":"c-1"}"#),
        Ok(ClientFrame::Message {
            content: "hi".into(),
            client_id: Some("c-1".into()),
            room_id: None,
        })
    );
    assert_eq!(
        p(r#"{"type":"typing","is_typing":true}"#),
        Ok(ClientFrame::Typing {
            is_typing: true,
            room_id: None
        })
    );
    assert_eq!(p(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
}

#[test]
fn multiplexed_frames() {
    let p = |s: &str| ClientFrame::parse(s, 10);
    let r = || RoomId::parse("r-1").unwrap();
    assert_eq!(
        p(r#"{"type":"subscribe","room_id":"r-1","since":"4"}"#),
        Ok(ClientFrame::Subscribe {
            room_id: r(),
            since: Some("4".into())
        })
    );
    assert_eq!(
        p(r#"{"type":"unsubscribe","room_id":"r-1"}"#),
        Ok(ClientFrame::Unsubscribe { room_id: r() })
    );
    assert_eq!(
        p(r#"{"type":"message","room_id":"r-1","content":"hi"}"#),
        Ok(ClientFrame::Message {
            content: "hi".into(),
            client_id: None,
            room_id: Some(r()),
        })
    );
    assert_eq!(
        p(r#"{"type":"refresh","token":"t"}"#),
        Ok(ClientFrame::Refresh { token: "t".into() })
    );
    // A room id that could not name a room is refused as such.
    assert_eq!(
        p(r#"{"type":"subscribe","room_id":"a:b"}"#)
            .unwrap_err()
            .code,
        ErrorCode::InvalidJson
    );
    assert_eq!(
        json_of(&ServerFrame::Subscribed(SubscribedFrame {
            room_id: r(),
            offset: 7,
            epoch: "e1".into(),
            recovered: Some(true),
        })),
        json!({"type":"subscribed","room_id":"r-1","offset":7,"epoch":"e1","recovered":true})
    );
    assert_eq!(
        json_of(&ServerFrame::Unsubscribed(RoomRef { room_id: r() })),
        json!({"type":"unsubscribed","room_id":"r-1"})
    );
    assert_eq!(
        json_of(&ServerFrame::Connected(ConnectedFrame {
            room_id: None,
            user_id: user(),
            username: "alice".into(),
            node_id: "node-a".into(),
            offset: None,
            epoch: None,
            recovered: None,
        })),
        json!({"type":"connected","user_id":"u-1","username":"alice","node_id":"node-a"})
    );
    assert_eq!(
        json_of(&ServerFrame::Ack(AckFrame {
            id: "m-1".into(),
            offset: 9,
            client_id: None,
            room_id: Some(r()),
        })),
        json!({"type":"ack","id":"m-1","offset":9,"client_id":null,"room_id":"r-1"})
    );
    assert_eq!(
        ServerFrame::error_in(ErrorCode::NotSubscribed, "no", Some("c".into()), Some(r()))
            .to_json(),
        r#"{"type":"error","code":"not_subscribed","message":"no","client_id":"c","room_id":"r-1"}"#
    );
    assert_eq!(
        json_of(&ServerFrame::Refreshed(RefreshedFrame {
            expires_at: Some(5)
        })),
        json!({"type":"refreshed","expires_at":5})
    );
}

#[test]
fn client_frame_errors_carry_their_codes() {
    let code = |s: &str| ClientFrame::parse(s, 10).unwrap_err().code;
    assert_eq!(code("not json"), ErrorCode::InvalidJson);
    assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
    assert_eq!(code(r#"{"content":5}"#), ErrorCode::InvalidJson);
    assert_eq!(code(r#"{"type":5}"#), ErrorCode::InvalidJson);
    assert_eq!(
        code(r#"{"type":"typing","is_typing":"yes"}"#),
        ErrorCode::InvalidJson
    );
    assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    assert_eq!(code(r#"{"content":"   "}"#), ErrorCode::EmptyContent);
    assert_eq!(code(r#"{"type":"message"}"#), ErrorCode::EmptyContent);
    assert_eq!(code(r#"{}"#), ErrorCode::EmptyContent);
    assert_eq!(code(r#"{"content":"01234567890"}"#), ErrorCode::TooLarge);
    let long_id = format!(r#"{{"content":"x","client_id":"{}"}}"#, "c".repeat(200));
    assert_eq!(code(&long_id), ErrorCode::InvalidJson);
    let err = ClientFrame::parse(r#"{"content":"","client_id":"c-2"}"#, 10).unwrap_err();
    assert_eq!(
        (err.code, err.client_id.as_deref()),
        (ErrorCode::EmptyContent, Some("c-2"))
    );
    assert_eq!(client_id_of("not json"), None);
}

#[test]
fn rest_bodies() {
    let u = rest::User {
        id: user(),
        username: "alice".into(),
        created_at: ts(),
    };
    assert_eq!(
        serde_json::to_value(&u).unwrap(),
        json!({"id":"u-1","username":"alice","created_at":"2026-11-22T10:00:00.500000Z"})
    );
    assert_eq!(
        serde_json::to_value(rest::ErrorBody {
            detail: "Room not found".into()
        })
        .unwrap(),
        json!({"detail":"Room not found"})
    );
    assert!(rest::validate_name("username", "  ").is_err());
    assert_eq!(rest::validate_name("username", " bob ").unwrap(), "bob");
    assert!(rest::validate_name("username", "evil\u{202E}gnp.exe").is_err());
    assert!(rest::validate_name("username", "a\u{200B}b").is_err());
    assert!(rest::validate_name("username", "line\r\nbreak").is_err());
    assert!(rest::validate_name("username", &"x".repeat(101)).is_err());
    assert_eq!(rest::validate_name("username", "Zoë 🎉").unwrap(), "Zoë 🎉");
}

#[test]
fn offset_template_puts_any_offset_back_in_place() {
    let ServerFrame::Message(mut msg) = message(Some("c")) else {
        unreachable!()
    };
    msg.content = "tricky \"offset\":18446744073709551615 text".into();
    let (pre, post) = msg.offset_template();
    msg.offset = 42;
    assert_eq!(format!("{pre}42{post}"), msg.to_frame_json());
    msg.client_id = None;
    let (pre, post) = msg.offset_template();
    assert_eq!(format!("{pre}42{post}"), msg.to_frame_json());
}
