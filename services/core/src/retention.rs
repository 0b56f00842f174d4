//! How much history each room keeps: by count, bytes and age, per room or
//! room-name pattern, with one default for the rest.
//!
//! Rules are written `PATTERN: len=N bytes=N age=D; PATTERN: ...` (e.g.
//! `support-*: len=10000 age=30d; tmp-*: age=1h bytes=1048576`); the first
//! rule whose pattern matches a room's id applies, and what it leaves out
//! is the default's (`history.max_len` messages, no byte or age bound
//! beyond the backend's own). Ages take `s`, `m`, `h` or `d`.

use std::sync::Arc;
use std::time::Duration;

use roomcast_protocol::RoomId;

use crate::pattern::glob;

/// What one room keeps. A message goes when any bound is passed (the
/// newest message is always kept, whatever its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_len: usize,
    pub max_bytes: Option<usize>,
    pub max_age: Option<Duration>,
}

/// One rule: a pattern and the bounds it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    pub max_len: Option<usize>,
    pub max_bytes: Option<usize>,
    pub max_age: Option<Duration>,
}

/// The rules, first match wins. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules(Arc<[Rule]>);

impl Rules {
    /// Parses the rules' text (empty: none). The error says what is wrong
    /// with which rule.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut rules = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (pattern, bounds) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?}: expected \"PATTERN: len=N bytes=N age=D\""))?;
            let pattern = pattern.trim();
            if pattern.is_empty() {
                return Err(format!("{part:?}: the room pattern is empty"));
            }
            let mut rule = Rule {
                pattern: pattern.to_owned(),
                max_len: None,
                max_bytes: None,
                max_age: None,
            };
            for bound in bounds.split_whitespace() {
                let (name, value) = bound
                    .split_once('=')
                    .ok_or_else(|| format!("{part:?}: {bound:?} is not NAME=VALUE"))?;
                let number = |v: &str| {
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("{part:?}: {name} must be a number above 0"))
                };
                match name {
                    "len" => rule.max_len = Some(number(value)?),
                    "bytes" => rule.max_bytes = Some(number(value)?),
                    "age" => rule.max_age = Some(age(value).map_err(|e| format!("{part:?}: {e}"))?),
                    _ => {
                        return Err(format!(
                            "{part:?}: unknown bound {name:?} (len, bytes or age)"
                        ));
                    }
                }
            }
            if rule.max_len.is_none() && rule.max_bytes.is_none() && rule.max_age.is_none() {
                return Err(format!("{part:?}: no bound (len=, bytes= or age=)"));
            }
            rules.push(rule);
        }
        Ok(Rules(rules.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What `room` keeps, `default_len` messages unless a rule says more.
    pub fn for_room(&self, room: &RoomId, default_len: usize) -> Retention {
        let rule = self.0.iter().find(|r| glob(&r.pattern, room.as_str()));
        Retention {
            max_len: rule.and_then(|r| r.max_len).unwrap_or(default_len).max(1),
            max_bytes: rule.and_then(|r| r.max_bytes),
            max_age: rule.and_then(|r| r.max_age),
        }
    }
}

/// `90s`, `15m`, `12h`, `30d`.
fn age(v: &str) -> Result<Duration, String> {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("age {v:?}: expected a number above 0 and s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("age {v:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_applies_and_fills_in_from_the_default() {
        let rules = Rules::parse("support-*: len=5000 age=30d; *-tmp: age=1h bytes=1024").unwrap();
        let room = |s: &str| RoomId::parse(s).unwrap();
        assert_eq!(
            rules.for_room(&room("support-1"), 100),
            Retention {
                max_len: 5000,
                max_bytes: None,
                max_age: Some(Duration::from_secs(30 * 86_400))
            }
        );
        assert_eq!(
            rules.for_room(&room("x-tmp"), 100),
            Retention {
                max_len: 100,
                max_bytes: Some(1024),
                max_age: Some(Duration::from_secs(3600))
            }
        );
        assert_eq!(
            rules.for_room(&room("lobby"), 100),
            Retention {
                max_len: 100,
                max_bytes: None,
                max_age: None
            }
        );
        assert!(Rules::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, says) in [
            ("support-*", "expected"),
            (": len=1", "pattern is empty"),
            ("a: len=0", "above 0"),
            ("a: age=5w", "unit"),
            ("a: size=5", "unknown bound"),
            ("a:", "no bound"),
        ] {
            let e = Rules::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
