//! The rooms' state machine against an in-memory stream whose reads can be
//! paused or failed per room: one room's read never holds up another's
//! publishes, a room's own publishes wait for its read, failures are
//! retried for that room alone.

use std::collections::HashMap;

use parking_lot::Mutex;
use roomcast_core::hub::{ConnId, Member};
use roomcast_core::outbox::Outbox;
use roomcast_protocol::UserId;

use async_trait::async_trait;
use bytes::Bytes;
use roomcast_core::envelope::Envelope;
use roomcast_core::history::StreamPosition;
use roomcast_protocol::Timestamp;

use super::*;

/// A room's epoch and stored `(offset, frame)`s.
type Stream = (String, Vec<(u64, String)>);

#[derive(Default)]
struct Fake {
    /// Each room's epoch and stored frames.
    streams: Mutex<HashMap<RoomId, Stream>>,
    /// A room whose reads wait for a permit.
    gates: Mutex<HashMap<RoomId, Arc<Semaphore>>>,
    /// Reads of a room still to fail.
    failing: Mutex<HashMap<RoomId, u32>>,
}

impl Fake {
    fn store(&self, room: &RoomId, epoch: &str, offsets: std::ops::RangeInclusive<u64>) {
        let mut streams = self.streams.lock();
        let s = streams
            .entry(room.clone())
            .or_insert_with(|| (epoch.into(), Vec::new()));
        s.0 = epoch.into();
        s.1.extend(offsets.map(|o| (o, format!("{{\"offset\":{o}}}"))));
    }

    fn gate(&self, room: &RoomId) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.gates.lock().insert(room.clone(), gate.clone());
        gate
    }

    async fn pass(
        &self,
        room: &RoomId,
    ) -> Result<(StreamPosition, Vec<(u64, String)>), BackendError> {
        let gate = self.gates.lock().get(room).cloned();
        if let Some(g) = gate {
            g.acquire().await.expect("open").forget();
        }
        if let Some(n) = self.failing.lock().get_mut(room).filter(|n| **n > 0) {
            *n -= 1;
            return Err(BackendError::Unavailable("read failed".into()));
        }
        let streams = self.streams.lock();
        let (epoch, frames) = streams
            .get(room)
            .cloned()
            .unwrap_or_else(|| ("e1".into(), Vec::new()));
        let pos = StreamPosition {
            offset: frames.last().map_or(0, |f| f.0),
            epoch,
        };
        Ok((pos, frames))
    }
}

#[async_trait]
impl Streams for Fake {
    async fn position(&self, room: &RoomId) -> Result<StreamPosition, BackendError> {
        Ok(self.pass(room).await?.0)
    }

    async fn frames_after(
        &self,
        room: &RoomId,
        offset: u64,
        count: usize,
    ) -> Result<(StreamPosition, Vec<(u64, String)>), BackendError> {
        let (pos, frames) = self.pass(room).await?;
        let after = frames
            .into_iter()
            .filter(|f| f.0 > offset)
            .take(count)
            .collect();
        Ok((pos, after))
    }
}

struct Setup {
    fake: Arc<Fake>,
    hub: Arc<Hub>,
    rooms: Rooms<Fake>,
    done: mpsc::UnboundedReceiver<Done>,
}

fn setup() -> Setup {
    let fake = Arc::new(Fake::default());
    let hub = Arc::new(Hub::default());
    let (rooms, done) = Rooms::new(fake.clone(), hub.clone(), Arc::new(Shared::default()));
    Setup {
        fake,
        hub,
        rooms,
        done,
    }
}

fn room(name: &str) -> RoomId {
    RoomId::parse(name).unwrap()
}

/// A member of `room`, and what it receives.
fn member(hub: &Hub, room: &RoomId, conn: ConnId) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(64));
    hub.join(
        room,
        Member::new(
            conn,
            UserId::parse(&format!("u{conn}")).unwrap(),
            outbox.clone(),
        ),
    );
    outbox
}

fn received(outbox: &Outbox) -> Vec<u64> {
    std::iter::from_fn(|| outbox.try_pop().map(|o| o.offset)).collect()
}

