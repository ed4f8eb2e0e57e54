//! `Idempotency-Key`: the first answer to a key is stored as an event in a stream of its own
//! (`idempotency-<uuid v5 of the key>`), and a repeat of the same request gets it back without
//! running anything; the same key with another request is refused. [`execute`] is the one
//! wrapper every operation runs through.
//!
//! A command run under a key has an id derived from the key, so its events get derived ids,
//! and its answer is appended **in the same append** as its events: both are stored or
//! neither is, so a request whose key has no answer stored has not taken effect, and a keyed
//! command needs no lookup of its command id (one read and one synced append fewer than
//! storing the answer afterwards). The answer's `position` is not known before that append
//! commits: it is stored as `null` with the id of the event it is the position of
//! ([`Record::position_of`]), and a replay looks that event up.
//!
//! Answers without events (a refused command, an If-Match conflict) are appended alone. Two
//! requests with one key racing each other append the same ids with the same content (the
//! store takes the second as a repeat of the first), or one of them finds its write refused and
//! replays the answer the other stored. Events of a keyed command stored without an answer
//! (as an earlier version of the service, storing answers afterwards, could leave after a
//! crash) are found through the repository's command-id idempotency.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sirenia::limits::MAX_EVENTS_PER_COMMAND;
use sirenia::store::Direction;
use sirenia::{
    CommandError, EventId, EventStore, ExpectedVersion, NewEvent, Repository, RetryBackoff,
    StoreError, StreamId, StreamWrite,
};
use uuid::Uuid;

use crate::error::{ApiError, store_error};
use crate::http::COMMAND_RETRIES;
use crate::operation::{Answers, Done, Plan};
use crate::outcome::{Answer, Outcome};

/// The longest `Idempotency-Key`, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Namespace of the key → stream-name ids.
const KEYS: Uuid = Uuid::from_u128(0x6b1f_3f0e_5c2a_4f43_9d1e_8a7b_2c4d_6e01);
/// Namespace of the key → command ids.
const COMMANDS: Uuid = Uuid::from_u128(0x6b1f_3f0e_5c2a_4f43_9d1e_8a7b_2c4d_6e02);
/// Namespace of the key → stored-answer event ids.
const ANSWERS: Uuid = Uuid::from_u128(0x6b1f_3f0e_5c2a_4f43_9d1e_8a7b_2c4d_6e03);
/// Namespace of the request fingerprints.
const REQUESTS: Uuid = Uuid::from_u128(0x1d3c_8f2e_4a6b_4c0d_9e7f_5a3b_2c1d_0e01);

/// The category of the streams holding stored answers.
pub const CATEGORY: &str = "idempotency";
/// The event type of a stored answer.
pub const EVENT_TYPE: &str = "IdempotentAnswer";

/// A stored answer and the request it answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The fingerprint of the first request.
    pub request: Value,
    /// Its answer.
    pub response: Outcome,
    /// For an answer stored with the command's events: the event whose position is the
    /// answer's `position` (stored as `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_of: Option<EventId>,
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

