//! Checks of the suite: the directory: users, rooms, memberships, admission.

use super::*;

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
    let summary = crate::presence::Summary::default();
    let joined = b
        .presence
        .join(&r, &pu(&u, "Newbie"), "n/9", summary)
        .await
        .unwrap();
    assert!(joined.first);
    assert_eq!(joined.users, [pu(&u, "Newbie")]);
    let joined = b
        .presence
        .join(&r, &pu(&u, "Newbie"), "n/10", summary)
        .await
        .unwrap();
    assert!(!joined.first && joined.users.len() == 1, "a second tab");
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
