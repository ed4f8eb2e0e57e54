//! `Idempotency-Key`: the first answer to a key is stored as an event in a stream of its own
//! (`idempotency-<uuid v5 of the key>`), and a repeat of the same request gets it back without
//! running anything; the same key with another request is refused.
//!
//! Crash safety comes from the command id: a request with a key runs its command with an id
//! derived from the key, so its events get derived ids. If the process dies after the command's
//! append but before the answer is stored, the retry finds the command already executed (the
//! repository's command-id idempotency) and answers as the first run would have: nothing is
//! appended twice.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sirenia::store::Direction;
use sirenia::{
    EventStore, ExpectedVersion, NewEvent, Repository, StoreError, StreamId, StreamWrite,
};
use uuid::Uuid;

use crate::error::{ApiError, store_error};
use crate::operation::{Answers, Done, Plan};
use crate::outcome::{Answer, Outcome};

/// The longest `Idempotency-Key`, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Namespace of the key → stream-name ids.
const KEYS: Uuid = Uuid::from_u128(0x6b1f_3f0e_5c2a_4f43_9d1e_8a7b_2c4d_6e01);
/// Namespace of the key → command ids.
const COMMANDS: Uuid = Uuid::from_u128(0x6b1f_3f0e_5c2a_4f43_9d1e_8a7b_2c4d_6e02);
/// Namespace of the request fingerprints.
const REQUESTS: Uuid = Uuid::from_u128(0x1d3c_8f2e_4a6b_4c0d_9e7f_5a3b_2c1d_0e01);

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

/// A request with an `Idempotency-Key`: the key, the command id derived from it, and the
/// request's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyed {
    key: String,
    command_id: Uuid,
    request: Value,
}

impl Keyed {
    /// `request` (route, body, …: see [`crate::operation::Operation::request`]) under `key`.
    pub fn new(key: &str, request: &Value) -> Self {
        // Kept as a fingerprint: a short value, however large or deep the body.
        let fingerprint = Uuid::new_v5(&REQUESTS, &serde_json::to_vec(request).unwrap_or_default());
        Keyed {
            key: key.to_owned(),
            command_id: command_id(key),
            request: Value::String(fingerprint.to_string()),
        }
    }

    /// The command id the request runs its command under.
    pub fn command_id(&self) -> Uuid {
        self.command_id
    }

    /// `stored` as the answer to this request, or 422 if it answered another request.
    fn replay(&self, stored: Record, replayed: bool) -> Result<Answer, ApiError> {
        if stored.request != self.request {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for another request",
            ));
        }
        Ok(Answer {
            outcome: stored.response,
            replayed,
        })
    }
}

/// Runs `plan` (or answers its refusal) once per key: without a key it just runs; with one, a
/// stored answer to the same request is replayed, one to another request is refused (422), and
/// a new answer is stored before it is sent, unless it is transient (5xx, or 409 after too much
/// contention: a retry with the key runs again).
pub async fn execute<A, S>(
    repository: &Repository<A, S>,
    keyed: Option<&Keyed>,
    plan: Result<Plan<A>, ApiError>,
) -> Result<Answer, ApiError>
where
    A: Answers,
    A::Command: Clone,
    S: EventStore,
{
    let Some(keyed) = keyed else {
        let outcome = match plan {
            Ok(plan) => run(repository, plan, None).await,
            Err(e) => e.into(),
        };
        return Ok(Answer {
            outcome,
            replayed: false,
        });
    };
    let store = repository.store();
    if let Some(stored) = find(store, &keyed.key).await.map_err(|e| store_error(&e))? {
        return keyed.replay(stored, true);
    }
    let outcome = match plan {
        Ok(plan) => run(repository, plan, Some(keyed.command_id)).await,
        Err(e) => e.into(),
    };
    if outcome.status().is_server_error() || outcome.status() == StatusCode::CONFLICT {
        return Ok(Answer {
            outcome,
            replayed: false,
        });
    }
    let record = Record {
        request: keyed.request.clone(),
        response: outcome.clone(),
    };
    let stored = self::store(store, &keyed.key, record)
        .await
        .map_err(|e| store_error(&e))?;
    let replayed = stored.response != outcome;
    keyed.replay(stored, replayed)
}

/// Runs `plan` through the repository: with `command_id`, a command that already ran answers
/// as it did then.
async fn run<A, S>(
    repository: &Repository<A, S>,
    plan: Plan<A>,
    command_id: Option<Uuid>,
) -> Outcome
where
    A: Answers,
    A::Command: Clone,
    S: EventStore,
{
    let context = match command_id {
        Some(id) => plan.context.command_id(id),
        None => plan.context.causation_id(Uuid::now_v7().to_string()),
    };
    match repository
        .execute_with(&plan.id, plan.command, &context)
        .await
    {
        Ok(executed) => (plan.answer)(&Done {
            id: &plan.id,
            state: &executed.state,
            version: executed.version,
            position: executed.last_position,
        }),
        Err(e) => A::refusal(&e).into(),
    }
}
