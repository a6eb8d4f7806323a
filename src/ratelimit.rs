//! Per-user rate limit over every client event (all of a user's sockets and
//! REST calls share one budget): generous for people, tight for scripts.
//! One node keeps the budgets in memory; many nodes share them in Redis.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};

use crate::cluster::SharedLimit;

pub enum RateLimit {
    Local(DefaultKeyedRateLimiter<String>),
    Shared(Box<SharedLimit>),
}

impl RateLimit {
    pub fn local(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self::Local(DefaultKeyedRateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        ))
    }

    /// True when the user may act now. When Redis can't answer, the event is
    /// let through: an outage of the limiter must not stop every conversation.
    pub async fn check(&self, user_key: &str) -> bool {
        match self {
            Self::Local(limiter) => limiter.check_key(&user_key.to_owned()).is_ok(),
            Self::Shared(shared) => shared.check(user_key).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "rate limit unavailable; letting the event through");
                true
            }),
        }
    }

    /// Forgets users whose budget is full again, so memory tracks active users
    /// only (Redis keys expire by themselves).
    pub fn prune(&self) {
        if let Self::Local(limiter) = self {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_then_refused_per_user() {
        let rl = RateLimit::local(1, 3);
        for _ in 0..3 {
            assert!(rl.check("5").await);
        }
        assert!(!rl.check("5").await);
        assert!(rl.check("7").await, "users have separate budgets");
    }
}
