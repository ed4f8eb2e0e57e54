//! The oracle property test: random sequences of appends, reads and stream lifecycle changes
//! (soft delete, truncate, tombstone) run against a store and the [`InMemoryStore`], which must
//! answer identically.
//!
//! Positions are compared by rank (their index in the store's whole log), so a store whose
//! positions have holes (a PostgreSQL sequence after a rollback) still compares equal; order is
//! compared exactly. Timestamps are not compared.

use std::collections::HashMap;
use std::future::Future;

use futures_util::TryStreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::json;
use sirenia_core::{
    AppendResult, EventFilter, EventId, EventStore, ExpectedVersion, InMemoryStore, Metadata,
    NewEvent, Position, ReadAll, ReadStream, RecordedEvent, StoreError, StreamChange, StreamId,
    StreamInfo, StreamWrite, Uuid,
};

/// The number of cases the property test runs unless `SIRENIA_PROPTEST_CASES` says otherwise.
pub const DEFAULT_CASES: u32 = 64;

const STREAMS: [&str; 4] = ["alpha-0", "alpha-1", "beta-0", "beta-1"];
const CATEGORIES: [&str; 2] = ["alpha", "beta"];
const TYPES: [&str; 3] = ["A", "B", "C"];

#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
    /// Exactly the oracle's current version: a likely success.
    Current,
}

#[derive(Clone, Debug)]
struct WriteSpec {
    stream: usize,
    expect: Expect,
    events: Vec<(usize, u8)>,
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<WriteSpec>),
    Repeat(usize),
    RepeatAltered(usize),
    ReadStream {
        stream: usize,
        backward: bool,
        from: u64,
        limit: Option<u64>,
        page: usize,
    },
    ReadAll {
        backward: bool,
        from_rank: Option<usize>,
        categories: u8,
        types: u8,
        limit: Option<u64>,
        page: usize,
    },
    Version(usize),
    ById(usize),
    /// A lifecycle change: 0 delete, 1 truncate before `before`, 2 tombstone.
    Change {
        stream: usize,
        kind: u8,
        expect: Expect,
        before: u64,
    },
}

fn expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        1 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        1 => Just(Expect::StreamExists),
        1 => (0u64..6).prop_map(Expect::Exact),
        4 => Just(Expect::Current),
    ]
}

fn write_strategy() -> impl Strategy<Value = WriteSpec> {
    (
        0..STREAMS.len(),
        expect_strategy(),
        prop::collection::vec((0..TYPES.len(), any::<u8>()), 0..4),
    )
        .prop_map(|(stream, expect, events)| WriteSpec {
            stream,
            expect,
            events,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let limit = prop::option::of(0u64..8);
    prop_oneof![
        6 => prop::collection::vec(write_strategy(), 1..3).prop_map(Op::Append),
        1 => any::<usize>().prop_map(Op::Repeat),
        1 => any::<usize>().prop_map(Op::RepeatAltered),
        2 => (0..STREAMS.len(), any::<bool>(), prop_oneof![0u64..12, Just(u64::MAX)], limit.clone(), 1usize..5)
            .prop_map(|(stream, backward, from, limit, page)| Op::ReadStream { stream, backward, from, limit, page }),
        2 => (any::<bool>(), prop::option::of(0usize..40), 0u8..4, 0u8..8, limit, 1usize..6)
            .prop_map(|(backward, from_rank, categories, types, limit, page)| Op::ReadAll {
                backward, from_rank, categories, types, limit, page,
            }),
        1 => (0..STREAMS.len()).prop_map(Op::Version),
        1 => any::<usize>().prop_map(Op::ById),
        1 => (0..STREAMS.len(), prop_oneof![2 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)], expect_strategy(), 0u64..8)
            .prop_map(|(stream, kind, expect, before)| Op::Change { stream, kind, expect, before }),
    ]
}

/// An event as compared: rank instead of position, no timestamp, JSON payloads parsed.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    rank: usize,
    stream: String,
    revision: u64,
    id: EventId,
    event_type: String,
    schema_version: u16,
    content_type: String,
    payload: serde_json::Value,
    metadata: Metadata,
}

