//! Recovery on connect: the room's position and, with `since`, the messages
//! after it, read one bounded page at a time (at most `MAX_LIMIT` messages
//! and `history.max_page_bytes`), so a replay of a room of large messages
//! holds one page in memory, not the room.

use roomcast_core::history::{HistoryQuery, MAX_LIMIT, Since, StreamPosition};
use roomcast_protocol::{MessageFrame, RoomId};

use crate::app::App;
use crate::error::End;

/// What a connection starts from.
pub(crate) struct Start {
    pub position: StreamPosition,
    /// With `since`: whether the history reaches back that far.
    pub recovered: Option<bool>,
    /// The first page of the replay.
    pub first: Vec<MessageFrame>,
    /// The rest of it.
    pub rest: Replay,
}

/// The pages of a replay still to read.
pub(crate) struct Replay {
    /// Read on after this offset; `None` when the replay is over.
    after: Option<u64>,
}

impl Replay {
    /// The next page (empty when the replay is over).
    pub async fn next(&mut self, app: &App, room: &RoomId) -> Result<Vec<MessageFrame>, End> {
        let Some(after) = self.after else {
            return Ok(Vec::new());
        };
        let page = app
            .backend
            .history
            .read(room, query(app, Since::Offset(after)))
            .await?;
        self.after = more(&page.messages, page.truncated);
        Ok(page.messages)
    }
}

fn query(app: &App, since: Since) -> HistoryQuery {
    HistoryQuery {
        since: Some(since),
        limit: MAX_LIMIT,
        max_bytes: app.settings.history.max_page_bytes,
    }
}

/// Where the next page starts, if the page ended before the history did.
fn more(page: &[MessageFrame], truncated: bool) -> Option<u64> {
    let last = page.last()?;
    (truncated || page.len() == MAX_LIMIT).then_some(last.offset)
}

/// The room's position and, with `since`, the first page of what came
/// after it, and whether that is everything that was missed.
pub(crate) async fn recovery(app: &App, room: &RoomId, since: Option<&str>) -> Result<Start, End> {
    let history = &app.backend.history;
    let outcome = |o: &str| app.metrics.recoveries.with_label_values(&[o]).inc();
    let over = Replay { after: None };
    let Some(raw) = since else {
        return Ok(Start {
            position: history.position(room).await?,
            recovered: None,
            first: Vec::new(),
            rest: over,
        });
    };
    let Ok(since) = Since::parse(raw) else {
        outcome("invalid");
        return Ok(Start {
            position: history.position(room).await?,
            recovered: Some(false),
            first: Vec::new(),
            rest: over,
        });
    };
    let page = history.read(room, query(app, since)).await?;
    outcome(if page.complete {
        "recovered"
    } else {
        "not_recovered"
    });
    Ok(Start {
        rest: Replay {
            after: more(&page.messages, page.truncated),
        },
        position: page.position,
        recovered: Some(page.complete),
        first: page.messages,
    })
}
