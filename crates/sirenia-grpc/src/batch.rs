//! `BatchAppend`: many appends on one bidirectional call, each assembled from one or more
//! requests sharing a correlation id and answered (in completion order) with that id. Clients
//! that see it advertised append through it; each finished append is one store append.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::SystemTime;

use sirenia_core::{EventStore, ExpectedVersion, Limit, StoreError, StreamId, StreamWrite};
use tokio::sync::{Semaphore, mpsc};
use tonic::{Code, Status, Streaming};

use crate::convert::{self, Proposed, Refused, current_revision, stream_identifier};
use crate::proto::client::{
    self as shared, AllStreamPosition, StreamIdentifier, Uuid as ProtoUuid,
};
use crate::proto::google::rpc;
use crate::proto::streams::{BatchAppendReq, BatchAppendResp, batch_append_req, batch_append_resp};
use crate::streams::{Stopping, writable};

/// Appends of one `BatchAppend` call the store works on at once; more wait.
pub const MAX_BATCH_APPENDS_IN_FLIGHT: u32 = 64;
/// Appends of one `BatchAppend` call being assembled (started, not yet final) at once; a call
/// with more is ended with RESOURCE_EXHAUSTED.
pub const MAX_BATCH_APPENDS_OPEN: usize = 1_024;
/// Bytes of event data and metadata one `BatchAppend` call may hold in appends being assembled;
/// a call with more is ended with RESOURCE_EXHAUSTED. Two appends of the largest size fit.
pub const MAX_BATCH_BYTES_OPEN: usize = 2 * sirenia_core::limits::MAX_APPEND_BYTES;
/// Responses buffered per `BatchAppend` call before appends wait for the client.
pub const BATCH_CHANNEL_CAPACITY: usize = 64;

pub(crate) type Responses = mpsc::Sender<Result<BatchAppendResp, Status>>;

/// One append being assembled.
struct Open {
    target: Result<(StreamId, ExpectedVersion), rpc::Status>,
    identifier: Option<StreamIdentifier>,
    echo: Option<batch_append_resp::ExpectedStreamPosition>,
    deadline: Option<SystemTime>,
    events: Proposed,
    /// The first thing wrong with it; the rest of its messages are read and dropped.
    failed: Option<rpc::Status>,
}

fn any<M: prost::Message>(name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{name}"),
        value: message.encode_to_vec(),
    }
}

/// A `google.rpc.Status` for a refused request: the code and message, with a `BadRequest` detail
/// (clients show the message of a detail they do not know).
fn refused(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Some(any(
            "event_store.client.BadRequest",
            &shared::BadRequest {
                message: status.message().to_owned(),
            },
        )),
    }
}

/// A store error as the status `BatchAppend` answers with, its detail the one clients map to
/// their typed errors.
fn store_error(error: StoreError) -> rpc::Status {
    match error {
        StoreError::Conflict {
            expected, actual, ..
        } => {
            use shared::wrong_expected_version::{
                CurrentStreamRevisionOption as Current, ExpectedStreamPositionOption as Expected,
            };
            let detail = shared::WrongExpectedVersion {
                current_stream_revision_option: Some(match current_revision(actual) {
                    Some(r) => Current::CurrentStreamRevision(r),
                    None => Current::CurrentNoStream(()),
                }),
                expected_stream_position_option: Some(match expected {
                    ExpectedVersion::Exact(v) => {
                        Expected::ExpectedStreamPosition(v.saturating_sub(1))
                    }
                    ExpectedVersion::Any => Expected::ExpectedAny(()),
                    ExpectedVersion::StreamExists => Expected::ExpectedStreamExists(()),
                    ExpectedVersion::NoStream => Expected::ExpectedNoStream(()),
                }),
            };
            rpc::Status {
                code: Code::FailedPrecondition as i32,
                message: "wrong expected version".to_owned(),
                details: Some(any("event_store.client.WrongExpectedVersion", &detail)),
            }
        }
        StoreError::StreamTombstoned { stream } => rpc::Status {
            code: Code::FailedPrecondition as i32,
            message: format!("stream {stream} is deleted"),
            details: Some(any(
                "event_store.client.StreamDeleted",
                &shared::StreamDeleted {
                    stream_identifier: Some(stream_identifier(&stream)),
                },
            )),
        },
        StoreError::LimitExceeded {
            limit: Limit::AppendBytes,
            max,
            ..
        } => rpc::Status {
            code: Code::InvalidArgument as i32,
            message: error.to_string(),
            details: Some(any(
                "event_store.client.MaximumAppendSizeExceeded",
                &shared::MaximumAppendSizeExceeded {
                    max_append_size: u32::try_from(max).unwrap_or(u32::MAX),
                },
            )),
        },
        other => refused(&convert::status(other)),
    }
}

