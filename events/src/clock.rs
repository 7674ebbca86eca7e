//! The clock seam. Logic never reads the wall clock directly: it asks a [`Clock`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The live clock: the operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// A clock that always answers the same instant, for tests and fixed-time signing.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

/// Virtual time: the async runtime's clock (paused in virtual mode, so it jumps straight to the
/// next timer), counted from a fixed epoch so that a run reads the same instants every time.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeClock {
    epoch_ms: u64,
    start: tokio::time::Instant,
}

impl RuntimeClock {
    /// Must be called inside the runtime whose clock it reads.
    pub fn new(epoch_ms: u64) -> Self {
        RuntimeClock {
            epoch_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for RuntimeClock {
    fn now_ms(&self) -> u64 {
        self.epoch_ms + self.start.elapsed().as_millis() as u64
    }
}
