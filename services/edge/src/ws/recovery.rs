//! Recovery on connect: the room's position and, with `since`, every
//! message after it, read page by page, and whether that is everything
//! the client missed.

use roomcast_core::history::{HistoryQuery, MAX_LIMIT, Since, StreamPosition};
use roomcast_protocol::{MessageFrame, RoomId};

use crate::app::App;
use crate::error::End;

/// The room's position and, with `since`, the messages after it (all of
/// them, page by page), and whether they are everything that was missed.
pub(crate) async fn recovery(
    app: &App,
    room: &RoomId,
    since: Option<&str>,
) -> Result<(StreamPosition, Option<bool>, Vec<MessageFrame>), End> {
    let history = &app.backend.history;
    let outcome = |o: &str| app.metrics.recoveries.with_label_values(&[o]).inc();
    let Some(raw) = since else {
        return Ok((history.position(room).await?, None, Vec::new()));
    };
    let Ok(mut since) = Since::parse(raw) else {
        outcome("invalid");
        return Ok((history.position(room).await?, Some(false), Vec::new()));
    };
    let mut replay = Vec::new();
    let mut complete = None;
    loop {
        let query = HistoryQuery {
            since: Some(since),
            limit: MAX_LIMIT,
        };
        let page = history.read(room, query).await?;
        complete.get_or_insert(page.complete);
        let full = page.messages.len() == MAX_LIMIT;
        if let Some(last) = page.messages.last() {
            since = Since::Offset(last.offset);
        }
        replay.extend(page.messages);
        if !full {
            let ok = complete.unwrap_or(true);
            outcome(if ok { "recovered" } else { "not_recovered" });
            return Ok((page.position, Some(ok), replay));
        }
    }
}