fn publish(room: &RoomId, epoch: &str, offset: u64) -> Received {
    Received {
        envelope: Envelope {
            room: room.clone(),
            frame: Bytes::from(format!("{{\"offset\":{offset}}}")),
            offset,
            exclude_user: None,
            origin_node: "other".into(),
            published_at: Timestamp::now(),
            trace: None,
        },
        epoch: epoch.into(),
    }
}

impl Setup {
    /// Asks for `room` as a joining connection would; its answer.
    fn ask(&mut self, room: &RoomId) -> oneshot::Receiver<Result<(), BackendError>> {
        let (tx, rx) = oneshot::channel();
        self.rooms.request(room, tx);
        rx
    }

    /// Subscribes `room` as its first joiner would, until it is answered.
    async fn subscribed(&mut self, room: &RoomId) {
        let answer = self.ask(room);
        self.rooms.active(std::slice::from_ref(room));
        self.next_done().await;
        answer.await.unwrap().unwrap();
    }

    /// Hands the next finished read to the rooms; the channels to leave.
    async fn next_done(&mut self) -> Vec<RoomId> {
        let done = self.done.recv().await.expect("a read finishes");
        self.rooms.done(done)
    }
}

#[tokio::test]
async fn a_room_whose_read_is_slow_holds_up_no_other_room() {
    let mut s = setup();
    let (slow, quick) = (room("slow"), room("quick"));
    let (slow_box, quick_box) = (member(&s.hub, &slow, 1), member(&s.hub, &quick, 2));
    let gate = s.fake.gate(&slow);
    let (mut slow_answer, quick_answer) = (s.ask(&slow), s.ask(&quick));
    assert!(s.rooms.active(&[slow.clone(), quick.clone()]).is_empty());

    // The quick room's read finishes while the slow one's is paused.
    s.next_done().await;
    assert!(quick_answer.await.unwrap().is_ok());
    assert!(slow_answer.try_recv().is_err(), "still waiting");
    s.rooms.publish(publish(&quick, "e1", 1));
    s.rooms.publish(publish(&slow, "e1", 1));
    assert_eq!(received(&quick_box), [1], "delivered at once");
    assert!(received(&slow_box).is_empty(), "waits for its own read");

    gate.add_permits(1);
    s.next_done().await;
    assert!(slow_answer.await.unwrap().is_ok());
    assert_eq!(received(&slow_box), [1], "then delivered, in order");
}