fn timed_out() -> rpc::Status {
    rpc::Status {
        code: Code::DeadlineExceeded as i32,
        message: "the append's deadline passed before it could be written".to_owned(),
        details: Some(any("event_store.client.Timeout", &shared::Timeout {})),
    }
}

fn deadline(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(seconds, nanos))
}

/// The stream and expectation of an append's first request.
fn target(options: &batch_append_req::Options) -> Result<(StreamId, ExpectedVersion), Status> {
    use batch_append_req::options::ExpectedStreamPosition as E;
    let stream = writable(convert::stream_id(options.stream_identifier.as_ref())?)?;
    let expected = match options.expected_stream_position {
        Some(E::StreamPosition(r)) => convert::exact_revision(r)?,
        Some(E::NoStream(())) => ExpectedVersion::NoStream,
        Some(E::Any(())) => ExpectedVersion::Any,
        Some(E::StreamExists(())) => ExpectedVersion::StreamExists,
        None => {
            return Err(Status::invalid_argument(
                "the expected stream position is missing",
            ));
        }
    };
    Ok((stream, expected))
}

fn echo(options: &batch_append_req::Options) -> Option<batch_append_resp::ExpectedStreamPosition> {
    use batch_append_req::options::ExpectedStreamPosition as E;
    use batch_append_resp::ExpectedStreamPosition as R;
    options.expected_stream_position.map(|e| match e {
        E::StreamPosition(r) => R::StreamPosition(r),
        E::NoStream(()) => R::NoStream(()),
        E::Any(()) => R::Any(()),
        E::StreamExists(()) => R::StreamExists(()),
    })
}

