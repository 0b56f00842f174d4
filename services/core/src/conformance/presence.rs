//! Checks of the suite: presence and ephemeral events.

use super::*;
use crate::presence::Summary;

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
    let joined = b
        .presence
        .join(&r, &pu, "n/1", Summary::default())
        .await
        .unwrap();
    assert!(!joined.first);
    assert_eq!(joined.users, std::slice::from_ref(&pu));
    assert_eq!(joined.count, 1);
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
    let s = Summary::default();
    let got = b
        .presence
        .join_announced(&r, &alice, "n/2", s, &*b.broker, joined.clone())
        .await
        .unwrap();
    assert!(got.first);
    assert_eq!(got.users, vec![alice.clone()]);
    let got = recv(&mut watcher).await;
    assert_eq!((&got.frame[..], got.offset), (&joined[..], 0));
    nothing_more(&mut own_tab).await;

    // A second tab of the same user is no news.
    let got = b
        .presence
        .join_announced(&r, &alice, "n/3", s, &*b.broker, joined)
        .await
        .unwrap();
    assert!(!got.first);
    assert_eq!(got.users, vec![alice.clone()]);
    nothing_more(&mut watcher).await;

    // Leaving is announced to everyone on the last tab only.
    let left = bytes::Bytes::from_static(b"{\"type\":\"user_left\"}");
    let last = |conn| {
        b.presence
            .leave_announced(&r, &alice, conn, s, &*b.broker, left.clone())
    };
    assert!(!last("n/2").await.unwrap());
    nothing_more(&mut watcher).await;
    assert!(last("n/3").await.unwrap());
    assert_eq!(&recv(&mut watcher).await.frame[..], &left[..]);
    assert_eq!(&recv(&mut own_tab).await.frame[..], &left[..]);
}

fn numbered(i: usize) -> PresenceUser {
    PresenceUser {
        user_id: user(&format!("u{i:02}")),
        username: format!("User {i}"),
    }
}

pub async fn big_rooms_are_summarised_and_paged(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let r = room();
    let s = Summary { above: 3, page: 2 };
    for i in 1..=3 {
        let got = b
            .presence
            .join(&r, &numbered(i), &format!("n/{i}"), s)
            .await
            .unwrap();
        assert_eq!(got.users, (1..=i).map(numbered).collect::<Vec<_>>());
        assert!(!got.is_page());
    }
    for i in 4..=5 {
        let got = b
            .presence
            .join(&r, &numbered(i), &format!("n/{i}"), s)
            .await
            .unwrap();
        assert_eq!(
            (got.users, got.count),
            (vec![numbered(1), numbered(2)], i as u64)
        );
    }
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let (page, count) = b.presence.page(&r, after.as_ref(), 2).await.unwrap();
        assert_eq!(count, 5);
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        pages.push(page);
    }
    let want: Vec<Vec<PresenceUser>> = vec![
        vec![numbered(1), numbered(2)],
        vec![numbered(3), numbered(4)],
        vec![numbered(5)],
    ];
    assert_eq!(pages, want);
    assert_eq!(
        b.presence.page(&room(), None, 2).await.unwrap(),
        (vec![], 0)
    );
}

/// Flushes the hub's presence diffs once `users` users' changes in `r` are
/// pending, and returns what `rx` got.
async fn flushed(hub: &Hub, r: &RoomId, users: usize, rx: &mut Arc<Outbox>) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.pending_presence(r) < users {
        assert!(
            tokio::time::Instant::now() < deadline,
            "changes not received"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hub.flush_presence(100);
    serde_json::from_slice(&recv(rx).await.frame).unwrap()
}

pub async fn summarised_changes_are_coalesced_into_diffs(make: &MakeBackend) {
    let hub = Arc::new(Hub::default());
    let b = make(hub.clone(), opts(10)).await;
    let r = room();
    let mut watcher = member(&hub, &b, &r, 100, "watcher").await;
    let s = Summary { above: 1, page: 10 };
    let exact = |t: &'static str| bytes::Bytes::from(format!("{{\"type\":\"{t}\"}}"));
    let join = |i: usize| {
        let (b, r) = (b.clone(), r.clone());
        async move {
            b.presence
                .join_announced(
                    &r,
                    &numbered(i),
                    &format!("n/{i}"),
                    s,
                    &*b.broker,
                    exact("user_joined"),
                )
                .await
                .unwrap()
        }
    };
    let leave = |i: usize| {
        let (b, r) = (b.clone(), r.clone());
        async move {
            b.presence
                .leave_announced(
                    &r,
                    &numbered(i),
                    &format!("n/{i}"),
                    s,
                    &*b.broker,
                    exact("user_left"),
                )
                .await
                .unwrap()
        }
    };
    // The first member of a room summarised above 1 is exact news.
    join(1).await;
    assert_eq!(
        &recv(&mut watcher).await.frame[..],
        &exact("user_joined")[..]
    );
    // The second makes it summarised: a diff, sent at the flush. The
    // watcher's snapshot has not come back yet, so it gets last states.
    join(2).await;
    join(3).await;
    nothing_more(&mut watcher).await;
    let diff = flushed(&hub, &r, 2, &mut watcher).await;
    assert_eq!(diff["type"], "presence_diff");
    assert_eq!(
        diff["joins"],
        serde_json::json!([
        {"user_id":"u02","username":"User 2"},{"user_id":"u03","username":"User 3"}])
    );
    assert_eq!(
        (diff["leaves"].clone(), diff["count"].clone()),
        (serde_json::json!([]), 3.into())
    );

    // Settled: a leave and a rejoin inside one interval is no news, but a
    // newcomer who has not settled still hears of it.
    hub.settle(&r, 100);
    hub.flush_presence(100);
    let mut newcomer = member(&hub, &b, &r, 101, "newcomer").await;
    leave(2).await;
    join(2).await;
    leave(3).await;
    join(4).await;
    let diff = flushed(&hub, &r, 3, &mut watcher).await;
    assert_eq!(
        diff["joins"],
        serde_json::json!([{"user_id":"u04","username":"User 4"}])
    );
    assert_eq!(
        diff["leaves"],
        serde_json::json!([{"user_id":"u03","username":"User 3"}])
    );
    assert_eq!(diff["count"], 3);
    let fresh: serde_json::Value =
        serde_json::from_slice(&recv(&mut newcomer).await.frame).unwrap();
    assert_eq!(
        fresh["joins"].as_array().unwrap().len(),
        2,
        "u02 and u04: {fresh}"
    );
    nothing_more(&mut watcher).await;
}
