//! The first presence page of each summarised room, kept on the node for
//! one diff generation, so that a burst of newcomers into a big room does
//! not ask the backend for the same page each (measured: with 5,000 joining
//! one room, the page was most of the cost of a join).
//!
//! Why a page one generation old is as good as a fresh one: a newcomer's
//! `presence` is a snapshot that the coalesced diffs bring up to date (see
//! `diffs`). A member that was not settled at a flush gets the last state
//! of every user whose change reached the node in that generation, and a
//! change made after the page was read reaches the node after that read,
//! so in the page's generation or a later one, whose flushes the newcomer
//! hears. So a page read in generation `g` serves newcomers whose join
//! starts in `g`; a newer generation reads a new one.
//!
//! Locking: a sharded sync lock per room map, held to clone an `Arc` or
//! swap an entry, never across an `.await`.

use std::collections::HashMap;
use std::sync::Arc;

use roomcast_protocol::{PresenceUser, RoomId};

use super::Hub;
use crate::shard::Sharded;

/// Pages by room, with the generation they were read in.
pub(super) type Pages = Sharded<HashMap<RoomId, (u64, Arc<[PresenceUser]>)>>;

impl Hub {
    /// The diff generation now: pass it to [`cache_page`](Self::cache_page)
    /// with a page read after this call.
    pub fn presence_generation(&self) -> u64 {
        self.diffs.generation()
    }

    /// `room`'s first page if one was read in the current generation.
    pub fn cached_page(&self, room: &RoomId) -> Option<Arc<[PresenceUser]>> {
        let generation = self.diffs.generation();
        let shard = self.pages.shard(room).read();
        shard
            .get(room)
            .filter(|(g, _)| *g == generation)
            .map(|(_, page)| page.clone())
    }

    /// Keeps `page`, read after `generation` began, for the newcomers of
    /// that generation (nothing if it has ended meanwhile, or the room has
    /// no local member to serve).
    pub fn cache_page(&self, room: &RoomId, generation: u64, page: &[PresenceUser]) {
        if generation != self.diffs.generation() || !self.has_members(room) {
            return;
        }
        self.pages
            .shard(room)
            .write()
            .insert(room.clone(), (generation, page.into()));
    }

    /// Forgets `room`'s page (its last local member left).
    pub(super) fn forget_page(&self, room: &RoomId) {
        self.pages.shard(room).write().remove(room);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use roomcast_protocol::{PresenceUser, RoomId, UserId};

    use crate::hub::{Hub, Member};
    use crate::outbox::Outbox;

    fn user(id: &str) -> PresenceUser {
        PresenceUser {
            user_id: UserId::parse(id).unwrap(),
            username: id.to_uppercase(),
        }
    }

    #[test]
    fn a_page_serves_its_generation_only() {
        let hub = Hub::default();
        let room = RoomId::parse("r").unwrap();
        let g = hub.presence_generation();
        hub.cache_page(&room, g, &[user("a")]);
        assert!(hub.cached_page(&room).is_none(), "no member to serve");
        let member = Member::new(1, UserId::parse("m").unwrap(), Arc::new(Outbox::new(8)));
        hub.join(&room, member);
        hub.cache_page(&room, g, &[user("a")]);
        assert_eq!(hub.cached_page(&room).unwrap()[..], [user("a")]);
        hub.flush_presence(10);
        assert!(
            hub.cached_page(&room).is_none(),
            "the next generation reads anew"
        );
        hub.cache_page(&room, g, &[user("b")]);
        assert!(
            hub.cached_page(&room).is_none(),
            "read in an ended generation"
        );
        let g = hub.presence_generation();
        hub.cache_page(&room, g, &[user("b")]);
        assert!(hub.cached_page(&room).is_some());
        hub.leave(&room, 1);
        assert!(hub.cached_page(&room).is_none(), "forgotten with the room");
    }
}