#[tokio::test]
async fn a_gap_is_filled_from_the_stream_before_newer_messages() {
    let mut s = setup();
    let r = room("r");
    let out = member(&s.hub, &r, 1);
    s.subscribed(&r).await;

    // Offsets 1..=4 were published while the subscription was down.
    s.fake.store(&r, "e1", 1..=5);
    s.rooms.publish(publish(&r, "e1", 5));
    s.rooms.publish(publish(&r, "e1", 6));
    s.rooms.publish(publish(&r, "e1", 5));
    assert!(received(&out).is_empty(), "the gap comes first");
    s.next_done().await;
    assert_eq!(received(&out), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        BackendStats::get(&s.rooms.shared.stats.history_backfilled),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_read_is_retried_for_that_room_alone() {
    let mut s = setup();
    let r = room("r");
    let _out = member(&s.hub, &r, 1);
    s.fake.failing.lock().insert(r.clone(), 2);
    let answer = s.ask(&r);
    s.rooms.active(std::slice::from_ref(&r));
    for _ in 0..3 {
        assert!(s.next_done().await.is_empty());
    }
    assert!(answer.await.unwrap().is_ok(), "the third read succeeded");
    assert_eq!(
        BackendStats::get(&s.rooms.shared.stats.room_read_failures),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_room_that_cannot_be_read_is_refused_and_left() {
    let mut s = setup();
    let r = room("r");
    let _out = member(&s.hub, &r, 1);
    s.fake.failing.lock().insert(r.clone(), u32::MAX);
    let answer = s.ask(&r);
    s.rooms.active(std::slice::from_ref(&r));
    let mut leave = Vec::new();
    for _ in 0..ATTEMPTS {
        leave = s.next_done().await;
    }
    assert_eq!(leave, std::slice::from_ref(&r), "its channel is left");
    assert!(answer.await.unwrap().is_err(), "its joiner is refused");
    assert_eq!(s.rooms.len(), 0);
}

#[tokio::test]
async fn a_reconnect_catches_up_every_room_before_its_new_publishes() {
    let mut s = setup();
    let r = room("r");
    let out = member(&s.hub, &r, 1);
    s.fake.store(&r, "e1", 1..=2);
    s.subscribed(&r).await;

    let why = BackendError::Unavailable("gone".into());
    s.rooms.disconnected(&why);
    s.fake.store(&r, "e1", 3..=4);
    assert_eq!(s.rooms.reconnected(), std::slice::from_ref(&r));
    s.rooms.publish(publish(&r, "e1", 5));
    s.fake.store(&r, "e1", 5..=5);
    s.rooms.active(std::slice::from_ref(&r));
    s.next_done().await;
    assert_eq!(received(&out), [3, 4, 5]);
}

#[tokio::test]
async fn a_new_epoch_asks_the_rooms_clients_to_resync() {
    let mut s = setup();
    let r = room("r");
    let out = member(&s.hub, &r, 1);
    s.subscribed(&r).await;
    s.rooms.publish(publish(&r, "e2", 1));
    assert_eq!(out.reason(), Some(KillReason::Resync));
}

#[tokio::test]
async fn a_room_nobody_is_left_in_is_left_once_answered() {
    let mut s = setup();
    let r = room("r");
    let answer = s.ask(&r);
    s.rooms.active(std::slice::from_ref(&r));
    assert_eq!(s.next_done().await, std::slice::from_ref(&r));
    drop(answer);
    assert_eq!(s.rooms.len(), 0);
    assert!(!s.rooms.shared.subscribed.read().contains(&r));
}

/// Delivers 1..=3 live, then "fails over": the stream holds `stored`
/// instead; a reconnect catches the room up.
async fn after_failover(stored: &[(u64, &str)]) -> (Setup, Arc<Outbox>) {
    let mut s = setup();
    let r = room("r");
    let out = member(&s.hub, &r, 1);
    s.subscribed(&r).await;
    for o in 1..=3 {
        s.rooms.publish(publish(&r, "e1", o));
    }
    assert_eq!(received(&out), [1, 2, 3]);
    s.rooms
        .disconnected(&BackendError::Unavailable("gone".into()));
    let frames = stored.iter().map(|(o, f)| (*o, (*f).to_owned())).collect();
    s.fake
        .streams
        .lock()
        .insert(r.clone(), ("e1".into(), frames));
    s.rooms.reconnected();
    s.rooms.active(std::slice::from_ref(&r));
    s.next_done().await;
    (s, out)
}

#[tokio::test]
async fn a_stream_behind_what_was_delivered_asks_for_a_resync() {
    let (s, out) = after_failover(&[(1, r#"{"offset":1}"#)]).await;
    assert_eq!(out.reason(), Some(KillReason::Resync));
    assert_eq!(BackendStats::get(&s.rooms.shared.stats.history_rewinds), 1);
}

#[tokio::test]
async fn offsets_reused_by_other_messages_ask_for_a_resync() {
    // Offset 3 was lost and reused, and 4 came after: the position alone
    // is ahead, the frame at 3 tells.
    let (s, out) = after_failover(&[
        (1, r#"{"offset":1}"#),
        (2, r#"{"offset":2}"#),
        (3, r#"{"other":3}"#),
        (4, r#"{"offset":4}"#),
    ])
    .await;
    assert_eq!(out.reason(), Some(KillReason::Resync));
    assert_eq!(BackendStats::get(&s.rooms.shared.stats.history_rewinds), 1);
}

#[tokio::test]
async fn the_same_frame_at_the_cursor_catches_up_as_usual() {
    let (s, out) = after_failover(&[
        (1, r#"{"offset":1}"#),
        (2, r#"{"offset":2}"#),
        (3, r#"{"offset":3}"#),
        (4, r#"{"offset":4}"#),
    ])
    .await;
    assert_eq!(received(&out), [4]);
    assert_eq!(out.reason(), None);
    assert_eq!(BackendStats::get(&s.rooms.shared.stats.history_rewinds), 0);
}
