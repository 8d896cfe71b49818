//! The fleet-wide rate limit (`--rate`, readings per second across all series): a token bucket
//! that one ticker task refills every [`TICK`], and that senders draw from one token per reading
//! before each batch. Refills are computed from the time since the start, so ticks that come
//! late do not make the rate drift.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the bucket is refilled.
pub const TICK: Duration = Duration::from_millis(10);
/// The bucket holds this much time's worth of tokens (or one batch, if that is more): tokens
/// that would overflow it are forfeited, so a stalled run does not burst to catch up.
pub const BURST: Duration = Duration::from_millis(100);
/// Largest `--rate`.
pub const RATE_PER_S_MAX: u64 = 100_000_000;

/// The refill arithmetic, without a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSchedule {
    rate_per_s: u64,
    bucket_tokens_max: u64,
    issued: u64,
}

impl TokenSchedule {
    /// A schedule of `rate_per_s` tokens a second whose bucket holds at least `batch` tokens
    /// (a batch draws all its tokens at once).
    pub fn new(rate_per_s: u64, batch: u32) -> TokenSchedule {
        let burst = (u128::from(rate_per_s) * BURST.as_nanos() / 1_000_000_000) as u64;
        TokenSchedule { rate_per_s, bucket_tokens_max: burst.max(u64::from(batch)).max(1), issued: 0 }
    }

    pub fn bucket_tokens_max(&self) -> u64 {
        self.bucket_tokens_max
    }

    /// Tokens to add to a bucket now holding `available`, `elapsed` after the start. Tokens
    /// due beyond the bucket's size are forfeited.
    pub fn refill(&mut self, elapsed: Duration, available: u64) -> u64 {
        let due_total = (u128::from(self.rate_per_s) * elapsed.as_nanos() / 1_000_000_000) as u64;
        let due = due_total.saturating_sub(self.issued);
        self.issued = self.issued.max(due_total);
        due.min(self.bucket_tokens_max.saturating_sub(available))
    }
}

/// A shared handle on the bucket; cloning shares it. Unlimited when `--rate` is 0.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bucket: Option<Arc<Semaphore>>,
}

impl RateLimiter {
    /// A limiter that never waits.
    pub fn unlimited() -> RateLimiter {
        RateLimiter { bucket: None }
    }

    /// Starts the refill ticker (on the current tokio runtime) for `rate_per_s` readings a
    /// second; 0 means unlimited. The ticker stops when the last clone is dropped.
    pub fn start(rate_per_s: u64, batch: u32) -> RateLimiter {
        if rate_per_s == 0 {
            return RateLimiter::unlimited();
        }
        let bucket = Arc::new(Semaphore::new(0));
        tokio::spawn(refill(Arc::downgrade(&bucket), TokenSchedule::new(rate_per_s, batch)));
        RateLimiter { bucket: Some(bucket) }
    }

    /// Waits until `readings` tokens are available and takes them. `readings` must not exceed
    /// the batch size the limiter was started with.
    pub async fn take(&self, readings: u32) {
        if let Some(bucket) = &self.bucket {
            bucket.acquire_many(readings).await.expect("the rate bucket is never closed").forget();
        }
    }
}

async fn refill(bucket: Weak<Semaphore>, mut schedule: TokenSchedule) {
    let start = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(bucket) = bucket.upgrade() else { return };
        let add = schedule.refill(start.elapsed(), bucket.available_permits() as u64);
        bucket.add_permits(add as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn refills() {
        // (rate, batch, bucket size, [(elapsed, available, tokens added)])
        let cases: [(u64, u32, u64, &[(Duration, u64, u64)]); 4] = [
            (1000, 50, 100, &[(ms(10), 0, 10), (ms(20), 0, 10), (ms(25), 20, 5)]),
            // A stall forfeits what does not fit in the bucket; a full bucket takes nothing.
            (1000, 50, 100, &[(ms(1000), 0, 100), (ms(1010), 100, 0), (ms(1020), 95, 5)]),
            // A slow rate still fills a whole batch's worth of bucket, one token at a time.
            (1, 50, 50, &[(ms(500), 0, 0), (ms(1000), 0, 1), (ms(2500), 1, 1), (ms(3000), 2, 1)]),
            // Late ticks do not lose tokens that fit.
            (100, 1, 10, &[(ms(10), 0, 1), (ms(75), 0, 6), (ms(80), 0, 1)]),
        ];
        for (rate, batch, bucket, steps) in cases {
            let mut schedule = TokenSchedule::new(rate, batch);
            assert_eq!(schedule.bucket_tokens_max(), bucket, "rate {rate}");
            for &(elapsed, available, added) in steps {
                assert_eq!(schedule.refill(elapsed, available), added, "rate {rate} at {elapsed:?}");
            }
        }
    }

    #[test]
    fn a_drained_bucket_gets_exactly_the_rate() {
        for rate in [1, 7, 1000, 123_457] {
            let mut schedule = TokenSchedule::new(rate, 50);
            let total: u64 = (1..=1000).map(|tick| schedule.refill(TICK * tick, 0)).sum();
            assert_eq!(total, rate * 10, "rate {rate} over 10 s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_paces_takers() {
        let limiter = RateLimiter::start(1000, 50);
        let start = Instant::now();
        for _ in 0..20 {
            limiter.take(50).await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= ms(990) && elapsed <= ms(1020), "1000 readings at 1000/s took {elapsed:?}");
    }
}