/// One stream's append result: stream, first revision, version, first and last position ranks.
type Appended = (String, u64, u64, Option<usize>, Option<usize>);

#[derive(Debug, PartialEq)]
enum Outcome {
    Append(Result<Vec<Appended>, String>),
    Events(Result<Vec<Seen>, String>),
    Version(Result<Option<u64>, String>),
    ById(Option<Seen>),
    Change(Result<Option<StreamInfo>, String>),
}

/// Raw outcomes keep positions until the log is known and ranks can be given.
enum Raw {
    Append(Result<AppendResult, StoreError>),
    Events(Result<Vec<RecordedEvent>, StoreError>),
    Version(Result<Option<u64>, StoreError>),
    ById(Option<RecordedEvent>),
    Change(Result<Option<StreamInfo>, StoreError>),
}

fn describe(e: &StoreError) -> String {
    match e {
        StoreError::Conflict {
            stream,
            expected,
            actual,
        } => format!("conflict on {stream}: expected {expected:?}, actual {actual:?}"),
        StoreError::EventIdReused { existing, .. } => {
            format!("event id reused (stored in {})", existing.stream)
        }
        other => {
            let text = format!("{other:?}");
            text.split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

fn seen(e: &RecordedEvent, ranks: &HashMap<Position, usize>) -> Seen {
    Seen {
        rank: ranks.get(&e.position).copied().unwrap_or(usize::MAX),
        stream: e.stream_id.to_string(),
        revision: e.revision,
        id: e.id,
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        content_type: e.content_type.clone(),
        payload: e.json().unwrap_or(serde_json::Value::Null),
        metadata: e.metadata.clone(),
    }
}

fn normalize(raw: &Raw, ranks: &HashMap<Position, usize>) -> Outcome {
    let rank = |p: Option<Position>| p.map(|p| ranks.get(&p).copied().unwrap_or(usize::MAX));
    match raw {
        Raw::Append(r) => Outcome::Append(
            r.as_ref()
                .map(|r| {
                    r.streams
                        .iter()
                        .map(|s| {
                            (
                                s.stream.to_string(),
                                s.first_revision,
                                s.version,
                                rank(s.first_position),
                                rank(s.last_position),
                            )
                        })
                        .collect()
                })
                .map_err(describe),
        ),
        Raw::Events(r) => Outcome::Events(
            r.as_ref()
                .map(|events| events.iter().map(|e| seen(e, ranks)).collect())
                .map_err(describe),
        ),
        Raw::Version(v) => Outcome::Version(v.as_ref().copied().map_err(describe)),
        Raw::Change(r) => Outcome::Change(r.as_ref().copied().map_err(describe)),
        Raw::ById(e) => Outcome::ById(e.as_ref().map(|e| seen(e, ranks))),
    }
}

async fn whole_log<S: EventStore>(store: &S) -> Result<Vec<RecordedEvent>, StoreError> {
    store.read_all(ReadAll::forward()).try_collect().await
}

fn ranks_of(log: &[RecordedEvent]) -> HashMap<Position, usize> {
    log.iter()
        .enumerate()
        .map(|(i, e)| (e.position, i))
        .collect()
}

struct Case {
    next_id: u128,
    requests: Vec<Vec<StreamWrite>>,
    ids: Vec<EventId>,
}

impl Case {
    fn event(&mut self, ty: usize, payload: u8) -> NewEvent {
        self.next_id += 1;
        let id = EventId(Uuid::from_u128(
            0x5151_0000_0000_7000_8000_0000_0000_0000 | self.next_id,
        ));
        self.ids.push(id);
        NewEvent::json(TYPES[ty], &json!({ "p": payload, "t": ty }))
            .with_id(id)
            .with_metadata(Metadata::default().with_correlation_id(format!("c{payload}")))
    }
}

async fn run_op<S: EventStore>(
    store: &S,
    request: &Option<Vec<StreamWrite>>,
    op: &Op,
    from: Option<Position>,
) -> Raw {
    if let Some(request) = request {
        return Raw::Append(store.append(request.clone()).await);
    }
    match op {
        Op::ReadStream {
            stream,
            backward,
            from,
            limit,
            page,
        } => {
            let id = StreamId::new(STREAMS[*stream]).expect("valid");
            let mut options = if *backward {
                ReadStream::backward()
            } else {
                ReadStream::forward()
            };
            if *from != u64::MAX || !*backward {
                options = options.from(*from);
            }
            if let Some(limit) = limit {
                options = options.limit(*limit);
            }
            Raw::Events(
                store
                    .read_stream(&id, options.page_size(*page))
                    .try_collect()
                    .await,
            )
        }
        Op::ReadAll {
            backward,
            categories,
            types,
            limit,
            page,
            ..
        } => {
            let mut filter = EventFilter::all();
            for (i, c) in CATEGORIES.iter().enumerate() {
                if categories & (1 << i) != 0 {
                    filter = filter.or_category(*c);
                }
            }
            for (i, t) in TYPES.iter().enumerate() {
                if types & (1 << i) != 0 {
                    filter = filter.event_type(*t);
                }
            }
            let mut options = if *backward {
                ReadAll::backward()
            } else {
                ReadAll::forward()
            };
            if let Some(from) = from {
                options = options.from(from);
            }
            if let Some(limit) = limit {
                options = options.limit(*limit);
            }
            Raw::Events(
                store
                    .read_all(options.filter(filter).page_size(*page))
                    .try_collect()
                    .await,
            )
        }
        Op::Version(stream) => {
            let id = StreamId::new(STREAMS[*stream]).expect("valid");
            Raw::Version(store.stream_version(&id).await)
        }
        Op::Change {
            stream,
            kind,
            expect,
            before,
        } => {
            let id = StreamId::new(STREAMS[*stream]).expect("valid");
            let expected = match expect {
                Expect::Any => ExpectedVersion::Any,
                Expect::NoStream => ExpectedVersion::NoStream,
                Expect::StreamExists => ExpectedVersion::StreamExists,
                Expect::Exact(v) => ExpectedVersion::Exact(*v),
                Expect::Current => ExpectedVersion::Exact(
                    store.stream_version(&id).await.ok().flatten().unwrap_or(0),
                ),
            };
            let change = match kind {
                0 => StreamChange::Delete { expected },
                1 => StreamChange::TruncateBefore { before: *before },
                _ => StreamChange::Tombstone { expected },
            };
            Raw::Change(store.change_stream(&id, change).await)
        }
        Op::ById(_) | Op::Append(_) | Op::Repeat(_) | Op::RepeatAltered(_) => {
            unreachable!("handled by the caller")
        }
    }
}

/// Where "the rank-th event" starts in `log` (one past the end when there is none).
fn position_of_rank(log: &[RecordedEvent], rank: usize) -> Position {
    match log.get(rank) {
        Some(e) => e.position,
        None => log.last().map_or(Position(1), |e| e.position.next()),
    }
}

async fn run_case<S: EventStore>(store: S, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let oracle = InMemoryStore::new();
    let head = store.head_position().await.expect("head");
    prop_assert_eq!(
        head,
        Position::START,
        "the property test needs an empty store"
    );
    let mut case = Case {
        next_id: 0,
        requests: Vec::new(),
        ids: Vec::new(),
    };
    let mut raw_store = Vec::new();
    let mut raw_oracle = Vec::new();
    for op in &ops {
        let request = match op {
            Op::Append(specs) => {
                let mut writes = Vec::new();
                for spec in specs {
                    let stream = StreamId::new(STREAMS[spec.stream]).expect("valid");
                    let expected = match spec.expect {
                        Expect::Any => ExpectedVersion::Any,
                        Expect::NoStream => ExpectedVersion::NoStream,
                        Expect::StreamExists => ExpectedVersion::StreamExists,
                        Expect::Exact(v) => ExpectedVersion::Exact(v),
                        Expect::Current => ExpectedVersion::Exact(
                            oracle
                                .stream_version(&stream)
                                .await
                                .ok()
                                .flatten()
                                .unwrap_or(0),
                        ),
                    };
                    let events = spec
                        .events
                        .iter()
                        .map(|&(ty, payload)| case.event(ty, payload))
                        .collect();
                    writes.push(StreamWrite::new(stream, expected, events));
                }
                case.requests.push(writes.clone());
                Some(writes)
            }
            Op::Repeat(k) if !case.requests.is_empty() => {
                Some(case.requests[k % case.requests.len()].clone())
            }
            Op::RepeatAltered(k) if !case.requests.is_empty() => {
                let mut writes = case.requests[k % case.requests.len()].clone();
                if let Some(first) = writes.iter_mut().flat_map(|w| w.events.iter_mut()).next() {
                    first.data = serde_json::to_vec(&json!({ "p": 999 }))
                        .expect("json")
                        .into();
                }
                Some(writes)
            }
            Op::Repeat(_) | Op::RepeatAltered(_) => continue,
            _ => None,
        };
        if let Op::ById(k) = op {
            let Some(id) = case.ids.get(k % case.ids.len().max(1)).copied() else {
                continue;
            };
            raw_store.push(Raw::ById(store.event_by_id(id).await.expect("event_by_id")));
            raw_oracle.push(Raw::ById(
                oracle.event_by_id(id).await.expect("event_by_id"),
            ));
            continue;
        }
        let (from_store, from_oracle) = match op {
            Op::ReadAll {
                from_rank: Some(rank),
                ..
            } => {
                let log_store = whole_log(&store).await.expect("log");
                let log_oracle = whole_log(&oracle).await.expect("log");
                (
                    Some(position_of_rank(&log_store, *rank)),
                    Some(position_of_rank(&log_oracle, *rank)),
                )
            }
            _ => (None, None),
        };
        raw_store.push(run_op(&store, &request, op, from_store).await);
        raw_oracle.push(run_op(&oracle, &request, op, from_oracle).await);
    }
    let log_store = whole_log(&store).await.expect("log");
    let log_oracle = whole_log(&oracle).await.expect("log");
    prop_assert!(
        log_store.windows(2).all(|w| w[0].position < w[1].position),
        "the store's log is in strictly increasing positions"
    );
    let (ranks_store, ranks_oracle) = (ranks_of(&log_store), ranks_of(&log_oracle));
    for (i, (s, o)) in raw_store.iter().zip(&raw_oracle).enumerate() {
        let (s, o) = (normalize(s, &ranks_store), normalize(o, &ranks_oracle));
        prop_assert_eq!(
            s,
            o,
            "operation {} ({:?}) differs from the oracle",
            i,
            ops.get(i)
        );
    }
    let whole_store: Vec<Seen> = log_store.iter().map(|e| seen(e, &ranks_store)).collect();
    let whole_oracle: Vec<Seen> = log_oracle.iter().map(|e| seen(e, &ranks_oracle)).collect();
    prop_assert_eq!(whole_store, whole_oracle, "the final logs differ");
    Ok(())
}

/// Runs the property test: `cases` random operation sequences, each on a fresh, empty store from
/// `make_store`, compared with the in-memory oracle. Deterministic (fixed seed); the case count
/// can be raised with `SIRENIA_PROPTEST_CASES`.
pub fn check_against_oracle<S, F, Fut>(make_store: F, cases: u32)
where
    S: EventStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let cases = std::env::var("SIRENIA_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = prop::collection::vec(op_strategy(), 1..40);
    let result = runner.run(&strategy, |ops| {
        runtime.block_on(async {
            let store = make_store().await;
            run_case(store, ops).await
        })
    });
    if let Err(e) = result {
        panic!("the store differs from the in-memory oracle: {e}");
    }
}