/// Whether `outcome` is transient: not the request's answer, so not stored (5xx, or 409 after
/// too much contention: a retry with the key runs again).
fn transient(outcome: &Outcome) -> bool {
    outcome.status().is_server_error() || outcome.status() == StatusCode::CONFLICT
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

    /// The write storing `response` as the key's answer. Its event id follows from the key, so
    /// the same answer stored twice is one event.
    fn write(
        &self,
        response: &Outcome,
        position_of: Option<EventId>,
    ) -> Result<StreamWrite, ApiError> {
        let record = Record {
            request: self.request.clone(),
            response: response.clone(),
            position_of,
        };
        let data = serde_json::to_value(&record).map_err(|e| ApiError::internal(&e))?;
        let mut event = NewEvent::json(EVENT_TYPE, &data);
        event.id = EventId(Uuid::new_v5(&ANSWERS, self.key.as_bytes()));
        let stream = stream(&self.key).map_err(|e| store_error(&e))?;
        Ok(StreamWrite::new(
            stream,
            ExpectedVersion::NoStream,
            vec![event],
        ))
    }

    /// The answer stored for the key, if any: replayed (`replayed` says whether to mark it so),
    /// or 422 if it answered another request.
    async fn stored<S: EventStore>(
        &self,
        store: &S,
        replayed: impl FnOnce(&Outcome) -> bool,
    ) -> Result<Option<Answer>, ApiError> {
        let Some(record) = find(store, &self.key).await.map_err(|e| store_error(&e))? else {
            return Ok(None);
        };
        if record.request != self.request {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for another request",
            ));
        }
        let mut outcome = record.response;
        if let Some(id) = record.position_of {
            let event = store.event_by_id(id).await.map_err(|e| store_error(&e))?;
            let Some(event) = event else {
                return Err(store_error(&StoreError::Corrupt {
                    message: format!("a stored answer names event {id}, which is not stored"),
                }));
            };
            outcome.body["position"] = json!(event.position.0);
        }
        let replayed = replayed(&outcome);
        Ok(Some(Answer { outcome, replayed }))
    }

    /// Stores `outcome` alone as the key's answer, unless it is transient; if another request
    /// with the key stored one first, that one is the answer.
    async fn settle<S: EventStore>(&self, store: &S, outcome: Outcome) -> Result<Answer, ApiError> {
        if transient(&outcome) {
            return Ok(Answer {
                outcome,
                replayed: false,
            });
        }
        match store.append(vec![self.write(&outcome, None)?]).await {
            Ok(_) => Ok(Answer {
                outcome,
                replayed: false,
            }),
            Err(StoreError::Conflict { .. } | StoreError::EventIdReused { .. }) => self
                .stored(store, |stored| *stored != outcome)
                .await?
                .ok_or_else(|| {
                    store_error(&StoreError::Corrupt {
                        message: "an idempotency stream exists but holds no answer".to_owned(),
                    })
                }),
            Err(e) => Err(store_error(&e)),
        }
    }
}

/// Runs `plan` (or answers its refusal) once per key: without a key it just runs; with one, a
/// stored answer to the same request is replayed, one to another request is refused (422), and
/// a new answer is stored (with the command's events, or alone) before it is sent, unless it is
/// transient (5xx, or 409 after too much contention).
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
    if let Some(answer) = keyed.stored(store, |_| true).await? {
        return Ok(answer);
    }
    match plan {
        Ok(plan) => run_keyed(repository, keyed, plan).await,
        Err(e) => keyed.settle(store, e.into()).await,
    }
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

