//! Per-user rate limit over every client event (all of a user's sockets and
//! REST calls share one budget): generous for people, tight for scripts.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};

pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl RateLimit {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// True when the user may act now.
    pub fn check(&self, user_key: &str) -> bool {
        self.limiter.check_key(&user_key.to_owned()).is_ok()
    }

    /// Forgets users whose budget is full again, so memory tracks active users only.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_per_user() {
        let rl = RateLimit::new(1, 3);
        assert!((0..3).all(|_| rl.check("5")));
        assert!(!rl.check("5"));
        assert!(rl.check("7"), "users have separate budgets");
    }
}
