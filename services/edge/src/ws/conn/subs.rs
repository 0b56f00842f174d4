//! The rooms a connection is in: joining one (hub, node subscription,
//! presence, position and replay) and leaving it, for the single-room
//! socket's one room and a multiplexed socket's subscriptions
//! (`subscribe`, `unsubscribe`, and the application's requests); the users
//! a multiplexed socket follows (`watch`, `unwatch`); and the in-band token
//! `refresh` every socket may send.
//!
//! A subscription is admitted by the rules a single-room socket meets at
//! its handshake (the token's `rooms` claim, the connect hook's rooms, the
//! room existing or auto-created), but a refusal is an `error` frame naming
//! the room, not a close: the socket and its other rooms go on.

use roomcast_core::history::Since;
use roomcast_core::hub::{ConnId, Control, Member};
use roomcast_core::store::{AdmitPolicy, Admitted};
use roomcast_protocol::{
    ConnectedFrame, PresenceFrame, RefreshedFrame, RoomId, RoomRef, ServerFrame, SubscribedFrame,
    Timestamp, UserEventFrame,
};

use super::{Conn, Sub};
use crate::error::{End, FrameRefusal};
use crate::ws::recovery::recovery;

impl Conn {
    /// Joins `room` as membership `id`: hub and subscription, presence,
    /// the first frame (`connected` for a single-room socket, `subscribed`
    /// otherwise), `presence`, recovery replay, and `user_joined` to the
    /// others. On an error the membership stays in `subs` for
    /// [`leave`](Self::leave) to undo.
    pub(super) async fn join(
        &mut self,
        room: RoomId,
        since: Option<String>,
        id: ConnId,
    ) -> Result<(), End> {
        let app = self.app.clone();
        let member = Member::new(id, self.admission.user.user_id.clone(), self.outbox.clone());
        let at = self.subs.partition_point(|s| s.id < id);
        self.subs.insert(
            at,
            Sub {
                id,
                room: room.clone(),
                conn_key: roomcast_core::presence::conn_key(&app.node_id, id),
                seen_offset: 0,
                in_hub: true,
                in_presence: false,
            },
        );
        // Joining the hub first means every publish this node receives from
        // here on is queued for us. `subscribe` returns once the node
        // receives the room's publishes (at once if it already does), so
        // the history read below cannot leave a gap. Every connection asks,
        // not only the room's first: a second one must not read its position
        // while the first one's subscription is still being set up.
        app.hub.join(&room, member);
        app.backend.broker.subscribe(&room).await?;
        // Presence (with the `user_joined` announcement when this is the
        // user's first connection in the room) and the recovery read are
        // independent: both go to the backend at once.
        let joined = ServerFrame::UserJoined(self.user_event(&room)).to_json();
        let backend = &app.backend;
        let conn_key = self.subs[at].conn_key.clone();
        // A big room's first page is read once per diff generation on this
        // node, not once per newcomer (see `roomcast_core::hub::pages`).
        let generation = app.hub.presence_generation();
        let cached = app.hub.cached_page(&room);
        let mut summary = app.settings.presence_summary();
        if cached.is_some() {
            summary.page = 0;
        }
        let join = backend.presence.join_announced(
            &room,
            &self.admission.user,
            &conn_key,
            summary,
            &*backend.broker,
            joined.into(),
        );
        let recover = recovery(&app, &room, since.as_deref());
        let (joined, start) = tokio::join!(join, recover);
        // Joined even if the recovery read failed: `leave` must then undo it.
        self.subs[at].in_presence = joined.is_ok();
        let mut joined = joined?;
        if joined.count > summary.above {
            match &cached {
                Some(page) => joined.users = page.to_vec(),
                None => app.hub.cache_page(&room, generation, &joined.users),
            }
        }
        // This membership holds the room's presence from here on: settled
        // members get net presence diffs (see `hub::diffs`).
        app.hub.settle(&room, id);
        let start = start?;
        let (position, recovered) = (start.position, start.recovered);
        self.subs[at].seen_offset = position.offset;
        let first = if self.single {
            ServerFrame::Connected(ConnectedFrame {
                room_id: Some(room.clone()),
                user_id: self.admission.user.user_id.clone(),
                username: self.admission.user.username.clone(),
                node_id: app.node_id.to_string(),
                offset: Some(position.offset),
                epoch: Some(position.epoch),
                recovered,
            })
        } else {
            ServerFrame::Subscribed(SubscribedFrame {
                room_id: room.clone(),
                offset: position.offset,
                epoch: position.epoch,
                recovered,
            })
        };
        self.feed(first.to_json()).await?;
        self.feed(
            ServerFrame::Presence(PresenceFrame {
                room_id: room.clone(),
                count: joined.is_page().then_some(joined.count),
                users: joined.users,
            })
            .to_json(),
        )
        .await?;
        // The replay, a bounded page at a time; live messages meanwhile wait
        // in the outbox and those the replay already sent are skipped.
        let (mut page, mut rest) = (start.first, start.rest);
        while !page.is_empty() {
            for m in &page {
                let sub = &mut self.subs[at];
                sub.seen_offset = sub.seen_offset.max(m.offset);
                self.feed(m.to_frame_json()).await?;
            }
            self.flush().await?;
            page = rest.next(&app, &room).await?;
        }
        self.flush().await?;
        if recovered == Some(false) && since.as_deref().is_some_and(|s| Since::parse(s).is_err()) {
            let room = (!self.single).then_some(room);
            self.send_refusal(FrameRefusal::BadSince, None, room)
                .await?;
        }
        Ok(())
    }