/// Runs `plan` under `keyed`'s command id as the repository would (load, decide, append at the
/// loaded version, retry on conflicts), with the answer in the command's append.
#[tracing::instrument(
    name = "sirenia.command",
    skip_all,
    fields(
        aggregate = A::CATEGORY,
        id = %plan.id,
        correlation_id = plan.context.metadata.correlation_id.as_deref(),
        command_id = %keyed.command_id,
    )
)]
async fn run_keyed<A, S>(
    repository: &Repository<A, S>,
    keyed: &Keyed,
    plan: Plan<A>,
) -> Result<Answer, ApiError>
where
    A: Answers,
    A::Command: Clone,
    S: EventStore,
{
    let store = repository.store();
    let refused = |e: CommandError<A::Error>| Outcome::from(A::refusal(&e));
    let stream = match repository.stream_id(&plan.id) {
        Ok(stream) => stream,
        Err(e) => return keyed.settle(store, refused(e.into())).await,
    };
    let command_id = keyed.command_id;
    let mut metadata = plan.context.metadata.clone();
    if metadata.causation_id.is_none() {
        metadata.causation_id = Some(command_id.to_string());
    }
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let loaded = match repository.load(&plan.id).await {
            Ok(loaded) => loaded,
            Err(e) => return keyed.settle(store, refused(e.into())).await,
        };
        let decided = match plan.context.expected_version {
            Some(expected) if loaded.version != expected => Err(CommandError::Conflict {
                stream: stream.clone(),
                expected,
                actual: (loaded.version > 0).then_some(loaded.version),
            }),
            _ => loaded
                .state
                .handle(plan.command.clone())
                .map_err(CommandError::Rejected),
        };
        let events = match decided {
            Ok(events) if events.len() > MAX_EVENTS_PER_COMMAND => {
                let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
                return keyed
                    .settle(store, refused(CommandError::TooManyEvents(count)))
                    .await;
            }
            Ok(events) => events,
            Err(e) => return keyed.settle(store, refused(e)).await,
        };
        let mut state = loaded.state;
        for event in &events {
            state.apply(event);
        }
        let done = Done {
            id: &plan.id,
            state: &state,
            version: loaded.version + events.len() as u64,
            position: None,
        };
        let mut outcome = (plan.answer)(&done);
        if events.is_empty() {
            return keyed.settle(store, outcome).await;
        }
        let mut new_events = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            // `i` is below MAX_EVENTS_PER_COMMAND, far below u32::MAX.
            let id = EventId::derived(command_id, u32::try_from(i).unwrap_or(u32::MAX));
            match repository.codec().to_new_event(event, id, metadata.clone()) {
                Ok(event) => new_events.push(event),
                Err(e) => return keyed.settle(store, refused(e.into())).await,
            }
        }
        let last = new_events.last().map(|e| e.id);
        let position_of = last.filter(|_| outcome.body.get("position").is_some());
        let writes = vec![
            StreamWrite::new(
                stream.clone(),
                ExpectedVersion::Exact(loaded.version),
                new_events,
            ),
            keyed.write(&outcome, position_of)?,
        ];
        match store.append(writes).await {
            Ok(result) => {
                if position_of.is_some() {
                    let position = result.streams.first().and_then(|s| s.last_position);
                    outcome.body["position"] = json!(position.map(|p| p.0));
                }
                return Ok(Answer {
                    outcome,
                    replayed: false,
                });
            }
            // The account moved since it was loaded.
            Err(StoreError::Conflict {
                stream: moved,
                actual,
                ..
            }) if moved == stream => {
                if let Some(expected) = plan.context.expected_version {
                    let conflict = CommandError::Conflict {
                        stream,
                        expected,
                        actual,
                    };
                    return keyed.settle(store, refused(conflict)).await;
                }
                if attempts > COMMAND_RETRIES {
                    let contention = CommandError::TooManyConflicts { stream, attempts };
                    return keyed.settle(store, refused(contention)).await;
                }
                let wait = RetryBackoff::default().delay(attempts);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                // Another request with this key may be what moved it.
                if let Some(answer) = keyed.stored(store, |_| true).await? {
                    return Ok(answer);
                }
            }
            // The key's answer, or the command's events, are stored already: another request
            // with this key got there first.
            Err(StoreError::Conflict { .. } | StoreError::EventIdReused { .. }) => {
                if let Some(answer) = keyed.stored(store, |_| true).await? {
                    return Ok(answer);
                }
                // Events without an answer: the repository finds the first run's outcome.
                let outcome = run(repository, plan, Some(command_id)).await;
                return keyed.settle(store, outcome).await;
            }
            Err(e) => return keyed.settle(store, refused(e.into())).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sirenia::InMemoryStore;

    use super::*;

    /// Answers stored by the earlier version (after the events, with the position in the
    /// body, as `{"request", "response"}`) replay as they are.
    #[tokio::test]
    async fn answers_stored_with_their_position_replay_as_stored() {
        let store = InMemoryStore::new();
        let keyed = Keyed::new("old", &json!({ "method": "POST", "path": "/accounts" }));
        let response = Outcome::new(
            StatusCode::OK,
            json!({ "id": "x", "version": 2, "position": 7, "balance": 5 }),
        );
        let data = json!({ "request": &keyed.request, "response": &response });
        let write = StreamWrite::new(
            stream("old").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::json(EVENT_TYPE, &data)],
        );
        store.append(vec![write]).await.unwrap();
        let answer = keyed.stored(&store, |_| true).await.unwrap().unwrap();
        assert_eq!((answer.outcome, answer.replayed), (response, true));
        let other = Keyed::new("old", &json!({ "method": "POST", "path": "/transfers" }));
        let refused = other.stored(&store, |_| true).await.unwrap_err();
        assert_eq!(refused.code, "idempotency_key_reused");
    }
}
