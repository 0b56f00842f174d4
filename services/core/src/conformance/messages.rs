//! Checks of the suite: publishing and history: offsets, order, idempotency, pages.

use super::*;

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

pub async fn retention_rules_bound_rooms_by_count_bytes_and_age(make: &MakeBackend) {
    let mut options = opts(100);
    options.retention =
        crate::retention::Rules::parse("small-*: len=3; bytes-*: bytes=1000; aged-*: age=1s")
            .unwrap();
    let b = make(Arc::default(), options).await;
    let named = |prefix: &str| RoomId::parse(&format!("{prefix}-{}", RoomId::random())).unwrap();
    let kept = |page: crate::history::HistoryPage| -> Vec<u64> {
        page.messages.iter().map(|m| m.offset).collect()
    };
    let latest = HistoryQuery::new(None, 1000);
    let publish = |r: RoomId, content: String| {
        let b = b.clone();
        async move { b.broker.publish_message(draft(&r, &content)).await.unwrap() }
    };

    let (small, other) = (named("small"), named("lobby"));
    for i in 0..5 {
        publish(small.clone(), format!("s{i}")).await;
        publish(other.clone(), format!("o{i}")).await;
    }
    assert_eq!(
        kept(b.history.read(&small, latest).await.unwrap()),
        [3, 4, 5]
    );
    assert_eq!(
        kept(b.history.read(&other, latest).await.unwrap()),
        [1, 2, 3, 4, 5],
        "a room no rule names keeps the default count"
    );

    // ~500 bytes a message: two fit in 1000.
    let big = named("bytes");
    for i in 0..10 {
        publish(big.clone(), format!("{i}{}", "x".repeat(300))).await;
    }
    let offsets = kept(b.history.read(&big, latest).await.unwrap());
    assert!(
        (1..=3).contains(&offsets.len()) && offsets.last() == Some(&10),
        "kept within the byte bound, newest last: {offsets:?}"
    );
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");

    // Past the age bound messages go: on the next publish, and on a read
    // of a room nobody publishes in any more.
    let (aged, quiet) = (named("aged"), named("aged"));
    publish(aged.clone(), "a1".into()).await;
    publish(aged.clone(), "a2".into()).await;
    publish(quiet.clone(), "q1".into()).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    publish(aged.clone(), "a3".into()).await;
    assert_eq!(kept(b.history.read(&aged, latest).await.unwrap()), [3]);
    let page = b
        .history
        .read(&quiet, HistoryQuery::new(Some(Since::Offset(0)), 100))
        .await
        .unwrap();
    assert!(page.messages.is_empty(), "{:?}", page.messages);
    assert!(
        !page.complete,
        "the reader missed a message it can no longer get"
    );
    assert_eq!(page.position.offset, 1, "offsets go on");
    let next = publish(quiet.clone(), "q2".into()).await;
    assert_eq!(next.message.offset, 2);
}
