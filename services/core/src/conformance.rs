//! The behavioural suite every backend must pass, run against the in-memory
//! backend here and against Redis in `roomcast-redis`.
//!
//! [`backend_suite!`](crate::backend_suite) turns every check into a test of
//! its own for a backend (as centrifuge runs one shared suite per backend as
//! subtests), so one failure hides nothing else. Each check builds a fresh
//! backend through the caller's factory and uses fresh random room ids, so
//! checks do not see each other's data.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::{MessageFrame, PresenceUser, RoomId, UserId};

use crate::Backend;
use crate::broker::MessageDraft;
use crate::history::{HistoryOptions, HistoryQuery, Since};
use crate::hub::{ConnId, Hub, Member, Outbound};
use crate::outbox::{Next, Outbox};

/// Builds a backend delivering into the given hub, keeping history as the
/// options say.
pub type MakeBackend =
    dyn Fn(Arc<Hub>, HistoryOptions) -> Pin<Box<dyn Future<Output = Backend> + Send>> + Send + Sync;

/// Generates one `#[tokio::test]` per check of the suite. `$setup` is an
/// async closure returning `(guard, make)`: the guard (e.g. a Redis server
/// started for the test) lives as long as the test, `make` is a
/// [`MakeBackend`].
#[macro_export]
macro_rules! backend_suite {
    ($setup:expr) => {
        $crate::backend_suite!(@each $setup;
            directory,
            listings_are_oldest_first,
            admission,
            offsets_are_contiguous_and_delivered_in_order,
            publishing_is_idempotent_per_sender_and_client_id,
            a_retry_after_the_window_is_a_new_message,
            a_retry_of_a_trimmed_message_keeps_its_first_id,
            history_queries,
            history_pages_end_at_the_byte_bound,
            events_skip_the_excluded_user_and_stay_in_their_room,
            presence_counts_connections,
            re_adding_a_connection_is_no_news,
            online_users_are_counted_across_rooms,
            a_first_join_is_announced_once
        );
    };
    (@each $setup:expr; $($check:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (_guard, make) = ($setup)().await;
            $crate::conformance::$check(&make).await;
        }
    )+};
}

fn opts(max_len: usize) -> HistoryOptions {
    HistoryOptions::new(max_len)
}

fn room() -> RoomId {
    RoomId::random()
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn draft(room: &RoomId, content: &str) -> MessageDraft {
    MessageDraft {
        room: room.clone(),
        user_id: user("sender"),
        username: "Sender".into(),
        content: content.into(),
        client_id: Some(format!("c-{content}")),
        trace: None,
    }
}

/// Joins a local member and subscribes the room, as the edge does.
async fn member(
    hub: &Hub,
    backend: &Backend,
    room: &RoomId,
    conn: ConnId,
    user_id: &str,
) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(1024));
    hub.join(
        room,
        Member {
            conn,
            user: user(user_id),
            outbox: outbox.clone(),
        },
    );
    backend.broker.subscribe(room).await.expect("subscribe");
    outbox
}

async fn recv(rx: &mut Arc<Outbox>) -> Outbound {
    match tokio::time::timeout(Duration::from_secs(5), rx.next())
        .await
        .expect("a delivery within 5 s")
    {
        Next::Frame(out) => out,
        Next::Killed(reason) => panic!("connection killed: {reason:?}"),
    }
}

async fn nothing_more(rx: &mut Arc<Outbox>) {
    let got = tokio::time::timeout(Duration::from_millis(300), rx.next()).await;
    assert!(got.is_err(), "unexpected delivery: {got:?}");
}

pub async fn directory(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let alice = b.store.create_user("alice").await.unwrap();
    assert_eq!(
        b.store.get_user(&alice.id).await.unwrap(),
        Some(alice.clone())
    );
    let again = b.store.ensure_user(&alice.id, "other name").await.unwrap();
    assert_eq!(again, alice, "ensure keeps an existing user as it is");
    tokio::time::sleep(Duration::from_millis(2)).await;
    let auto = UserId::random();
    let made = b.store.ensure_user(&auto, "auto").await.unwrap();
    assert_eq!((made.id.clone(), made.username.as_str()), (auto, "auto"));
    assert_eq!(b.store.get_user(&UserId::random()).await.unwrap(), None);
    assert_eq!(b.store.list_users().await.unwrap(), [alice.clone(), made]);

    let r = b.store.create_room("general").await.unwrap();
    assert_eq!(b.store.get_room(&r.id).await.unwrap(), Some(r.clone()));
    tokio::time::sleep(Duration::from_millis(2)).await;
    let auto_room = RoomId::random();
    let ar = b.store.ensure_room(&auto_room).await.unwrap();
    assert_eq!(ar.name, auto_room.as_str());
    assert_eq!(b.store.list_rooms().await.unwrap(), [r.clone(), ar]);
    assert!(!b.store.is_member(&r.id, &alice.id).await.unwrap());
    b.store.add_member(&r.id, &alice.id).await.unwrap();
    assert!(b.store.is_member(&r.id, &alice.id).await.unwrap());
}

