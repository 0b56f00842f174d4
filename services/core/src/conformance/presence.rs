//! Checks of the suite: presence and ephemeral events.

use super::*;

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
