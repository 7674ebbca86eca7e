//! The run's key-value bucket: what the coordinator hands the nodes (the scenario, the plan)
//! and what the nodes say back (ready, done).

use crate::{ClusterError, check_name, nats};
use async_nats::jetstream::{Context, kv};
use std::time::Duration;

/// The run's bucket name.
pub fn bucket_name(run: &str) -> String {
    format!("mailsim_{run}")
}

/// The run's bucket, created on first use. The bucket's stream is made here, as the KV
/// client would make it: the client's own `create_key_value` first asks the account's
/// limits in a form nats-server 2.9 does not answer.
pub async fn bucket(js: &Context, run: &str) -> Result<kv::Store, ClusterError> {
    check_name("run id", run)?;
    let name = bucket_name(run);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(nats)?;
    js.get_key_value(&name).await.map_err(nats)
}

/// The value of `key`, waited for (polled) until `within` has passed.
pub async fn wait_for(
    kv: &kv::Store,
    key: &str,
    within: Duration,
) -> Result<bytes::Bytes, ClusterError> {
    // On the runtime's timer (one past what the clock can hold is none).
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    // A failed read (the server restarting, a timeout) is tried again until the deadline,
    // and named if it is the last word.
    loop {
        let last_error = match kv.get(key).await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        tokio::select! {
            biased;
            () = &mut deadline => {
                let why = last_error.map_or_else(String::new, |e| format!(" (last read: {e})"));
                return Err(ClusterError::Nats(format!(
                    "no {key:?} in the run's bucket within {within:?}{why}"
                )));
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// How long a put is tried again after failing (NATS restarting, a timeout).
pub const PUT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Put `value` at `key`, trying again for up to [`PUT_RETRY_MAX`].
pub async fn put(
    kv: &kv::Store,
    key: &str,
    value: impl Into<bytes::Bytes>,
) -> Result<(), ClusterError> {
    let value = value.into();
    let deadline = tokio::time::sleep(PUT_RETRY_MAX);
    tokio::pin!(deadline);
    loop {
        match kv.put(key, value.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => tokio::select! {
                biased;
                () = &mut deadline => {
                    return Err(ClusterError::Nats(format!("putting {key:?}: {e}")));
                }
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            },
        }
    }
}

/// The value at `key` now, if any.
pub async fn get(kv: &kv::Store, key: &str) -> Result<Option<bytes::Bytes>, ClusterError> {
    kv.get(key).await.map_err(nats)
}