pub async fn admission(make: &MakeBackend) {
    use crate::store::{AdmitPolicy, Admitted};
    let b = make(Arc::default(), opts(10)).await;
    let (r, u) = (room(), UserId::random());
    let strict = AdmitPolicy::default();
    assert_eq!(
        b.store.admit(&r, &u, &strict).await.unwrap(),
        Admitted::NoRoom
    );
    assert_eq!(b.store.get_room(&r).await.unwrap(), None, "nothing created");
    let rooms_only = AdmitPolicy {
        create_room: true,
        create_user_as: None,
    };
    assert_eq!(
        b.store.admit(&r, &u, &rooms_only).await.unwrap(),
        Admitted::NoUser
    );
    assert_eq!(
        b.store.get_room(&r).await.unwrap().unwrap().name,
        r.as_str(),
        "the room was created"
    );
    assert!(!b.store.is_member(&r, &u).await.unwrap());
    let both = AdmitPolicy {
        create_room: true,
        create_user_as: Some("Newbie".into()),
    };
    let Admitted::Member(user) = b.store.admit(&r, &u, &both).await.unwrap() else {
        panic!("admitted")
    };
    assert_eq!(
        (user.id.clone(), user.username.as_str()),
        (u.clone(), "Newbie")
    );
    assert!(b.store.is_member(&r, &u).await.unwrap());
    let renamed = AdmitPolicy {
        create_room: false,
        create_user_as: Some("Other".into()),
    };
    assert_eq!(
        b.store.admit(&r, &u, &renamed).await.unwrap(),
        Admitted::Member(user),
        "existing users keep their name"
    );

    let pu = |id: &UserId, name: &str| PresenceUser {
        user_id: id.clone(),
        username: name.into(),
    };
    let (first, users) = b.presence.join(&r, &pu(&u, "Newbie"), "n/9").await.unwrap();
    assert!(first);
    assert_eq!(users, [pu(&u, "Newbie")]);
    let (first, users) = b
        .presence
        .join(&r, &pu(&u, "Newbie"), "n/10")
        .await
        .unwrap();
    assert!(!first && users.len() == 1, "a second tab");
}

pub async fn offsets_are_contiguous_and_delivered_in_order(make: &MakeBackend) {
    let hub = Arc::new(Hub::default());
    let b = make(hub.clone(), opts(100)).await;
    let r = room();
    let mut rx = member(&hub, &b, &r, 1, "reader").await;
    let publishes = (0..20).map(|i| {
        let b = b.clone();
        let d = draft(&r, &i.to_string());
        tokio::spawn(async move { b.broker.publish_message(d).await.unwrap().message })
    });
    let mut offsets = Vec::new();
    for p in publishes {
        offsets.push(p.await.unwrap().offset);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=20).collect::<Vec<u64>>());
    for expected in 1..=20u64 {
        let out = recv(&mut rx).await;
        assert_eq!(out.offset, expected, "delivered in offset order");
        let v: serde_json::Value = serde_json::from_slice(&out.frame).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["offset"], expected);
        assert_eq!(v["room_id"], r.as_str());
        let content = v["content"].as_str().unwrap();
        assert_eq!(v["client_id"], format!("c-{content}"));
    }
    nothing_more(&mut rx).await;
    assert_eq!(b.history.position(&r).await.unwrap().offset, 20);
}

