//! Rate limiting of token guessing, per agent and per gateway.
//!
//! The first [`FREE_FAILURES`] failed token checks in a [`WINDOW`] cost
//! nothing. After that, each failure blocks further attempts of that agent
//! for a backoff that doubles (100 ms, 200 ms, … up to [`MAX_BACKOFF`]);
//! attempts made while blocked are refused without looking at the token,
//! so parallel connections do not speed guessing up.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failures allowed per window before backoff starts.
pub const FREE_FAILURES: u32 = 10;
/// The counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

/// Per-agent failure counts.
#[derive(Default)]
pub struct AuthThrottle {
    agents: Mutex<HashMap<String, Entry>>,
}

impl AuthThrottle {
    /// `Err(remaining)` while `agent` is backing off.
    pub fn check(&self, agent: &str) -> Result<(), Duration> {
        let now = Instant::now();
        match self
            .agents
            .lock()
            .unwrap()
            .get(agent)
            .and_then(|e| e.blocked_until)
        {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed token check; returns the failures in the current
    /// window (this one included).
    pub fn failure(&self, agent: &str) -> u32 {
        let now = Instant::now();
        let mut agents = self.agents.lock().unwrap();
        let e = agents.entry(agent.to_string()).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(e.window_start) > WINDOW {
            *e = Entry {
                window_start: now,
                failures: 0,
                blocked_until: None,
            };
        }
        e.failures += 1;
        if e.failures > FREE_FAILURES {
            let exp = (e.failures - FREE_FAILURES - 1).min(16);
            let backoff = (Duration::from_millis(100) * 2u32.pow(exp)).min(MAX_BACKOFF);
            e.blocked_until = Some(now + backoff);
        }
        e.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_the_free_failures() {
        let t = AuthThrottle::default();
        for i in 1..=FREE_FAILURES {
            assert_eq!(t.failure("bot"), i);
            assert!(t.check("bot").is_ok());
        }
        assert_eq!(t.failure("bot"), FREE_FAILURES + 1);
        let wait = t.check("bot").unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(t.check("other-agent").is_ok());
    }
}