    /// Leaves the membership at `subs[at]`: the hub (unsubscribing the node
    /// from the room when it was its last member), presence, and its
    /// announcement (`user_left`, or a big room's diff) if this was the
    /// user's last connection in the room anywhere.
    pub(super) async fn leave(&mut self, at: usize) {
        let sub = self.subs.remove(at);
        let app = self.app.clone();
        let room = &sub.room;
        if sub.in_hub
            && app.hub.leave(room, sub.id)
            && let Err(e) = app.backend.broker.unsubscribe(room).await
        {
            tracing::warn!(error = %e, "unsubscribe failed");
        }
        if sub.in_presence {
            let left = ServerFrame::UserLeft(self.user_event(room)).to_json();
            let backend = &app.backend;
            let leave = backend.presence.leave_announced(
                room,
                &self.admission.user,
                &sub.conn_key,
                app.settings.presence_summary(),
                &*backend.broker,
                left.into(),
            );
            if let Err(e) = leave.await {
                tracing::warn!(error = %e, "presence not updated on leave");
            }
        }
    }

    pub(super) fn user_event(&self, room: &RoomId) -> UserEventFrame {
        UserEventFrame {
            room_id: room.clone(),
            user_id: self.admission.user.user_id.clone(),
            username: self.admission.user.username.clone(),
            timestamp: Timestamp::now(),
        }
    }
}

impl Conn {
    /// The application's request (`POST /users/{id}/subscribe` or
    /// `unsubscribe`): carried out as if the client had asked, without the
    /// token's and the connect hook's room checks (the application decides),
    /// and a no-op when already done.
    pub(super) async fn on_control(&mut self, request: Control) -> Result<(), End> {
        match request {
            Control::Subscribe(room) => {
                if self.subs.iter().any(|s| s.room == room) {
                    return Ok(());
                }
                self.subscribe_as(room, None, true).await
            }
            Control::Unsubscribe(room) => {
                if !self.subs.iter().any(|s| s.room == room) {
                    return Ok(());
                }
                self.unsubscribe(room).await
            }
        }
    }

    pub(super) async fn subscribe(
        &mut self,
        room: RoomId,
        since: Option<String>,
    ) -> Result<(), End> {
        self.subscribe_as(room, since, false).await
    }

    /// Subscribes as the client (`by_app` false) or the application asked.
    async fn subscribe_as(
        &mut self,
        room: RoomId,
        since: Option<String>,
        by_app: bool,
    ) -> Result<(), End> {
        let tag = Some(room.clone());
        if let Err(why) = self.may_subscribe(&room, by_app).await {
            return self.refuse(why, None, tag).await;
        }
        let id = self.app.next_conn_id();
        match self.join(room, since.filter(|s| !s.is_empty()), id).await {
            Ok(()) => Ok(()),
            // The backend failed this room: undo it, keep the socket.
            Err(End::Backend) => {
                if let Ok(at) = self.subs.binary_search_by_key(&id, |s| s.id) {
                    self.leave(at).await;
                }
                self.refuse(FrameRefusal::SubscribeFailed, None, tag).await
            }
            Err(end) => Err(end),
        }
    }

