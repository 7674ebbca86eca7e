//! The queue state at the end of a log: every (message, recipient) not yet final, with its
//! attempts, next retry and last failure. Rebuilt from the event log alone.

use mailsim_events::{Event, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub msg: u64,
    pub rcpt: String,
    pub domain: String,
    pub attempts: u32,
    /// When the next attempt is due (ms since the Unix epoch); absent before the first attempt.
    pub retry_at_ms: Option<u64>,
    pub last_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub messages: BTreeMap<u64, QueuedMessage>,
}

impl QueueState {
    pub fn fold<R: std::borrow::Borrow<Record>>(
        records: impl IntoIterator<Item = R>,
    ) -> QueueState {
        let mut q = QueueState::default();
        for r in records {
            let r = r.borrow();
            match &r.event {
                Event::Injected {
                    msg, rcpt, domain, ..
                } => {
                    q.messages.insert(
                        *msg,
                        QueuedMessage {
                            msg: *msg,
                            rcpt: rcpt.clone(),
                            domain: domain.clone(),
                            attempts: 0,
                            retry_at_ms: None,
                            last_reason: None,
                        },
                    );
                }
                Event::Deferred {
                    msg,
                    attempts,
                    retry_at_ms,
                    reason,
                    ..
                } => {
                    if let Some(m) = q.messages.get_mut(msg) {
                        m.attempts = *attempts;
                        m.retry_at_ms = Some(*retry_at_ms);
                        m.last_reason = Some(reason.clone());
                    }
                }
                Event::Delivered { msg, .. }
                | Event::Bounced { msg, .. }
                | Event::Expired { msg, .. } => {
                    q.messages.remove(msg);
                }
                _ => {}
            }
        }
        q
    }
}
