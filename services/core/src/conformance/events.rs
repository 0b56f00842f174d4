//! Checks of the suite: webhook events, recorded with the changes they
//! report, and the queue they wait in.

use super::*;
use crate::events::{EventName, EventQueue, Queued};

/// Every event waiting, acknowledged: `(name, room, user, username)`.
async fn drain(
    q: &dyn EventQueue,
) -> Vec<(EventName, Option<String>, Option<String>, Option<String>)> {
    let batch = q.read(1000).await.expect("read events");
    let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    q.ack(&ids).await.expect("ack events");
    batch.into_iter().map(facts).collect()
}

fn facts(q: Queued) -> (EventName, Option<String>, Option<String>, Option<String>) {
    let e = q.event;
    (
        e.name,
        e.room.map(|r| r.to_string()),
        e.user.map(|u| u.to_string()),
        e.username,
    )
}

pub async fn presence_changes_record_room_member_and_user_events(make: &MakeBackend) {
    use EventName::*;
    let b = make(Arc::default(), opts(10)).await;
    let q = b
        .events
        .clone()
        .expect("the suite's backends record events");
    let (r1, r2) = (room(), room());
    let (s1, s2) = (Some(r1.to_string()), Some(r2.to_string()));
    let u = Some("u1".to_owned());
    let name = Some("U1".to_owned());
    let pu = PresenceUser {
        user_id: user("u1"),
        username: "U1".into(),
    };
    assert!(!b.presence.is_online(&pu.user_id).await.unwrap());
    b.presence.add(&r1, &pu, "n/1").await.unwrap();
    assert!(b.presence.is_online(&pu.user_id).await.unwrap());
    assert_eq!(
        drain(&*q).await,
        [
            (UserOnline, None, u.clone(), None),
            (RoomOccupied, s1.clone(), None, None),
            (MemberJoined, s1.clone(), u.clone(), name.clone()),
        ]
    );
    // A second tab, and the same connection again: no news.
    b.presence.add(&r1, &pu, "n/2").await.unwrap();
    b.presence.add(&r1, &pu, "n/2").await.unwrap();
    assert_eq!(drain(&*q).await, []);
    // Another room: the user was online already.
    b.presence
        .join(&r2, &pu, "n/3", crate::presence::Summary::default())
        .await
        .unwrap();
    assert_eq!(
        drain(&*q).await,
        [
            (RoomOccupied, s2.clone(), None, None),
            (MemberJoined, s2.clone(), u.clone(), name.clone()),
        ]
    );
    b.presence.remove(&r1, &pu.user_id, "n/1").await.unwrap();
    b.presence.remove(&r1, &pu.user_id, "n/1").await.unwrap();
    assert_eq!(drain(&*q).await, [], "one tab left in the room");
    b.presence.remove(&r1, &pu.user_id, "n/2").await.unwrap();
    assert_eq!(
        drain(&*q).await,
        [
            (MemberLeft, s1.clone(), u.clone(), name.clone()),
            (RoomVacated, s1, None, None),
        ]
    );
    assert!(
        b.presence.is_online(&pu.user_id).await.unwrap(),
        "in r2 still"
    );
    b.presence.remove(&r2, &pu.user_id, "n/3").await.unwrap();
    assert!(!b.presence.is_online(&pu.user_id).await.unwrap());
    assert_eq!(
        drain(&*q).await,
        [
            (MemberLeft, s2.clone(), u.clone(), name),
            (RoomVacated, s2, None, None),
            (UserOffline, None, u, None),
        ]
    );
}

pub async fn stored_messages_record_one_event_each(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let q = b
        .events
        .clone()
        .expect("the suite's backends record events");
    let r = room();
    let first = b.broker.publish_message(draft(&r, "hello")).await.unwrap();
    let again = b.broker.publish_message(draft(&r, "hello")).await.unwrap();
    assert!(again.duplicate);
    let batch = q.read(10).await.unwrap();
    assert_eq!(
        batch.len(),
        1,
        "a retried publish records nothing: {batch:?}"
    );
    let e = &batch[0];
    assert_eq!(e.event.name, EventName::MessageStored);
    assert_eq!(e.event.room.as_ref(), Some(&r));
    let frame: serde_json::Value =
        serde_json::from_str(e.event.message.as_deref().expect("the frame")).unwrap();
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["id"], first.message.id);
    assert_eq!(frame["offset"], 1);
    assert_eq!(frame["content"], "hello");
    // The body carries the frame as JSON, not as a string.
    let json = serde_json::to_value(e.json()).unwrap();
    assert_eq!(json["name"], "message_stored");
    assert_eq!(json["message"]["content"], "hello");
    assert_eq!(json["id"], e.id);
}

pub async fn unacknowledged_events_are_read_again_first(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let q = b
        .events
        .clone()
        .expect("the suite's backends record events");
    let r = room();
    for i in 0..5 {
        b.broker
            .publish_message(draft(&r, &format!("m{i}")))
            .await
            .unwrap();
    }
    assert_eq!(q.waiting().await.unwrap(), 5);
    let ids = |batch: &[Queued]| batch.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let first = q.read(2).await.unwrap();
    assert_eq!(first.len(), 2);
    // A reader that died without acknowledging: the next read gets the
    // same events, same ids, before anything newer.
    let again = q.read(2).await.unwrap();
    assert_eq!(ids(&again), ids(&first));
    q.ack(&ids(&first)).await.unwrap();
    let rest = q.read(10).await.unwrap();
    assert_eq!(rest.len(), 3);
    let all: Vec<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
    let mut sorted = all.clone();
    sorted.sort_by_key(|id| {
        let (ms, n) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), n.parse::<u64>().unwrap())
    });
    assert_eq!(all, sorted, "ids increase in recording order");
    let contents: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|e| {
            let f: serde_json::Value =
                serde_json::from_str(e.event.message.as_deref().unwrap()).unwrap();
            f["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(contents, ["m0", "m1", "m2", "m3", "m4"]);
    q.ack(&ids(&rest)).await.unwrap();
    assert_eq!(q.waiting().await.unwrap(), 0);
    assert!(q.read(10).await.unwrap().is_empty());
}

pub async fn one_dispatcher_leads_at_a_time(make: &MakeBackend) {
    let b = make(Arc::default(), opts(10)).await;
    let q = b
        .events
        .clone()
        .expect("the suite's backends record events");
    let ttl = Duration::from_millis(400);
    assert!(q.lead("a", ttl).await.unwrap());
    assert!(!q.lead("b", ttl).await.unwrap());
    assert!(q.lead("a", ttl).await.unwrap(), "renewed by its holder");
    // The holder stops renewing (it died): another takes over.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(q.lead("b", ttl).await.unwrap());
    assert!(!q.lead("a", ttl).await.unwrap());
}
