//! `Idempotency-Key`: the first answer to a key is stored as an event in a stream of its own
//! (`idempotency-<uuid v5 of the key>`), and a repeat of the same request gets it back without
//! running anything; the same key with another request is refused.
//!
//! Crash safety comes from the command id: a request with a key runs its command with an id
//! derived from the key, so its events get derived ids. If the process dies after the command's
//! append but before the answer is stored, the retry finds the command already executed (the
//! repository's command-id idempotency) and answers as the first run would have: nothing is
//! appended twice.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sirenia::store::Direction;
use sirenia::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamId, StreamWrite};
use uuid::Uuid;

use crate::outcome::Outcome;

/// The longest `Idempotency-Key`, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Namespace of the key → stream-name ids.
const KEYS: Uuid = Uuid::from_u128(0x6b1f_3f0e_5c2a_4f43_9d1e_8a7b_2c4d_6e01);
/// Namespace of the key → command ids.
const COMMANDS: Uuid = Uuid::from_u128(0x6b1f_3f0e_5c2a_4f43_9d1e_8a7b_2c4d_6e02);

/// The category of the streams holding stored answers.
pub const CATEGORY: &str = "idempotency";
/// The event type of a stored answer.
pub const EVENT_TYPE: &str = "IdempotentAnswer";

/// A stored answer and the request it answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `{"method", "path", "body"}` of the first request.
    pub request: Value,
    /// Its answer.
    pub response: Outcome,
}

/// The command id a request with `key` runs its command under.
pub fn command_id(key: &str) -> Uuid {
    Uuid::new_v5(&COMMANDS, key.as_bytes())
}

fn stream(key: &str) -> Result<StreamId, StoreError> {
    StreamId::for_aggregate(CATEGORY, Uuid::new_v5(&KEYS, key.as_bytes())).map_err(|e| {
        StoreError::Corrupt {
            message: format!("idempotency stream name: {e}"),
        }
    })
}

/// The answer stored for `key`, if any.
pub async fn find<S: EventStore>(store: &S, key: &str) -> Result<Option<Record>, StoreError> {
    let page = store
        .read_stream_page(&stream(key)?, 0, Direction::Forward, 1)
        .await?;
    page.first()
        .map(|event| {
            serde_json::from_slice(&event.data).map_err(|e| StoreError::Corrupt {
                message: format!("stored idempotent answer: {e}"),
            })
        })
        .transpose()
}

/// Stores `record` as the answer to `key` and returns the answer that holds: `record`, or the
/// one a concurrent request with the same key stored first.
pub async fn store<S: EventStore>(
    store: &S,
    key: &str,
    record: Record,
) -> Result<Record, StoreError> {
    let data = serde_json::json!({ "request": &record.request, "response": &record.response });
    let event = NewEvent::json(EVENT_TYPE, &data);
    let write = StreamWrite::new(stream(key)?, ExpectedVersion::NoStream, vec![event]);
    match store.append(vec![write]).await {
        Ok(_) => Ok(record),
        Err(StoreError::Conflict { .. }) => find(store, key).await?.ok_or(StoreError::Corrupt {
            message: "an idempotency stream exists but holds no answer".to_owned(),
        }),
        Err(e) => Err(e),
    }
}