pub async fn history_queries(make: &MakeBackend) {
    let b = make(Arc::default(), opts(5)).await;
    let r = room();
    let empty = b.history.position(&r).await.unwrap();
    assert_eq!(empty.offset, 0);
    let q = |since, limit| HistoryQuery::new(since, limit);
    let page = b
        .history
        .read(&r, q(Some(Since::Offset(0)), 50))
        .await
        .unwrap();
    assert!(page.complete && page.messages.is_empty());

    let mut sent: Vec<MessageFrame> = Vec::new();
    for i in 1..=8 {
        sent.push(
            b.broker
                .publish_message(draft(&r, &format!("m{i}")))
                .await
                .unwrap()
                .message,
        );
        // Distinct timestamps for the time-based query.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let offsets = |p: &crate::history::HistoryPage| -> Vec<u64> {
        p.messages.iter().map(|m| m.offset).collect()
    };
    let latest = b.history.read(&r, q(None, 50)).await.unwrap();
    assert_eq!(offsets(&latest), [4, 5, 6, 7, 8], "only 5 retained");
    assert_eq!(latest.messages[4], sent[7], "stored as published");
    assert_eq!(latest.position.offset, 8);
    assert_eq!(latest.position.epoch, empty.epoch, "epoch is stable");
    assert_eq!(
        offsets(&b.history.read(&r, q(None, 2)).await.unwrap()),
        [7, 8]
    );

    let after5 = b
        .history
        .read(&r, q(Some(Since::Offset(5)), 50))
        .await
        .unwrap();
    assert_eq!((offsets(&after5), after5.complete), (vec![6, 7, 8], true));
    let first2 = b
        .history
        .read(&r, q(Some(Since::Offset(3)), 2))
        .await
        .unwrap();
    assert_eq!((offsets(&first2), first2.complete), (vec![4, 5], true));
    let trimmed = b
        .history
        .read(&r, q(Some(Since::Offset(1)), 50))
        .await
        .unwrap();
    assert_eq!(
        (offsets(&trimmed), trimmed.complete),
        (vec![4, 5, 6, 7, 8], false)
    );
    let head = b
        .history
        .read(&r, q(Some(Since::Offset(8)), 50))
        .await
        .unwrap();
    assert!(head.complete && head.messages.is_empty());
    let future = b
        .history
        .read(&r, q(Some(Since::Offset(99)), 50))
        .await
        .unwrap();
    assert!(!future.complete && future.messages.is_empty());

    let t6 = sent[5].timestamp;
    let by_time = b
        .history
        .read(&r, q(Some(Since::Time(t6)), 50))
        .await
        .unwrap();
    assert_eq!(offsets(&by_time), [7, 8], "since a timestamp is exclusive");
}

pub async fn events_skip_the_excluded_user_and_stay_in_their_room(make: &MakeBackend) {
    let hub = Arc::new(Hub::default());
    let b = make(hub.clone(), opts(10)).await;
    let (r, other) = (room(), room());
    let mut ra = member(&hub, &b, &r, 1, "a").await;
    let mut rb = member(&hub, &b, &r, 2, "b").await;
    let mut rc = member(&hub, &b, &other, 3, "c").await;
    b.broker
        .publish_event(
            &r,
            bytes::Bytes::from_static(b"{\"type\":\"typing\"}"),
            Some(user("a")),
        )
        .await
        .unwrap();
    let got = recv(&mut rb).await;
    assert_eq!(
        (&got.frame[..], got.offset),
        (&b"{\"type\":\"typing\"}"[..], 0)
    );
    nothing_more(&mut ra).await;
    nothing_more(&mut rc).await;

    // After the last local member leaves, the node unsubscribes, and the
    // room goes on without it.
    assert!(!hub.leave(&r, 1));
    assert!(hub.leave(&r, 2));
    b.broker.unsubscribe(&r).await.unwrap();
    b.broker.publish_message(draft(&r, "after")).await.unwrap();
    nothing_more(&mut rb).await;
    let mut rb2 = member(&hub, &b, &r, 4, "b").await;
    b.broker.publish_message(draft(&r, "back")).await.unwrap();
    assert_eq!(recv(&mut rb2).await.offset, 2, "resubscribed");
}

pub async fn presence_counts_connections(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let r = room();
    let pu = |id: &str| PresenceUser {
        user_id: user(id),
        username: id.to_uppercase(),
    };
    assert!(b.presence.add(&r, &pu("u1"), "n/1").await.unwrap());
    assert!(
        !b.presence.add(&r, &pu("u1"), "n/2").await.unwrap(),
        "second tab"
    );
    assert!(b.presence.add(&r, &pu("u2"), "m/1").await.unwrap());
    assert_eq!(b.presence.list(&r).await.unwrap(), [pu("u1"), pu("u2")]);
    assert!(!b.presence.remove(&r, &user("u1"), "n/1").await.unwrap());
    assert!(
        b.presence.remove(&r, &user("u1"), "n/2").await.unwrap(),
        "last tab"
    );
    assert!(
        !b.presence.remove(&r, &user("u1"), "n/2").await.unwrap(),
        "only once"
    );
    assert_eq!(b.presence.list(&r).await.unwrap(), [pu("u2")]);
    assert!(b.presence.list(&room()).await.unwrap().is_empty());
}

