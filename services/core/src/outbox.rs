//! The outbox: one connection's bounded outbound queue and its kill switch.
//!
//! The hub pushes frames in ([`Outbox::push`], never waiting); the
//! connection's task takes them out ([`Outbox::next`], [`Outbox::try_pop`])
//! and writes them to its socket. Anything outside the connection that must
//! end it (a full queue, a history reset) calls [`Outbox::kill`], and the
//! task sees the reason on its next wait, ahead of any queued frame.
//!
//! Why not a `tokio::sync::mpsc` channel plus a `Notify`: memory. A bounded
//! channel allocates a block of 32 slots and a cache-padded shared state up
//! front, about 1.5 KiB, and an idle chat connection holds it for hours. The
//! outbox is one small allocation; its `VecDeque` allocates on the first
//! frame, and a queue that bursts to a large size gives the memory back once
//! it is drained.
//!
//! Locking: one `parking_lot::Mutex` around the queue, taken for a push or a
//! pop and never across an `.await` (nothing inside it can wait), so it is
//! safe to take from async tasks. It is contended only by the hub's pushes
//! against this one connection's pops. Wake-ups go through an
//! [`AtomicWaker`]: the connection task is the only consumer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::hub::{KillReason, Outbound};

/// A drained queue keeps a buffer of this many slots at most (what one frame
/// at a time needs, so a steady flow does not allocate per frame); a larger
/// one, left by a burst, is freed.
const KEEP_SLOTS: usize = 4;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` frames: the consumer is too slow.
    Full,
    /// The connection is closing; the frame is not needed.
    Closed,
}

/// What the connection task gets from [`Outbox::next`].
#[derive(Debug)]
pub enum Next {
    Frame(Outbound),
    Killed(KillReason),
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    closed: bool,
}

/// One connection's bounded outbound queue and kill switch.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    capacity: usize,
    killed: AtomicU8,
    waker: AtomicWaker,
}

impl Outbox {
    /// An empty outbox that holds at most `capacity` frames (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            killed: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// Queues a frame without waiting.
    pub fn push(&self, out: Outbound) -> Result<(), PushError> {
        {
            let mut q = self.queue.lock();
            if q.closed {
                return Err(PushError::Closed);
            }
            if q.frames.len() >= self.capacity {
                return Err(PushError::Full);
            }
            q.frames.push_back(out);
        }
        self.waker.wake();
        Ok(())
    }

    /// Takes the oldest queued frame, if any.
    pub fn try_pop(&self) -> Option<Outbound> {
        let mut q = self.queue.lock();
        let out = q.frames.pop_front();
        if q.frames.is_empty() && q.frames.capacity() > KEEP_SLOTS {
            q.frames = VecDeque::new();
        }
        out
    }

    /// Stops accepting frames and frees the queued ones (the connection is
    /// ending).
    pub fn close(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        q.frames = VecDeque::new();
    }

    /// Asks the connection to close. The first reason wins.
    pub fn kill(&self, reason: KillReason) {
        if self
            .killed
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Why the connection was killed, if it was.
    pub fn reason(&self) -> Option<KillReason> {
        match self.killed.load(Ordering::Acquire) {
            1 => Some(KillReason::SlowConsumer),
            2 => Some(KillReason::Resync),
            3 => Some(KillReason::Disconnected),
            4 => Some(KillReason::Banned),
            _ => None,
        }
    }

    /// Waits for a kill or the next frame; a kill comes first.
    pub async fn next(&self) -> Next {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Waits for a kill only (while the task is busy writing).
    pub async fn killed(&self) -> KillReason {
        poll_fn(|cx| {
            if let Some(r) = self.reason() {
                return Poll::Ready(r);
            }
            self.waker.register(cx.waker());
            // Checked again after registering: a kill in between would
            // otherwise wake nobody.
            self.reason().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Some(next) = self.ready() {
            return Poll::Ready(next);
        }
        self.waker.register(cx.waker());
        // A push or kill between `ready` and `register` woke nobody: look
        // again now that the waker is in place.
        self.ready().map_or(Poll::Pending, Poll::Ready)
    }

    fn ready(&self) -> Option<Next> {
        if let Some(r) = self.reason() {
            return Some(Next::Killed(r));
        }
        self.try_pop().map(Next::Frame)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use roomcast_protocol::Timestamp;

    use super::*;

    fn frame(offset: u64) -> Outbound {
        Outbound {
            frame: Bytes::from_static(b"{}"),
            offset,
            published_at: Timestamp::now(),
            to: 0,
        }
    }

    #[test]
    fn bounded_and_in_order() {
        let o = Outbox::new(2);
        o.push(frame(1)).unwrap();
        o.push(frame(2)).unwrap();
        assert_eq!(o.push(frame(3)), Err(PushError::Full));
        assert_eq!(o.try_pop().unwrap().offset, 1);
        o.push(frame(3)).unwrap();
        assert_eq!(o.try_pop().unwrap().offset, 2);
        assert_eq!(o.try_pop().unwrap().offset, 3);
        assert!(o.try_pop().is_none());
    }

    #[test]
    fn a_closed_outbox_refuses_and_frees() {
        let o = Outbox::new(4);
        o.push(frame(1)).unwrap();
        o.close();
        assert!(o.queue.lock().frames.is_empty());
        assert_eq!(o.push(frame(2)), Err(PushError::Closed));
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let o = Outbox::new(1000);
        for i in 0..500 {
            o.push(frame(i)).unwrap();
        }
        while o.try_pop().is_some() {}
        assert!(o.queue.lock().frames.capacity() <= KEEP_SLOTS);
    }

    #[tokio::test]
    async fn a_kill_overtakes_queued_frames_and_the_first_reason_wins() {
        let o = Outbox::new(4);
        o.push(frame(1)).unwrap();
        o.kill(KillReason::Resync);
        o.kill(KillReason::SlowConsumer);
        assert!(matches!(o.next().await, Next::Killed(KillReason::Resync)));
        assert_eq!(o.killed().await, KillReason::Resync);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_push_and_by_a_kill() {
        let o = Arc::new(Outbox::new(4));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.next().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        o.push(frame(7)).unwrap();
        assert!(matches!(waiter.await.unwrap(), Next::Frame(f) if f.offset == 7));

        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.killed().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        o.kill(KillReason::SlowConsumer);
        assert_eq!(waiter.await.unwrap(), KillReason::SlowConsumer);
    }
}
