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
            retention_rules_bound_rooms_by_count_bytes_and_age,
            events_skip_the_excluded_user_and_stay_in_their_room,
            presence_counts_connections,
            re_adding_a_connection_is_no_news,
            online_users_are_counted_across_rooms,
            a_first_join_is_announced_once,
            big_rooms_are_summarised_and_paged,
            summarised_changes_are_coalesced_into_diffs,
            presence_changes_record_room_member_and_user_events,
            stored_messages_record_one_event_each,
            unacknowledged_events_are_read_again_first,
            one_dispatcher_leads_at_a_time
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

/// What the backends under test record: every webhook event.
pub const RECORD_ALL: crate::events::Recording = crate::events::Recording {
    presence: true,
    messages: true,
    max_queue: 10_000,
};

pub(super) fn opts(max_len: usize) -> HistoryOptions {
    HistoryOptions::new(max_len)
}

pub(super) fn room() -> RoomId {
    RoomId::random()
}

pub(super) fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

pub(super) fn draft(room: &RoomId, content: &str) -> MessageDraft {
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
pub(super) async fn member(
    hub: &Hub,
    backend: &Backend,
    room: &RoomId,
    conn: ConnId,
    user_id: &str,
) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(1024));
    hub.join(room, Member::new(conn, user(user_id), outbox.clone()));
    backend.broker.subscribe(room).await.expect("subscribe");
    outbox
}

pub(super) async fn recv(rx: &mut Arc<Outbox>) -> Outbound {
    match tokio::time::timeout(Duration::from_secs(5), rx.next())
        .await
        .expect("a delivery within 5 s")
    {
        Next::Frame(out) => out,
        Next::Killed(reason) => panic!("connection killed: {reason:?}"),
    }
}

pub(super) async fn nothing_more(rx: &mut Arc<Outbox>) {
    let got = tokio::time::timeout(Duration::from_millis(300), rx.next()).await;
    assert!(got.is_err(), "unexpected delivery: {got:?}");
}

pub(super) fn draft_from(
    room: &RoomId,
    sender: &str,
    content: &str,
    client_id: Option<&str>,
) -> MessageDraft {
    MessageDraft {
        room: room.clone(),
        user_id: user(sender),
        username: sender.to_uppercase(),
        content: content.into(),
        client_id: client_id.map(str::to_owned),
        trace: None,
    }
}

mod events;
mod messages;
mod presence;
mod store;

pub use events::*;
pub use messages::*;
pub use presence::*;
pub use store::*;

#[cfg(test)]
mod memory {
    crate::backend_suite!(|| async {
        let make = |hub, history| {
            Box::pin(async move {
                crate::Backend::memory(
                    hub,
                    "node-test",
                    history,
                    (usize::MAX, usize::MAX),
                    super::RECORD_ALL,
                )
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = crate::Backend> + Send>>
        };
        ((), make)
    });
}
