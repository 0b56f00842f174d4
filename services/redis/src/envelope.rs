//! The envelope as it travels over Redis pub/sub; this module is the only
//! place that writes or reads its format.
//!
//! `v1|<offset>|<epoch>|<origin node>|<published micros>|<exclude user>|<trace>|<frame>`
//!
//! A flat header followed by the frame exactly as clients receive it: the
//! receiving node parses the header and hands the frame bytes on without
//! decoding them. No header field can contain `|` (ids, node ids and epochs
//! are validated; trace contexts are hex and `-`).
//!
//! A stored message's offset and epoch are only known inside the publish
//! script, so for it this module hands out a [`ScriptHeader`]: the literal
//! pieces around those two values, which the script joins as
//! `head .. offset .. mid .. epoch .. tail .. frame` and nothing else.

use bytes::Bytes;
use roomcast_core::envelope::Envelope;
use roomcast_protocol::{RoomId, Timestamp, UserId};

const VERSION: &str = "v1";

/// The header of a stored message's envelope, minus the offset and the
/// epoch that the publish script fills in:
/// `head .. offset .. mid .. epoch .. tail .. frame`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptHeader {
    pub head: &'static str,
    pub mid: &'static str,
    pub tail: String,
}

impl ScriptHeader {
    /// For a message accepted by `origin` at `published_at` (to every member:
    /// a stored message excludes nobody).
    pub fn new(origin: &str, published_at: Timestamp, trace: Option<&str>) -> Self {
        Self {
            head: "v1|",
            mid: "|",
            tail: format!(
                "|{origin}|{}||{}|",
                published_at.as_micros(),
                trace.unwrap_or("")
            ),
        }
    }

    /// What the script builds, for tests.
    pub fn join(&self, offset: u64, epoch: &str, frame: &str) -> String {
        format!(
            "{}{offset}{}{epoch}{}{frame}",
            self.head, self.mid, self.tail
        )
    }
}

/// Encodes an ephemeral (offset 0) envelope.
pub fn encode_event(env: &Envelope) -> Vec<u8> {
    let trace = env.trace.as_deref();
    let header = format!(
        "{VERSION}|0||{}|{}|{}|{}|",
        env.origin_node,
        env.published_at.as_micros(),
        env.exclude_user.as_ref().map_or("", |u| u.as_str()),
        trace.unwrap_or("")
    );
    let mut out = Vec::with_capacity(header.len() + env.frame.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&env.frame);
    out
}

/// An envelope read off a channel, with the part only the transport knows.
#[derive(Debug)]
pub struct Received {
    pub envelope: Envelope,
    pub epoch: String,
}

/// Why a payload is not an envelope this version reads.
#[derive(Debug, thiserror::Error)]
#[error("malformed envelope: {0}")]
pub struct EnvelopeError(&'static str);

/// Decodes a payload from `room`'s channel. The frame is sliced out of
/// `payload` without copying.
pub fn decode(room: RoomId, payload: Bytes) -> Result<Received, EnvelopeError> {
    let mut fields = [0usize; 8];
    let mut start = 0;
    for slot in fields.iter_mut().take(7) {
        let rel = payload[start..]
            .iter()
            .position(|b| *b == b'|')
            .ok_or(EnvelopeError("missing header field"))?;
        *slot = start + rel;
        start += rel + 1;
    }
    let field = |i: usize| -> Result<&str, EnvelopeError> {
        let from = if i == 0 { 0 } else { fields[i - 1] + 1 };
        std::str::from_utf8(&payload[from..fields[i]])
            .map_err(|_| EnvelopeError("header not UTF-8"))
    };
    if field(0)? != VERSION {
        return Err(EnvelopeError("unknown version"));
    }
    let offset: u64 = field(1)?.parse().map_err(|_| EnvelopeError("bad offset"))?;
    let epoch = field(2)?.to_owned();
    let origin = field(3)?.to_owned();
    let micros: i64 = field(4)?.parse().map_err(|_| EnvelopeError("bad time"))?;
    let exclude = match field(5)? {
        "" => None,
        u => Some(UserId::parse(u).map_err(|_| EnvelopeError("bad user"))?),
    };
    let trace = Some(field(6)?).filter(|t| !t.is_empty()).map(Into::into);
    let frame = payload.slice(fields[6] + 1..);
    if std::str::from_utf8(&frame).is_err() {
        return Err(EnvelopeError("frame not UTF-8"));
    }
    Ok(Received {
        envelope: Envelope {
            room,
            frame,
            offset,
            exclude_user: exclude,
            origin_node: origin.into(),
            published_at: Timestamp::from_micros(micros),
            trace,
        },
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trip() {
        let room = RoomId::parse("r1").unwrap();
        let env = Envelope {
            room: room.clone(),
            frame: Bytes::from_static(br#"{"type":"typing","x":"a|b"}"#),
            offset: 0,
            exclude_user: Some(UserId::parse("u1").unwrap()),
            origin_node: "node-a".into(),
            published_at: Timestamp::from_micros(42),
            trace: Some("00-abc-def-01".into()),
        };
        let got = decode(room, Bytes::from(encode_event(&env))).unwrap();
        assert_eq!(
            got.envelope.frame, env.frame,
            "a | inside the frame is kept"
        );
        assert_eq!(got.envelope.exclude_user, env.exclude_user);
        assert_eq!(&*got.envelope.origin_node, "node-a");
        assert_eq!(got.envelope.published_at, env.published_at);
        assert_eq!(got.envelope.trace.as_deref(), Some("00-abc-def-01"));
    }

    #[test]
    fn script_built_envelope_decodes() {
        let header = ScriptHeader::new("n", Timestamp::from_micros(5), None);
        let payload = header.join(7, "ep1", r#"{"type":"message"}"#);
        let got = decode(RoomId::parse("r").unwrap(), Bytes::from(payload)).unwrap();
        assert_eq!((got.envelope.offset, got.epoch.as_str()), (7, "ep1"));
        assert_eq!(&got.envelope.frame[..], br#"{"type":"message"}"#);
        assert!(got.envelope.exclude_user.is_none() && got.envelope.trace.is_none());
    }

    #[test]
    fn garbage_is_refused() {
        let room = RoomId::parse("r").unwrap();
        for bad in [
            "",
            "v1|1|e",
            "v2|0||n|1|||{}",
            "v1|x||n|1|||{}",
            "v1|0||n|1|bad:user||{}",
        ] {
            assert!(decode(room.clone(), Bytes::from(bad)).is_err(), "{bad:?}");
        }
    }
}
