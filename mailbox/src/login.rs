//! Password checks under attack, shared by submission, IMAP and POP3.
//!
//! An argon2id check costs 19 MiB and tens of milliseconds on purpose, so a flood of wrong
//! logins is a memory and CPU attack unless the checks are bounded. [`LoginGuard`] runs at most
//! `checks_concurrent_max` of them at once (a semaphore), one at a time per client address, and
//! counts failures per address across connections: each failure is answered after a delay that
//! grows with the address's failures, and past `failures_per_address_max` within
//! `failure_window` the address is refused without a check until the window has passed (what
//! Dovecot's auth penalty and fail2ban do). A success clears the address's count.

use crate::users::Users;
use mailsim_events::Clock;
pub use mailsim_smtp::sasl::LoginOutcome;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The bounds of [`LoginGuard`].
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// Password checks running at once (each holds argon2's 19 MiB).
    pub checks_concurrent_max: usize,
    /// A failure is answered after this, times the address's failures so far.
    pub failure_delay: Duration,
    /// The longest such delay.
    pub failure_delay_max: Duration,
    /// Failures from one address within `failure_window` before it is refused unchecked.
    pub failures_per_address_max: u32,
    /// How long an address's failures are remembered after the last one.
    pub failure_window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            checks_concurrent_max: std::thread::available_parallelism().map_or(2, |n| n.get()),
            failure_delay: Duration::from_secs(1),
            failure_delay_max: Duration::from_secs(15),
            failures_per_address_max: 10,
            failure_window: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Default)]
struct Address {
    /// One check at a time per address: parallel guesses from one place wait in line.
    serial: tokio::sync::Mutex<()>,
    /// Failures so far and the clock's reading (ms) at the last one.
    failures: Mutex<(u32, Option<u64>)>,
}

/// The shared gate in front of [`Users::verify`].
pub struct LoginGuard {
    users: Arc<Users>,
    limits: LoginLimits,
    checks: Arc<Semaphore>,
    clock: Arc<dyn Clock>,
    /// argon2's working memory, one buffer per check that ran at once, reused: freed and
    /// reallocated 19 MiB blocks would stay in the allocator's per-thread arenas instead.
    memories: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
    addresses: Mutex<HashMap<IpAddr, Arc<Address>>>,
}

/// Addresses remembered before the expired ones are swept out.
const ADDRESSES_SWEEP_AT: usize = 10_000;

impl LoginGuard {
    /// `clock` dates failures (their window); the delays are the runtime's timers.
    pub fn new(users: Arc<Users>, limits: LoginLimits, clock: Arc<dyn Clock>) -> Self {
        LoginGuard {
            clock,
            checks: Arc::new(Semaphore::new(limits.checks_concurrent_max.max(1))),
            users,
            limits,
            memories: Arc::new(Mutex::new(Vec::new())),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    pub fn users(&self) -> &Arc<Users> {
        &self.users
    }

    fn address(&self, ip: IpAddr) -> Arc<Address> {
        let mut map = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= ADDRESSES_SWEEP_AT {
            map.retain(|_, a| {
                let last = a.failures.lock().unwrap_or_else(|p| p.into_inner()).1;
                Arc::strong_count(a) > 1 || self.within_window(last)
            });
        }
        map.entry(ip).or_default().clone()
    }

    /// A failure at `last` (clock ms) still counts.
    fn within_window(&self, last: Option<u64>) -> bool {
        let window_ms = self.limits.failure_window.as_millis() as u64;
        last.is_some_and(|last| self.clock.now_ms().saturating_sub(last) < window_ms)
    }

    /// Check `login`/`password` for a client at `ip`.
    pub async fn check(&self, ip: IpAddr, login: &str, password: &[u8]) -> LoginOutcome {
        let address = self.address(ip);
        let _turn = address.serial.lock().await;
        let failures = {
            let mut f = address.failures.lock().unwrap_or_else(|p| p.into_inner());
            if !self.within_window(f.1) {
                *f = (0, None);
            }
            f.0
        };
        if failures >= self.limits.failures_per_address_max {
            tracing::warn!(%ip, failures, "login refused unchecked: too many failures from this address");
            return LoginOutcome::Throttled;
        }
        let Ok(permit) = self.checks.clone().acquire_owned().await else {
            return LoginOutcome::Rejected;
        };
        let (users, memories, login_owned, password) = (
            self.users.clone(),
            self.memories.clone(),
            login.to_string(),
            password.to_vec(),
        );
        let user = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pop = memories.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut memory = pop.unwrap_or_default();
            let user = users.verify_with_memory(&login_owned, &password, &mut memory);
            memories
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(memory);
            user
        })
        .await
        .ok()
        .flatten();
        let delay = {
            let mut f = address.failures.lock().unwrap_or_else(|p| p.into_inner());
            if user.is_some() {
                *f = (0, None);
                Duration::ZERO
            } else {
                f.0 += 1;
                f.1 = Some(self.clock.now_ms());
                (self.limits.failure_delay * f.0).min(self.limits.failure_delay_max)
            }
        };
        match user {
            Some(u) => LoginOutcome::Accepted(u),
            None => {
                // Slept while holding the address's turn: guesses from one place stay serial.
                tokio::time::sleep(delay).await;
                LoginOutcome::Rejected
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limits: LoginLimits) -> LoginGuard {
        let mut users = Users::new(&["example.test".to_string()]);
        users.add_spec("bob@example.test:pw", "test").unwrap();
        // The runtime's (paused) clock, so that advancing time ages the failures.
        let clock = Arc::new(mailsim_events::RuntimeClock::new(0));
        LoginGuard::new(Arc::new(users), limits, clock)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_count_per_address_across_attempts_and_then_throttle() {
        let g = guard(LoginLimits {
            failures_per_address_max: 3,
            ..LoginLimits::default()
        });
        let attacker: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.1".parse().unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(g.check(attacker, "bob", b"x").await, LoginOutcome::Rejected);
        }
        // 1 + 2 + 3 seconds of delay, whatever connection the guesses came on.
        assert!(start.elapsed() >= Duration::from_secs(6));
        assert_eq!(
            g.check(attacker, "bob", b"pw").await,
            LoginOutcome::Throttled
        );
        assert_eq!(
            g.check(other, "bob", b"pw").await,
            LoginOutcome::Accepted("bob@example.test".into())
        );
        tokio::time::advance(Duration::from_secs(16 * 60)).await;
        assert_eq!(
            g.check(attacker, "bob", b"pw").await,
            LoginOutcome::Accepted("bob@example.test".into())
        );
    }
}
