//! Pacing: "say it once", "every N seconds" and the backoff of retries, so that they are not flags and
//! timestamps spread over the cores. All take the time as an argument: the cores that use them never read the clock.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Say something once per episode: `first()` is true the first time after construction or `rearm()`. A relay
/// that has no inside agent says "no spare" once, however long clients retry; once spares come back, the next
/// shortage is news again.
#[derive(Debug, Default)]
pub struct Once {
    said: bool,
}

impl Once {
    /// True the first time since the episode began (and marks it said).
    pub fn first(&mut self) -> bool {
        !std::mem::replace(&mut self.said, true)
    }

    /// The episode is over: the next `first()` is true again.
    pub fn rearm(&mut self) {
        self.said = false;
    }

    pub fn said(&self) -> bool {
        self.said
    }
}

/// Something due at most once every `period` (a status line, a rate-limited notice, a re-warning).
#[derive(Debug)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    pub fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// True if the period has passed since the last time this returned true (or it never did); then the period
    /// starts again at `now`.
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.period);
        if due {
            self.last = Some(now);
        }
        due
    }

    /// Like `due`, but the first period starts at `now` rather than being due at once.
    pub fn start(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// Backoff for retries: 1 s, 2 s, 4 s … capped.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    Duration::from_secs(1u64 << attempt.min(16)).min(cap)
}

/// How a name that does not resolve (yet) is retried: after 1, 2, 4 … 30 s, with a warning now and again every
/// `rewarn` while it lasts, and the retries in between at debug level (a daemon may start before DNS works, and
/// a log read by priority should say so without a line every 30 s).
pub struct Retries {
    attempt: u32,
    warn: Every,
}

impl Retries {
    pub const CAP: Duration = Duration::from_secs(30);

    pub fn new(rewarn: Duration) -> Retries {
        Retries {
            attempt: 0,
            warn: Every::new(rewarn),
        }
    }

    /// After an attempt failed at `now`: the level to log it at, and how long to wait before the next one.
    pub fn failed(&mut self, now: Instant) -> (log::Level, Duration) {
        let level = if self.warn.due(now) {
            log::Level::Warn
        } else {
            log::Level::Debug
        };
        let wait = backoff(self.attempt, Self::CAP);
        self.attempt = self.attempt.saturating_add(1);
        (level, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that never resolves: warned at once and every 5 minutes, the retries in between at debug level,
    /// the waits 1, 2, 4 … 30 s.
    #[test]
    fn an_unresolvable_name_is_rewarned_every_period() {
        let t0 = Instant::now();
        let mut r = Retries::new(Duration::from_secs(300));
        let (mut now, mut warned, mut waits) = (t0, Vec::new(), Vec::new());
        while now < t0 + Duration::from_secs(3600) {
            let (level, wait) = r.failed(now);
            if level == log::Level::Warn {
                warned.push((now - t0).as_secs());
            } else {
                assert_eq!(level, log::Level::Debug);
            }
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits[..7], [1, 2, 4, 8, 16, 30, 30]);
        assert!(waits[5..].iter().all(|&w| w == 30));
        // Attempts fall at 0, 1, 3, 7, 15, 31, 61, 91 … s: the first one at or after each 5 minutes since the
        // last warning.
        assert_eq!(
            warned,
            [0, 301, 601, 901, 1201, 1501, 1801, 2101, 2401, 2701, 3001, 3301]
        );
    }

    #[test]
    fn once_per_episode() {
        let mut o = Once::default();
        assert!(o.first());
        assert!(!o.first());
        assert!(o.said());
        o.rearm();
        assert!(o.first());
    }

    #[test]
    fn every_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut e = Every::new(s);
        assert!(e.due(t0));
        assert!(!e.due(t0 + s / 2));
        assert!(e.due(t0 + s));
        assert!(!e.due(t0 + s + s / 2));
        let mut started = Every::new(s);
        started.start(t0);
        assert!(!started.due(t0));
        assert!(!started.due(t0 + s / 2), "the first period starts at start");
        assert!(started.due(t0 + s));
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let cap = Duration::from_secs(30);
        let v: Vec<u64> = (0..7).map(|i| backoff(i, cap).as_secs()).collect();
        assert_eq!(v, [1, 2, 4, 8, 16, 30, 30]);
    }
}