    /// Whether this socket may subscribe to `room` now; creates the room
    /// if auto-create allows it.
    async fn may_subscribe(&mut self, room: &RoomId, by_app: bool) -> Result<(), FrameRefusal> {
        if self.single {
            return Err(FrameRefusal::NotAllowed(
                "this socket is in one room: open a multiplexed socket (/ws) to subscribe",
            ));
        }
        if self.subs.iter().any(|s| s.room == *room) {
            return Err(FrameRefusal::NotAllowed("already subscribed to this room"));
        }
        let max = self.app.settings.websocket.max_subscriptions;
        if self.subs.len() >= max {
            return Err(FrameRefusal::TooManySubscriptions(max));
        }
        if let Some(rooms) = &self.admission.token_rooms
            && !rooms.contains(room)
            && !by_app
        {
            return Err(FrameRefusal::NotAllowed("room not allowed by the token"));
        }
        if let Some(rooms) = &self.admission.hook_rooms
            && !rooms.iter().any(|r| r == room.as_str())
            && !by_app
        {
            return Err(FrameRefusal::NotAllowed(
                "room not allowed by the application",
            ));
        }
        let policy = AdmitPolicy {
            create_room: self.app.settings.websocket_auto_rooms(),
            create_user_as: Some(self.admission.user.username.clone()),
        };
        let user = &self.admission.user.user_id;
        match self.app.backend.store.admit(room, user, &policy).await {
            Ok(Admitted::Member(_)) => Ok(()),
            Ok(Admitted::NoRoom) => Err(FrameRefusal::NotFound("room")),
            Ok(Admitted::NoUser) => Err(FrameRefusal::NotFound("user")),
            Err(e) => {
                tracing::warn!(error = %e, "subscription not admitted");
                Err(FrameRefusal::SubscribeFailed)
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, room: RoomId) -> Result<(), End> {
        let tag = Some(room.clone());
        if self.single {
            let why = FrameRefusal::NotAllowed("this socket is in one room: close it to leave");
            return self.refuse(why, None, tag).await;
        }
        let Some(at) = self.subs.iter().position(|s| s.room == room) else {
            let why = FrameRefusal::NotSubscribed("not subscribed to this room");
            return self.refuse(why, None, tag).await;
        };
        self.leave(at).await;
        self.send_frame(ServerFrame::Unsubscribed(RoomRef { room_id: room }))
            .await
    }

    /// Takes a fresh token for the same user: the socket may send again
    /// past the old token's expiry. The new token's `rooms` claim applies
    /// to the rooms the socket is in: a multiplexed socket leaves those it
    /// no longer allows (`unsubscribed`); a single-room socket whose room
    /// it does not allow keeps its old token.
    pub(super) async fn refresh(&mut self, token: &str) -> Result<(), End> {
        let refuse = |why: &str| FrameRefusal::BadRefresh(why.to_owned());
        if !self.app.auth.enabled() {
            let why = refuse("auth is off: there is no token to refresh");
            return self.refuse(why, None, None).await;
        }
        let id = match self.app.auth.verify(Some(token)) {
            Ok(id) => id,
            Err(e) => return self.refuse(refuse(&e.to_string()), None, None).await,
        };
        if id.user_id != self.admission.user.user_id {
            let why = refuse("the token is for another user");
            return self.refuse(why, None, None).await;
        }
        if self.single
            && let Some(own) = self.subs.first()
            && !id.may_join(&own.room)
        {
            let why = refuse("the token does not allow this socket's room");
            return self.refuse(why, None, None).await;
        }
        self.admission.token_expires_at = id.expires_at;
        self.admission.token_rooms = id.rooms.clone();
        if !self.single {
            while let Some(at) = self.subs.iter().position(|s| !id.may_join(&s.room)) {
                let room = self.subs[at].room.clone();
                self.leave(at).await;
                self.send_frame(ServerFrame::Unsubscribed(RoomRef { room_id: room }))
                    .await?;
            }
        }
        self.send_frame(ServerFrame::Refreshed(RefreshedFrame {
            expires_at: id.expires_at,
        }))
        .await
    }
}

impl Conn {
    /// Follows these users' status: a `status` for each now, then one per
    /// change (the hub is told by the presence backend, cluster-wide).
    pub(super) async fn watch(&mut self, users: Vec<roomcast_protocol::UserId>) -> Result<(), End> {
        if self.single {
            let why = FrameRefusal::NotAllowed(
                "this socket is in one room: open a multiplexed socket (/ws) to watch users",
            );
            return self.refuse(why, None, None).await;
        }
        let max = self.app.settings.websocket.max_watched;
        let new: Vec<_> = users
            .into_iter()
            .filter(|u| !self.watched.contains(u))
            .collect();
        if self.watched.len() + new.len() > max {
            return self
                .refuse(FrameRefusal::TooManyWatched(max), None, None)
                .await;
        }
        for user in new {
            // Followed first, then read: a change in between comes after
            // the (possibly older) answer, so the last frame is the truth.
            self.app.hub.watch(&user, self.conn_id, self.outbox.clone());
            self.watched.insert(user.clone());
            let online = match self.app.backend.presence.is_online(&user).await {
                Ok(online) => online,
                Err(e) => {
                    tracing::warn!(error = %e, "status not read");
                    self.unwatch(std::slice::from_ref(&user));
                    return self.refuse(FrameRefusal::SubscribeFailed, None, None).await;
                }
            };
            self.feed(
                ServerFrame::Status(roomcast_protocol::StatusFrame {
                    user_id: user,
                    online,
                })
                .to_json(),
            )
            .await?;
        }
        self.flush().await
    }

    pub(super) fn unwatch(&mut self, users: &[roomcast_protocol::UserId]) {
        for user in users {
            if self.watched.remove(user) {
                self.app.hub.unwatch(user, self.conn_id);
            }
        }
    }
}