pub async fn a_first_join_is_announced_once(make: &MakeBackend) {
    let hub = Arc::new(Hub::default());
    let b = make(hub.clone(), opts(10)).await;
    let r = room();
    let mut watcher = member(&hub, &b, &r, 1, "watcher").await;
    let mut own_tab = member(&hub, &b, &r, 2, "alice").await;
    let alice = PresenceUser {
        user_id: user("alice"),
        username: "Alice".into(),
    };
    let joined = bytes::Bytes::from_static(b"{\"type\":\"user_joined\"}");
    let (first, users) = b
        .presence
        .join_announced(&r, &alice, "n/2", &*b.broker, joined.clone())
        .await
        .unwrap();
    assert!(first);
    assert_eq!(users, vec![alice.clone()]);
    let got = recv(&mut watcher).await;
    assert_eq!((&got.frame[..], got.offset), (&joined[..], 0));
    nothing_more(&mut own_tab).await;

    // A second tab of the same user is no news.
    let (first, users) = b
        .presence
        .join_announced(&r, &alice, "n/3", &*b.broker, joined)
        .await
        .unwrap();
    assert!(!first);
    assert_eq!(users, vec![alice]);
    nothing_more(&mut watcher).await;
}

pub async fn listings_are_oldest_first(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let mut users = Vec::new();
    let mut rooms = Vec::new();
    for i in 0..4 {
        users.push(b.store.create_user(&format!("u{i}")).await.unwrap());
        rooms.push(b.store.create_room(&format!("r{i}")).await.unwrap());
        // Distinct creation times.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(b.store.list_users().await.unwrap(), users);
    assert_eq!(b.store.list_rooms().await.unwrap(), rooms);
}

fn draft_from(room: &RoomId, sender: &str, content: &str, client_id: Option<&str>) -> MessageDraft {
    MessageDraft {
        room: room.clone(),
        user_id: user(sender),
        username: sender.to_uppercase(),
        content: content.into(),
        client_id: client_id.map(str::to_owned),
        trace: None,
    }
}

pub async fn publishing_is_idempotent_per_sender_and_client_id(make: &MakeBackend) {
    let hub = Arc::new(Hub::default());
    let b = make(hub.clone(), opts(10)).await;
    let r = room();
    let mut rx = member(&hub, &b, &r, 1, "reader").await;
    let first = b
        .broker
        .publish_message(draft_from(&r, "ann", "hello", Some("c1")))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.message.offset, 1);
    // A retry (even with other content) stores nothing, returns the first.
    let retry = b
        .broker
        .publish_message(draft_from(&r, "ann", "hello again", Some("c1")))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message, first.message, "the first result, as stored");
    // The same client_id from another sender, or in another room, is new.
    let other = b
        .broker
        .publish_message(draft_from(&r, "bob", "hi", Some("c1")))
        .await
        .unwrap();
    assert_eq!((other.duplicate, other.message.offset), (false, 2));
    let elsewhere = b
        .broker
        .publish_message(draft_from(&room(), "ann", "hello", Some("c1")))
        .await
        .unwrap();
    assert_eq!((elsewhere.duplicate, elsewhere.message.offset), (false, 1));
    // Without a client_id nothing is de-duplicated.
    for expected in [3, 4] {
        let p = b
            .broker
            .publish_message(draft_from(&r, "ann", "same", None))
            .await
            .unwrap();
        assert_eq!((p.duplicate, p.message.offset), (false, expected));
    }
    for expected in 1..=4u64 {
        assert_eq!(recv(&mut rx).await.offset, expected, "each stored once");
    }
    nothing_more(&mut rx).await;
    let page = b
        .history
        .read(&r, HistoryQuery::new(None, 50))
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 4);
    assert_eq!(page.messages[0], first.message);
}