/// Reads the call's requests, assembles appends and runs each when its last request arrives;
/// returns once the client has finished (or gone, or the server is shutting down) and every
/// append started has been answered.
pub(crate) async fn run<S: EventStore>(
    store: S,
    mut requests: Streaming<BatchAppendReq>,
    tx: Responses,
    stopping: Stopping,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCH_APPENDS_IN_FLIGHT as usize));
    let mut open: HashMap<uuid::Uuid, Open> = HashMap::new();
    // Bytes held by the appends being assembled.
    let mut open_bytes = 0usize;
    let ended: Option<Status> = loop {
        let request = tokio::select! {
            request = requests.message() => request,
            () = stopping.wait() => break Some(Status::unavailable("the server is shutting down")),
            () = tx.closed() => break None,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => break None,
            Err(status) => break Some(status),
        };
        let Some(correlation) = request.correlation_id.clone() else {
            break Some(Status::invalid_argument(
                "a batch append request has no correlation id",
            ));
        };
        let key = match convert::uuid_of(Some(&correlation)) {
            Ok(key) => key,
            Err(status) => break Some(status),
        };
        let full = open.len() >= MAX_BATCH_APPENDS_OPEN;
        let entry = match open.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(vacant) => {
                // Checked before anything is held: an append sent whole always goes through.
                if full && !request.is_final {
                    break Some(Status::resource_exhausted(format!(
                        "more than {MAX_BATCH_APPENDS_OPEN} appends open on one call"
                    )));
                }
                let options = request.options.clone().unwrap_or_default();
                let target = match &request.options {
                    Some(options) => target(options).map_err(|s| refused(&s)),
                    None => Err(refused(&Status::invalid_argument(
                        "an append's first request carries its options",
                    ))),
                };
                vacant.insert(Open {
                    identifier: options.stream_identifier.clone(),
                    echo: echo(&options),
                    deadline: options.deadline.as_ref().and_then(deadline),
                    target,
                    events: Proposed::default(),
                    failed: None,
                })
            }
        };
        let before = entry.events.bytes();
        for proposed in request.proposed_messages {
            // A refused append keeps reading its messages, and drops them.
            if entry.failed.is_some() || entry.target.is_err() {
                break;
            }
            if let Err(refusal) = entry.events.push(
                proposed.id.as_ref(),
                proposed.metadata,
                &proposed.custom_metadata,
                proposed.data,
            ) {
                entry.failed = Some(match refusal {
                    Refused::Store(error) => store_error(error),
                    Refused::Request(status) => refused(&status),
                });
                entry.events = Proposed::default();
            }
        }
        open_bytes = (open_bytes + entry.events.bytes()).saturating_sub(before);
        if open_bytes > MAX_BATCH_BYTES_OPEN {
            break Some(Status::resource_exhausted(format!(
                "more than {MAX_BATCH_BYTES_OPEN} bytes of appends open on one call"
            )));
        }
        if !request.is_final {
            continue;
        }
        let Some(done) = open.remove(&key) else {
            continue;
        };
        open_bytes = open_bytes.saturating_sub(done.events.bytes());
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit,
            () = stopping.wait() => break Some(Status::unavailable("the server is shutting down")),
            () = tx.closed() => break None,
        };
        let Ok(permit) = permit else {
            break Some(Status::internal("the batch append's semaphore closed"));
        };
        let (store, tx, stopping) = (store.clone(), tx.clone(), stopping.clone());
        tokio::spawn(async move {
            let response = append(&store, correlation, done).await;
            // A client that stops reading must not hold the server's shutdown.
            tokio::select! {
                _ = tx.send(Ok(response)) => {}
                () = stopping.wait() => {}
            }
            drop(permit);
        });
    };
    drop(open);
    // Every append started is answered (or given up at shutdown) before the call ends.
    let _ = in_flight.acquire_many(MAX_BATCH_APPENDS_IN_FLIGHT).await;
    if let Some(status) = ended {
        tokio::select! {
            _ = tx.send(Err(status)) => {}
            () = stopping.wait() => {}
        }
    }
}

async fn append<S: EventStore>(store: &S, correlation: ProtoUuid, open: Open) -> BatchAppendResp {
    let Open {
        target,
        identifier,
        echo,
        deadline,
        events,
        failed,
    } = open;
    let respond = |result| BatchAppendResp {
        correlation_id: Some(correlation.clone()),
        result: Some(result),
        // Clients read the stream name of every answer, refused ones included.
        stream_identifier: Some(identifier.clone().unwrap_or_default()),
        expected_stream_position: echo,
    };
    if let Some(status) = failed {
        return respond(batch_append_resp::Result::Error(status));
    }
    let (stream, expected) = match target {
        Ok(target) => target,
        Err(status) => return respond(batch_append_resp::Result::Error(status)),
    };
    if deadline.is_some_and(|d| SystemTime::now() > d) {
        return respond(batch_append_resp::Result::Error(timed_out()));
    }
    let write = StreamWrite::new(stream, expected, events.into_events());
    match store.append(vec![write]).await {
        Err(error) => respond(batch_append_resp::Result::Error(store_error(error))),
        Ok(result) => {
            use batch_append_resp::success::{CurrentRevisionOption, PositionOption};
            let version = result.streams.first().map(|s| s.version);
            let current = match current_revision(version) {
                Some(r) => CurrentRevisionOption::CurrentRevision(r),
                None => CurrentRevisionOption::NoStream(()),
            };
            let position = match result.last_position() {
                Some(p) => PositionOption::Position(AllStreamPosition {
                    commit_position: p.get(),
                    prepare_position: p.get(),
                }),
                None => PositionOption::NoPosition(()),
            };
            respond(batch_append_resp::Result::Success(
                batch_append_resp::Success {
                    current_revision_option: Some(current),
                    position_option: Some(position),
                },
            ))
        }
    }
}
