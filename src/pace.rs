//! Two tiny pacing types, so that "say it once" and "every N seconds" are not flags and timestamps spread over
//! the cores. Both take the time as an argument: the cores that use them never read the clock.

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

    /// When `due` next returns true.
    pub fn next(&self) -> Option<Instant> {
        self.last.map(|t| t + self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(started.next(), Some(t0 + s));
        assert!(started.due(t0 + s));
    }
}