pub async fn a_retry_after_the_window_is_a_new_message(make: &MakeBackend) {
    let history = HistoryOptions {
        dedupe_window: Duration::from_millis(300),
        ..HistoryOptions::new(10)
    };
    let b = make(Arc::default(), history).await;
    let r = room();
    let first = b
        .broker
        .publish_message(draft_from(&r, "ann", "x", Some("c1")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = b
        .broker
        .publish_message(draft_from(&r, "ann", "x", Some("c1")))
        .await
        .unwrap();
    assert!(!later.duplicate);
    assert_eq!(later.message.offset, first.message.offset + 1);
}

pub async fn a_retry_of_a_trimmed_message_keeps_its_first_id(make: &MakeBackend) {
    let b = make(Arc::default(), opts(2)).await;
    let r = room();
    let first = b
        .broker
        .publish_message(draft_from(&r, "ann", "first", Some("c1")))
        .await
        .unwrap();
    for i in 0..3 {
        b.broker
            .publish_message(draft_from(&r, "ann", &format!("m{i}"), None))
            .await
            .unwrap();
    }
    let retry = b
        .broker
        .publish_message(draft_from(&r, "ann", "first", Some("c1")))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (
            &retry.message.id,
            retry.message.offset,
            retry.message.timestamp
        ),
        (&first.message.id, 1, first.message.timestamp)
    );
    assert_eq!(b.history.position(&r).await.unwrap().offset, 4);
}

pub async fn re_adding_a_connection_is_no_news(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let r = room();
    let pu = PresenceUser {
        user_id: user("u1"),
        username: "U1".into(),
    };
    assert!(b.presence.add(&r, &pu, "n/1").await.unwrap());
    assert!(
        !b.presence.add(&r, &pu, "n/1").await.unwrap(),
        "same connection again"
    );
    let (first, users) = b.presence.join(&r, &pu, "n/1").await.unwrap();
    assert!(!first);
    assert_eq!(users, std::slice::from_ref(&pu));
    assert!(b.presence.remove(&r, &pu.user_id, "n/1").await.unwrap());
    assert!(b.presence.list(&r).await.unwrap().is_empty());
}

pub async fn online_users_are_counted_across_rooms(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let before = b.presence.online_count().await.unwrap();
    let (r1, r2) = (room(), room());
    let pu = |id: &str| PresenceUser {
        user_id: user(id),
        username: id.into(),
    };
    b.presence.add(&r1, &pu("a"), "n/1").await.unwrap();
    b.presence.add(&r1, &pu("a"), "n/2").await.unwrap();
    b.presence.add(&r1, &pu("b"), "n/3").await.unwrap();
    b.presence.add(&r2, &pu("a"), "n/4").await.unwrap();
    assert_eq!(b.presence.online_count().await.unwrap(), before + 3);
    b.presence.remove(&r2, &user("a"), "n/4").await.unwrap();
    assert_eq!(b.presence.online_count().await.unwrap(), before + 2);
}

pub async fn history_pages_end_at_the_byte_bound(make: &MakeBackend) {
    let b = make(Arc::default(), opts(100)).await;
    let r = room();
    let big = "x".repeat(1000);
    for i in 1..=10 {
        b.broker
            .publish_message(draft_from(&r, "ann", &format!("{i:02}{big}"), None))
            .await
            .unwrap();
    }
    let page = |since, max_bytes| HistoryQuery {
        since,
        limit: 50,
        max_bytes,
    };
    let offsets = |p: &crate::history::HistoryPage| -> Vec<u64> {
        p.messages.iter().map(|m| m.offset).collect()
    };
    let after = b
        .history
        .read(&r, page(Some(Since::Offset(0)), 3000))
        .await
        .unwrap();
    assert_eq!((offsets(&after), after.truncated), (vec![1, 2], true));
    let latest = b.history.read(&r, page(None, 3000)).await.unwrap();
    assert_eq!(
        (offsets(&latest), latest.truncated),
        (vec![9, 10], true),
        "the newest that fit"
    );
    let all = b
        .history
        .read(&r, page(Some(Since::Offset(0)), 1 << 20))
        .await
        .unwrap();
    assert_eq!((all.messages.len(), all.truncated), (10, false));
    let tiny = b
        .history
        .read(&r, page(Some(Since::Offset(4)), 10))
        .await
        .unwrap();
    assert_eq!(offsets(&tiny), [5], "one message always fits");
}

#[cfg(test)]
mod memory {
    crate::backend_suite!(|| async {
        let make = |hub, history| {
            Box::pin(async move {
                crate::Backend::memory(hub, "node-test", history, (usize::MAX, usize::MAX))
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = crate::Backend> + Send>>
        };
        ((), make)
    });
}
