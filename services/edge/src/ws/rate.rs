//! Per-connection rate limiting: a token bucket decides whether a frame is
//! accepted; a flood window decides when a client that keeps hitting the
//! limit is cut off.

use std::time::{Duration, Instant};

use crate::limits::Bucket;

/// Frames refused within this window that count toward closing a flooder.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    bucket: Bucket,
    refused_in_window: u32,
    window_start: Instant,
    close_after: u32,
}

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refuse it with `rate_limited`, keep the connection.
    Refuse,
    /// Refused too often in the window: close 1008.
    Close,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64, close_after: u32, now: Instant) -> Self {
        Self {
            rate,
            burst,
            bucket: Bucket::full(burst, now),
            refused_in_window: 0,
            window_start: now,
            close_after,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.bucket.take(self.rate, self.burst, now) {
            return Verdict::Accept;
        }
        self.refuse(now)
    }

    /// Counts a frame refused by this limit or another (the user's): a
    /// flooder is cut off either way.
    pub fn refuse(&mut self, now: Instant) -> Verdict {
        if now.saturating_duration_since(self.window_start) > FLOOD_WINDOW {
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if self.refused_in_window >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_refill() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10.0, 3.0, 100, t0);
        for _ in 0..3 {
            assert_eq!(r.check(t0), Verdict::Accept);
        }
        assert_eq!(r.check(t0), Verdict::Refuse);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Accept);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Refuse);
    }

    #[test]
    fn sustained_flooding_closes() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1.0, 1.0, 5, t0);
        assert_eq!(r.check(t0), Verdict::Accept);
        let verdicts: Vec<_> = (0..5).map(|_| r.check(t0)).collect();
        assert_eq!(verdicts[..4], [Verdict::Refuse; 4]);
        assert_eq!(verdicts[4], Verdict::Close);
    }

    #[test]
    fn occasional_refusals_age_out() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1.0, 1.0, 3, t0);
        let mut t = t0;
        for _ in 0..10 {
            r.check(t);
            assert_ne!(r.check(t), Verdict::Close);
            t += FLOOD_WINDOW + Duration::from_secs(1);
        }
    }
}
