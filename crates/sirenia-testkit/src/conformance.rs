//! The conformance suite: one `pub async fn` per guarantee of the [`EventStore`] port.
//!
//! Every store's integration test runs all of them through
//! [`conformance_tests!`](crate::conformance_tests). Cases share nothing but the store: each
//! writes only to streams of its own fresh category and filters the global log by it, so they
//! may run concurrently on one store. A case panics, with a message naming the broken guarantee,
//! when the store falls short.
//!
//! # One list of cases
//!
//! The cases are named once, in
//! [`for_each_conformance_case!`](crate::for_each_conformance_case), which hands the list to a
//! macro of the caller's. Everything else that names the cases is made from that list: [`CASES`]
//! and the public path of each case function here, the `#[test]` per case of
//! [`conformance_tests!`](crate::conformance_tests), and the mutants' dispatcher in
//! `tests/mutants.rs`. The compiler keeps the list and the functions in step, both ways:
//!
//! - a name in the list without a function fails to compile: its re-export names nothing;
//! - a function without a name in the list fails to compile too. The case functions live in a
//!   private module, `cases`, so a case is reachable only through the re-export the list makes
//!   here; one the list leaves out is never used, and `cases` denies `dead_code` (an error
//!   whether or not the build denies warnings).
//!
//! So everything `pub` in `cases` is a case; what cases share is either private and used there,
//! or defined in this module outside it (the public helpers below). The one gap: a case called
//! by another case is used, so leaving it out of the list would go unnoticed; cases do not call
//! each other. The alternatives were weaker: a test reading this file's text for `pub async fn`
//! (what the list replaced) depends on formatting and must be told which functions are helpers,
//! and a test comparing the list's length with a number kept by hand drifts like a second list.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use serde_json::json;
use sirenia_core::limits::{
    MAX_APPEND_BYTES, MAX_EVENT_BYTES, MAX_EVENT_TYPE_BYTES, MAX_EVENTS_PER_APPEND,
    MAX_METADATA_BYTES, MAX_PAGE_SIZE, MAX_STREAM_ID_BYTES, MAX_STREAMS_PER_APPEND,
};
use sirenia_core::{
    AppendResult, EventFilter, EventId, EventStore, ExpectedVersion, InvalidAppend,
    InvalidStreamId, Limit, Metadata, NewEvent, ReadAll, ReadStream, RecordedEvent, StoreError,
    StreamChange, StreamId, StreamInfo, StreamStatus, StreamWrite, Subscribe, SubscriptionItem,
    Timestamp,
};
use tokio::sync::{Barrier, Mutex};

/// How long a case waits for something a store should deliver promptly before it fails.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Cases that allocate a lot, or measure allocation, take this lock so they do not disturb each
/// other's measurements when a test binary runs them in parallel.
static HEAVY: Mutex<()> = Mutex::const_new(());

/// The list of conformance cases, in the order they run: calls a macro with the name of every
/// case appended to its arguments.
///
/// `for_each_conformance_case!(path::to::callback!(args...))` expands to
/// `path::to::callback! { args... expected_any, expected_no_stream, ... }` (names separated by
/// commas, no trailing comma). Each name is a function
/// `sirenia_testkit::conformance::<name>(store: &impl EventStore)`. This is the only list of the
/// cases: [`conformance::CASES`](crate::conformance::CASES),
/// [`conformance_tests!`](crate::conformance_tests) and the mutants test are made from it (see
/// [`conformance`](crate::conformance) for how a case left out of it is caught).
///
/// ```
/// macro_rules! names {
///     ($($case:ident),*) => { [$(stringify!($case)),*] };
/// }
/// let names = sirenia_testkit::for_each_conformance_case!(names!());
/// assert_eq!(names, sirenia_testkit::conformance::CASES);
/// ```
#[macro_export]
macro_rules! for_each_conformance_case {
    ($($callback:ident)::+ ! ( $($args:tt)* )) => {
        $($callback)::+! {
            $($args)*
            expected_any,
            expected_no_stream,
            expected_stream_exists,
            expected_exact,
            append_result_matches_stored_events,
            multi_stream_append_is_atomic,
            empty_write_checks_expectation_only,
            idempotent_reappend,
            reused_event_id_is_rejected,
            positions_follow_commit_order,
            read_stream_paging,
            read_all_filters_and_directions,
            limits_are_enforced,
            metadata_and_payload_round_trip,
            concurrent_writers_one_winner_per_round,
            subscription_catch_up_then_live,
            subscription_sees_concurrent_writers_in_order,
            large_stream_reads_in_bounded_memory,
            soft_delete_hides_and_recreation_continues_revisions,
            tombstone_refuses_reads_writes_and_changes,
            truncate_hides_older_revisions_from_stream_reads
        }
    };
}

/// Makes [`CASES`] and the public path of every case from the list.
macro_rules! register_cases {
    ($($case:ident),* $(,)?) => {
        /// The names of every case, in the order
        /// [`conformance_tests!`](crate::conformance_tests) runs them.
        pub const CASES: &[&str] = &[$(stringify!($case)),*];

        pub use cases::{$($case),*};
    };
}

for_each_conformance_case!(register_cases!());

/// A fresh category (`c` + 32 hex digits), unique to one case run.
pub fn fresh_category() -> String {
    format!("c{}", uuid::Uuid::now_v7().simple())
}

/// Stream `<category>-<n>`.
pub fn stream(category: &str, n: u32) -> StreamId {
    StreamId::new(format!("{category}-{n}")).expect("a generated stream id is valid")
}

/// A small JSON event of type `event_type` carrying `n`.
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::json(event_type, &json!({ "n": n, "note": "conformance" }))
}

/// `count` small events of type `event_type`.
pub fn events(event_type: &str, count: u64) -> Vec<NewEvent> {
    (0..count).map(|n| event(event_type, n)).collect()
}

async fn append_one<S: EventStore>(
    store: &S,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult, StoreError> {
    store
        .append(vec![StreamWrite::new(stream.clone(), expected, events)])
        .await
}

/// Reads a whole stream forward.
pub async fn read_stream_all<S: EventStore>(store: &S, stream: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, ReadStream::forward())
        .try_collect()
        .await
        .expect("reading a stream succeeds")
}

/// Reads every event of `category` forward.
pub async fn read_category<S: EventStore>(store: &S, category: &str) -> Vec<RecordedEvent> {
    store
        .read_all(ReadAll::forward().filter(EventFilter::category(category)))
        .try_collect()
        .await
        .expect("reading the log succeeds")
}

#[track_caller]
fn assert_conflict(
    result: Result<AppendResult, StoreError>,
    stream: &StreamId,
    expected: ExpectedVersion,
    actual: Option<u64>,
) {
    match result {
        Err(StoreError::Conflict {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(
                &s, stream,
                "Conflict names the stream whose expectation failed"
            );
            assert_eq!(e, expected, "Conflict carries the writer's expectation");
            assert_eq!(a, actual, "Conflict carries the stream's actual version");
        }
        other => panic!(
            "appending to {stream} with expectation {expected} must fail with Conflict \
             (actual {actual:?}), got {other:?}"
        ),
    }
}

#[track_caller]
fn assert_version(result: &AppendResult, stream: &StreamId, version: u64) {
    let appended = result
        .stream(stream)
        .unwrap_or_else(|| panic!("the append result has no entry for {stream}"));
    assert_eq!(
        appended.version, version,
        "version of {stream} after the append"
    );
}

/// The cases themselves, public only through the re-exports the list makes: a case left out of
/// the list is dead code, which this module refuses.
#[deny(dead_code)]
mod cases {
    use super::*;

    /// `Any` appends whatever the stream holds; revisions continue.
    pub async fn expected_any<S: EventStore>(store: &S) {
        let s = stream(&fresh_category(), 1);
        let r = append_one(store, &s, ExpectedVersion::Any, events("A", 2))
            .await
            .expect("Any on a new stream succeeds");
        assert_version(&r, &s, 2);
        let r = append_one(store, &s, ExpectedVersion::Any, events("A", 1))
            .await
            .expect("Any on an existing stream succeeds");
        assert_version(&r, &s, 3);
        let revisions: Vec<u64> = read_stream_all(store, &s)
            .await
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(
            revisions,
            vec![0, 1, 2],
            "revisions start at 0 and are contiguous"
        );
    }

    /// `NoStream` succeeds only on a stream without events; a conflict writes nothing.
    pub async fn expected_no_stream<S: EventStore>(store: &S) {
        let s = stream(&fresh_category(), 1);
        append_one(store, &s, ExpectedVersion::NoStream, events("A", 2))
            .await
            .expect("NoStream on a new stream succeeds");
        let r = append_one(store, &s, ExpectedVersion::NoStream, events("A", 1)).await;
        assert_conflict(r, &s, ExpectedVersion::NoStream, Some(2));
        assert_eq!(
            store.stream_version(&s).await.expect("version"),
            Some(2),
            "a conflicting append writes nothing"
        );
    }

    /// `StreamExists` fails on a missing stream (actual: none) and succeeds on an existing one.
    pub async fn expected_stream_exists<S: EventStore>(store: &S) {
        let s = stream(&fresh_category(), 1);
        let r = append_one(store, &s, ExpectedVersion::StreamExists, events("A", 1)).await;
        assert_conflict(r, &s, ExpectedVersion::StreamExists, None);
        assert_eq!(
            store.stream_version(&s).await.expect("version"),
            None,
            "a conflicting append creates no stream"
        );
        append_one(store, &s, ExpectedVersion::NoStream, events("A", 1))
            .await
            .expect("create");
        let r = append_one(store, &s, ExpectedVersion::StreamExists, events("A", 1))
            .await
            .expect("StreamExists on an existing stream succeeds");
        assert_version(&r, &s, 2);
    }

    /// `Exact(n)` succeeds exactly when the stream holds `n` events.
    pub async fn expected_exact<S: EventStore>(store: &S) {
        let s = stream(&fresh_category(), 1);
        let r = append_one(store, &s, ExpectedVersion::Exact(3), events("A", 1)).await;
        assert_conflict(r, &s, ExpectedVersion::Exact(3), None);
        append_one(store, &s, ExpectedVersion::Exact(0), events("A", 2))
            .await
            .expect("Exact(0) on a new stream succeeds");
        for wrong in [0, 1, 3, u64::MAX] {
            let r = append_one(store, &s, ExpectedVersion::Exact(wrong), events("A", 1)).await;
            assert_conflict(r, &s, ExpectedVersion::Exact(wrong), Some(2));
        }
        let r = append_one(store, &s, ExpectedVersion::Exact(2), events("A", 3))
            .await
            .expect("Exact(current) succeeds");
        assert_version(&r, &s, 5);
        assert_eq!(
            read_stream_all(store, &s).await.len(),
            5,
            "conflicts wrote nothing"
        );
    }

    /// The append result reports the revisions and positions the events were stored at.
    pub async fn append_result_matches_stored_events<S: EventStore>(store: &S) {
        let s = stream(&fresh_category(), 1);
        append_one(store, &s, ExpectedVersion::NoStream, events("A", 2))
            .await
            .expect("first append");
        let r = append_one(store, &s, ExpectedVersion::Exact(2), events("B", 3))
            .await
            .expect("second append");
        let a = r.stream(&s).expect("entry for the stream");
        assert_eq!((a.first_revision, a.version), (2, 5));
        let stored = read_stream_all(store, &s).await;
        assert_eq!(a.first_position, Some(stored[2].position), "first position");
        assert_eq!(a.last_position, Some(stored[4].position), "last position");
        assert_eq!(r.last_position(), Some(stored[4].position));
        assert!(
            stored.windows(2).all(|w| w[0].position < w[1].position),
            "positions increase within a stream"
        );
        let by_id = store
            .event_by_id(stored[3].id)
            .await
            .expect("lookup")
            .expect("an appended event is found by id");
        assert_eq!(by_id, stored[3], "event_by_id returns the stored event");
        assert_eq!(
            store.event_by_id(EventId::new()).await.expect("lookup"),
            None,
            "an unknown id is not found"
        );
        let head = store.head_position().await.expect("head");
        assert!(
            head >= stored[4].position,
            "the head is at or after the last append"
        );
    }

    /// A multi-stream append commits all or nothing; positions follow request order.
    pub async fn multi_stream_append_is_atomic<S: EventStore>(store: &S) {
        let category = fresh_category();
        let (a, b, c) = (
            stream(&category, 1),
            stream(&category, 2),
            stream(&category, 3),
        );
        append_one(store, &b, ExpectedVersion::NoStream, events("B", 1))
            .await
            .expect("seed b");
        let r = store
            .append(vec![
                StreamWrite::new(a.clone(), ExpectedVersion::NoStream, events("A", 2)),
                StreamWrite::new(b.clone(), ExpectedVersion::NoStream, events("B", 2)),
                StreamWrite::new(c.clone(), ExpectedVersion::Any, events("C", 1)),
            ])
            .await;
        assert_conflict(r, &b, ExpectedVersion::NoStream, Some(1));
        assert_eq!(
            store.stream_version(&a).await.expect("version"),
            None,
            "a untouched"
        );
        assert_eq!(
            store.stream_version(&c).await.expect("version"),
            None,
            "c untouched"
        );
        assert_eq!(
            read_category(store, &category).await.len(),
            1,
            "only the seed"
        );

        let r = store
            .append(vec![
                StreamWrite::new(a.clone(), ExpectedVersion::NoStream, events("A", 2)),
                StreamWrite::new(b.clone(), ExpectedVersion::Exact(1), events("B", 2)),
                StreamWrite::new(c.clone(), ExpectedVersion::Any, events("C", 1)),
            ])
            .await
            .expect("a consistent multi-stream append succeeds");
        let order: Vec<&StreamId> = r.streams.iter().map(|s| &s.stream).collect();
        assert_eq!(order, vec![&a, &b, &c], "results are in request order");
        assert_version(&r, &a, 2);
        assert_version(&r, &b, 3);
        assert_version(&r, &c, 1);
        let log = read_category(store, &category).await;
        let streams: Vec<&str> = log.iter().map(|e| e.stream_id.as_str()).collect();
        assert_eq!(
            streams,
            vec![
                b.as_str(),
                a.as_str(),
                a.as_str(),
                b.as_str(),
                b.as_str(),
                c.as_str()
            ],
            "one append's events take positions in request order"
        );
    }

    /// A write without events checks its expectation and can fail the whole append.
    pub async fn empty_write_checks_expectation_only<S: EventStore>(store: &S) {
        let category = fresh_category();
        let (guard, target) = (stream(&category, 1), stream(&category, 2));
        // The failing check comes after the write it must prevent.
        let r = store
            .append(vec![
                StreamWrite::new(target.clone(), ExpectedVersion::Any, events("A", 1)),
                StreamWrite::new(guard.clone(), ExpectedVersion::StreamExists, vec![]),
            ])
            .await;
        assert_conflict(r, &guard, ExpectedVersion::StreamExists, None);
        assert_eq!(
            store.stream_version(&target).await.expect("version"),
            None,
            "a failed expectation on an empty write prevents the other writes"
        );
        let r = store
            .append(vec![
                StreamWrite::new(guard.clone(), ExpectedVersion::NoStream, vec![]),
                StreamWrite::new(target.clone(), ExpectedVersion::Any, events("A", 1)),
            ])
            .await
            .expect("a satisfied empty write lets the append through");
        let g = r.stream(&guard).expect("entry for the guard");
        assert_eq!(
            (g.version, g.first_position, g.last_position),
            (0, None, None),
            "an empty write records nothing"
        );
        assert_eq!(store.stream_version(&guard).await.expect("version"), None);
        assert_version(&r, &target, 1);
    }

    /// Appending the same ids with the same content at the same place returns the original result
    /// and writes nothing, whatever the expectation kind.
    pub async fn idempotent_reappend<S: EventStore>(store: &S) {
        let category = fresh_category();
        let s = stream(&category, 1);
        append_one(store, &s, ExpectedVersion::NoStream, events("A", 1))
            .await
            .expect("seed");
        let batch = events("B", 3);
        let first = append_one(store, &s, ExpectedVersion::Exact(1), batch.clone())
            .await
            .expect("append");
        let again = append_one(store, &s, ExpectedVersion::Exact(1), batch.clone())
            .await
            .expect("re-appending the same events at the same place succeeds");
        assert_eq!(again, first, "a repeat returns the original result");
        let any = append_one(store, &s, ExpectedVersion::Any, batch.clone())
            .await
            .expect("re-appending with Any succeeds");
        assert_eq!(any, first, "a repeat with Any returns the original result");
        let exists = append_one(store, &s, ExpectedVersion::StreamExists, batch.clone())
            .await
            .expect("re-appending with StreamExists succeeds");
        assert_eq!(exists, first);
        // A repeat that also carries a new write: the repeat writes nothing, the new write lands.
        let other = stream(&category, 2);
        let mixed = store
            .append(vec![
                StreamWrite::new(s.clone(), ExpectedVersion::Exact(1), batch),
                StreamWrite::new(other.clone(), ExpectedVersion::NoStream, events("C", 1)),
            ])
            .await
            .expect("a repeat next to a new write succeeds");
        assert_eq!(mixed.streams[0], first.streams[0]);
        assert_eq!(
            store.stream_version(&s).await.expect("version"),
            Some(4),
            "nothing rewritten"
        );
        assert_eq!(
            read_category(store, &category).await.len(),
            5,
            "no duplicate in the log"
        );

        let multi = vec![
            StreamWrite::new(
                stream(&category, 3),
                ExpectedVersion::NoStream,
                events("D", 2),
            ),
            StreamWrite::new(
                stream(&category, 4),
                ExpectedVersion::NoStream,
                events("D", 1),
            ),
        ];
        let first = store
            .append(multi.clone())
            .await
            .expect("multi-stream append");
        let again = store
            .append(multi)
            .await
            .expect("repeating a multi-stream append succeeds");
        assert_eq!(
            again, first,
            "a multi-stream repeat returns the original result"
        );
        assert_eq!(read_category(store, &category).await.len(), 8);
    }

    /// An id stored elsewhere, with other content or only partly, is `EventIdReused`; nothing is
    /// written. Duplicate ids within one append are rejected too.
    pub async fn reused_event_id_is_rejected<S: EventStore>(store: &S) {
        let category = fresh_category();
        let (s, other) = (stream(&category, 1), stream(&category, 2));
        let batch = events("A", 2);
        append_one(store, &s, ExpectedVersion::NoStream, batch.clone())
            .await
            .expect("append");
        let expect_reused = |r: Result<AppendResult, StoreError>, what: &str| match r {
            Err(StoreError::EventIdReused { existing, .. }) => {
                assert_eq!(existing.stream, s, "{what}: names where the id is stored")
            }
            other => panic!("{what}: expected EventIdReused, got {other:?}"),
        };
        let mut changed = batch.clone();
        changed[1].data = Bytes::from_static(br#"{"n":999}"#);
        expect_reused(
            append_one(store, &s, ExpectedVersion::Exact(0), changed).await,
            "same ids, other payload",
        );
        let mut retyped = batch.clone();
        retyped[0].event_type = "Other".to_owned();
        expect_reused(
            append_one(store, &s, ExpectedVersion::Exact(0), retyped).await,
            "same ids, other type",
        );
        expect_reused(
            append_one(store, &other, ExpectedVersion::Any, batch.clone()).await,
            "same ids, other stream",
        );
        expect_reused(
            append_one(store, &s, ExpectedVersion::Exact(0), vec![batch[1].clone()]).await,
            "same id, other revision",
        );
        let mut partial = vec![batch[0].clone()];
        partial.push(event("A", 7));
        expect_reused(
            append_one(store, &s, ExpectedVersion::Exact(0), partial).await,
            "some ids stored, some new",
        );
        let mut fresh_then_old = vec![event("A", 8)];
        fresh_then_old.push(batch[0].clone());
        expect_reused(
            append_one(store, &s, ExpectedVersion::Any, fresh_then_old).await,
            "a new id followed by a stored one",
        );
        expect_reused(
            append_one(store, &s, ExpectedVersion::Exact(5), batch.clone()).await,
            "same events, but expected at another version",
        );
        let twice = event("A", 9);
        match append_one(
            store,
            &other,
            ExpectedVersion::Any,
            vec![twice.clone(), twice],
        )
        .await
        {
            Err(StoreError::InvalidAppend(InvalidAppend::DuplicateEventId(_))) => {}
            other => panic!("one id twice in an append must be InvalidAppend, got {other:?}"),
        }
        assert_eq!(store.stream_version(&other).await.expect("version"), None);
        assert_eq!(
            read_category(store, &category).await.len(),
            2,
            "nothing was written"
        );
    }

    /// Positions increase strictly across streams in commit order.
    pub async fn positions_follow_commit_order<S: EventStore>(store: &S) {
        let category = fresh_category();
        let mut appended = Vec::new();
        for round in 0..10u32 {
            for n in 0..3u32 {
                let s = stream(&category, n);
                let r = append_one(
                    store,
                    &s,
                    ExpectedVersion::Any,
                    events("A", u64::from(round % 2) + 1),
                )
                .await
                .expect("append");
                let a = r.stream(&s).expect("entry").clone();
                appended.push(a);
            }
        }
        for w in appended.windows(2) {
            assert!(
                w[0].last_position < w[1].first_position,
                "a later append has higher positions: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
        let log = read_category(store, &category).await;
        assert!(
            log.windows(2).all(|w| w[0].position < w[1].position),
            "the log reads in strictly increasing positions"
        );
        let mut expected = Vec::new();
        for a in &appended {
            for rev in a.first_revision..a.version {
                expected.push((a.stream.clone(), rev));
            }
        }
        let got: Vec<(StreamId, u64)> = log
            .iter()
            .map(|e| (e.stream_id.clone(), e.revision))
            .collect();
        assert_eq!(got, expected, "the log order is the commit order");
        let mut at = 0;
        for a in &appended {
            let count = usize::try_from(a.version - a.first_revision).expect("small");
            let written = &log[at..at + count];
            at += count;
            assert_eq!(
                (a.first_position, a.last_position),
                (
                    written.first().map(|e| e.position),
                    written.last().map(|e| e.position)
                ),
                "an append reports the positions its first and last events were stored at"
            );
        }
    }

    /// Stream reads page forward and backward, from any revision, with limits.
    pub async fn read_stream_paging<S: EventStore>(store: &S) {
        let s = stream(&fresh_category(), 1);
        for chunk in 0..5u64 {
            append_one(store, &s, ExpectedVersion::Exact(chunk * 5), events("A", 5))
                .await
                .expect("append");
        }
        let revs =
            |events: Vec<RecordedEvent>| events.iter().map(|e| e.revision).collect::<Vec<_>>();
        let s = &s;
        let read = |options: ReadStream| async move {
            store
                .read_stream(s, options)
                .try_collect::<Vec<_>>()
                .await
                .expect("read")
        };
        let all: Vec<u64> = (0..25).collect();
        assert_eq!(
            revs(read(ReadStream::forward().page_size(4)).await),
            all,
            "forward, pages of 4"
        );
        assert_eq!(
            revs(read(ReadStream::forward().page_size(25)).await),
            all,
            "forward, one page"
        );
        assert_eq!(
            revs(read(ReadStream::forward().page_size(1)).await),
            all,
            "forward, pages of 1"
        );
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(
            revs(read(ReadStream::backward().page_size(3)).await),
            reversed,
            "backward"
        );
        assert_eq!(
            revs(read(ReadStream::forward().from(10).limit(5).page_size(2)).await),
            vec![10, 11, 12, 13, 14],
            "forward from 10, limit 5"
        );
        assert_eq!(
            revs(read(ReadStream::backward().from(7).limit(3)).await),
            vec![7, 6, 5],
            "backward from 7, limit 3"
        );
        assert_eq!(
            revs(read(ReadStream::backward().from(1).page_size(1)).await),
            vec![1, 0],
            "backward to the first event"
        );
        assert_eq!(
            revs(read(ReadStream::backward().from(100).limit(2)).await),
            vec![24, 23],
            "backward from past the end starts at the last event"
        );
        assert!(
            read(ReadStream::forward().from(25)).await.is_empty(),
            "from past the end"
        );
        assert!(
            read(ReadStream::forward().limit(0)).await.is_empty(),
            "limit 0"
        );
        let missing = stream(&fresh_category(), 1);
        let none: Vec<RecordedEvent> = store
            .read_stream(&missing, ReadStream::backward())
            .try_collect()
            .await
            .expect("reading a missing stream succeeds");
        assert!(none.is_empty(), "a missing stream reads as empty");
        let events = read(ReadStream::forward()).await;
        assert!(
            events.iter().all(|e| &e.stream_id == s),
            "only the stream's events"
        );
    }

    /// The global log filters by category and event type, both directions, with limits.
    pub async fn read_all_filters_and_directions<S: EventStore>(store: &S) {
        let (c1, c2) = (fresh_category(), fresh_category());
        for i in 0..6u64 {
            let (category, ty) = if i % 2 == 0 {
                (&c1, "Even")
            } else {
                (&c2, "Odd")
            };
            let s = stream(category, u32::from(i % 3 == 0));
            append_one(
                store,
                &s,
                ExpectedVersion::Any,
                vec![event(ty, i), event("Tick", i)],
            )
            .await
            .expect("append");
        }
        let read = |options: ReadAll| async move {
            store
                .read_all(options)
                .try_collect::<Vec<_>>()
                .await
                .expect("read all")
        };
        let both = EventFilter::category(c1.clone()).or_category(c2.clone());
        let all = read(ReadAll::forward().filter(both.clone()).page_size(3)).await;
        assert_eq!(all.len(), 12, "both categories, all types");
        assert!(
            all.windows(2).all(|w| w[0].position < w[1].position),
            "forward order"
        );

        let only_c1 = read(ReadAll::forward().filter(EventFilter::category(c1.clone()))).await;
        assert_eq!(only_c1.len(), 6);
        assert!(
            only_c1.iter().all(|e| e.stream_id.category() == c1),
            "category filter"
        );

        let evens = read(ReadAll::forward().filter(both.clone().event_type("Even"))).await;
        let ns: Vec<u64> = evens
            .iter()
            .map(|e| e.json().expect("json")["n"].as_u64().expect("n"))
            .collect();
        assert_eq!(ns, vec![0, 2, 4], "category and type filters combine");
        let ticks_or_odds = read(
            ReadAll::forward().filter(
                EventFilter::category(c2.clone())
                    .event_type("Odd")
                    .event_type("Tick"),
            ),
        )
        .await;
        assert_eq!(ticks_or_odds.len(), 6, "several types match any of them");

        let backward = read(ReadAll::backward().filter(both.clone()).page_size(5)).await;
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(
            backward, reversed,
            "backward reads the same events in reverse"
        );

        let from = all[4].position;
        let tail = read(ReadAll::forward().from(from).filter(both.clone())).await;
        assert_eq!(
            tail,
            all[4..].to_vec(),
            "forward from a position is inclusive"
        );
        let head = read(ReadAll::backward().from(from).filter(both.clone())).await;
        let mut expected_head = all[..=4].to_vec();
        expected_head.reverse();
        assert_eq!(head, expected_head, "backward from a position is inclusive");
        let limited = read(
            ReadAll::forward()
                .filter(both.clone())
                .limit(5)
                .page_size(2),
        )
        .await;
        assert_eq!(limited, all[..5].to_vec(), "limit");
        let nothing =
            read(ReadAll::forward().filter(EventFilter::category(fresh_category()))).await;
        assert!(nothing.is_empty(), "an unused category matches nothing");
    }

    /// Named limits give typed errors before any write; invalid names cannot become stream ids.
    pub async fn limits_are_enforced<S: EventStore>(store: &S) {
        let _heavy = HEAVY.lock().await;
        let category = fresh_category();
        let s = stream(&category, 1);
        let expect_limit = |r: Result<AppendResult, StoreError>, which: Limit| match r {
            Err(StoreError::LimitExceeded { limit, max, actual }) => {
                assert_eq!(limit, which, "the error names the limit");
                assert!(actual > max, "the error reports what exceeded it");
            }
            other => panic!("expected LimitExceeded({which:?}), got {other:?}"),
        };
        expect_limit(
            append_one(
                store,
                &s,
                ExpectedVersion::Any,
                events("A", MAX_EVENTS_PER_APPEND as u64 + 1),
            )
            .await,
            Limit::EventsPerAppend,
        );
        let big = NewEvent::raw(
            "Big",
            "application/octet-stream",
            vec![7u8; MAX_EVENT_BYTES + 1],
        );
        expect_limit(
            append_one(store, &s, ExpectedVersion::Any, vec![big]).await,
            Limit::EventBytes,
        );
        let metadata = Metadata::default().with("blob", json!("x".repeat(MAX_METADATA_BYTES)));
        expect_limit(
            append_one(
                store,
                &s,
                ExpectedVersion::Any,
                vec![event("A", 1).with_metadata(metadata)],
            )
            .await,
            Limit::MetadataBytes,
        );
        let per_event = MAX_EVENT_BYTES;
        let count = MAX_APPEND_BYTES / per_event + 1;
        let huge: Vec<NewEvent> = (0..count)
            .map(|_| {
                NewEvent::raw(
                    "Big",
                    "application/octet-stream",
                    Bytes::from(vec![1u8; per_event]),
                )
            })
            .collect();
        expect_limit(
            append_one(store, &s, ExpectedVersion::Any, huge).await,
            Limit::AppendBytes,
        );
        let long_type = NewEvent::json("T".repeat(MAX_EVENT_TYPE_BYTES + 1), &json!({}));
        expect_limit(
            append_one(store, &s, ExpectedVersion::Any, vec![long_type]).await,
            Limit::EventTypeBytes,
        );
        let writes: Vec<StreamWrite> = (0..=u32::try_from(MAX_STREAMS_PER_APPEND).expect("small"))
            .map(|n| {
                StreamWrite::new(
                    stream(&category, n + 10),
                    ExpectedVersion::Any,
                    events("A", 1),
                )
            })
            .collect();
        expect_limit(store.append(writes).await, Limit::StreamsPerAppend);
        for bad_type in ["", "bad\ntype"] {
            match append_one(store, &s, ExpectedVersion::Any, vec![event(bad_type, 1)]).await {
                Err(StoreError::InvalidAppend(InvalidAppend::BadEventType(_))) => {}
                other => panic!("event type {bad_type:?} must be InvalidAppend, got {other:?}"),
            }
        }
        match store.append(vec![]).await {
            Err(StoreError::InvalidAppend(InvalidAppend::Empty)) => {}
            other => panic!("an empty append must be InvalidAppend::Empty, got {other:?}"),
        }
        let twice = vec![
            StreamWrite::new(s.clone(), ExpectedVersion::Any, events("A", 1)),
            StreamWrite::new(s.clone(), ExpectedVersion::Any, events("A", 1)),
        ];
        match store.append(twice).await {
            Err(StoreError::InvalidAppend(InvalidAppend::DuplicateStream(_))) => {}
            other => panic!("a stream twice in one append must be InvalidAppend, got {other:?}"),
        }
        assert!(matches!(StreamId::new(""), Err(InvalidStreamId::Empty)));
        assert!(matches!(
            StreamId::new("x".repeat(MAX_STREAM_ID_BYTES + 1)),
            Err(InvalidStreamId::TooLong { .. })
        ));
        assert!(
            StreamId::new("x".repeat(MAX_STREAM_ID_BYTES)).is_ok(),
            "the limit itself is allowed"
        );
        assert!(matches!(
            StreamId::new("tab\there"),
            Err(InvalidStreamId::ControlCharacter { code: 9 })
        ));
        assert!(
            StreamId::new("accents-éü-✓").is_ok(),
            "any other UTF-8 is allowed"
        );
        for page_size in [0, MAX_PAGE_SIZE + 1] {
            let r: Result<Vec<_>, _> = store
                .read_stream(&s, ReadStream::forward().page_size(page_size))
                .try_collect()
                .await;
            assert!(
                matches!(
                    r,
                    Err(StoreError::LimitExceeded {
                        limit: Limit::PageSize,
                        ..
                    })
                ),
                "page size {page_size} must be rejected, got {r:?}"
            );
        }
        assert!(
            read_category(store, &category).await.is_empty(),
            "nothing was written"
        );
    }

    /// Ids, types, schema versions, content types, payload bytes and metadata come back exactly.
    pub async fn metadata_and_payload_round_trip<S: EventStore>(store: &S) {
        let s = stream(&fresh_category(), 1);
        let before = Timestamp::now();
        let metadata = Metadata::default()
            .with_correlation_id("corr-1")
            .with_causation_id("cause-1")
            .with(
                "user",
                json!({"id": 42, "roles": ["a", "b"], "ok": true, "x": null}),
            )
            .with("unicode", json!("żółw ✓"));
        let json_event = NewEvent::json("Json", &json!({"a": [1, 2, {"b": "c"}], "f": 1.5}))
            .with_schema_version(7)
            .with_metadata(metadata.clone());
        let binary = NewEvent::raw(
            "Binary",
            "application/octet-stream",
            vec![0u8, 255, 10, 0, 13],
        );
        let empty = NewEvent::raw("Empty", "text/plain; charset=utf-8", Vec::new());
        let sent = vec![json_event, binary, empty];
        append_one(store, &s, ExpectedVersion::NoStream, sent.clone())
            .await
            .expect("append");
        let stored = read_stream_all(store, &s).await;
        assert_eq!(stored.len(), 3);
        for (sent, stored) in sent.iter().zip(&stored) {
            assert_eq!(stored.id, sent.id, "id");
            assert_eq!(stored.event_type, sent.event_type, "type");
            assert_eq!(stored.schema_version, sent.schema_version, "schema version");
            assert_eq!(stored.content_type, sent.content_type, "content type");
            assert_eq!(stored.metadata, sent.metadata, "metadata");
            if sent.content_type == sirenia_core::JSON_CONTENT_TYPE {
                let a: serde_json::Value = serde_json::from_slice(&sent.data).expect("json");
                assert_eq!(stored.json().expect("stored json"), a, "JSON payload");
            } else {
                assert_eq!(stored.data, sent.data, "payload bytes");
            }
            assert!(
                stored.recorded_at.as_micros() + 5_000_000 >= before.as_micros(),
                "recorded_at is the store's clock at commit"
            );
        }
        assert!(
            stored
                .windows(2)
                .all(|w| w[0].recorded_at <= w[1].recorded_at),
            "recorded_at never runs backwards within a stream"
        );
    }

    /// N writers race on one stream for M rounds: exactly one wins each round.
    pub async fn concurrent_writers_one_winner_per_round<S: EventStore>(store: &S) {
        const WRITERS: usize = 8;
        const ROUNDS: u64 = 25;
        let s = stream(&fresh_category(), 1);
        let barrier = std::sync::Arc::new(Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let mut wins = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait().await;
                    let e = event("Race", writer as u64);
                    match append_one(&store, &s, ExpectedVersion::Exact(round), vec![e.clone()])
                        .await
                    {
                        Ok(_) => wins.push((round, e.id)),
                        Err(StoreError::Conflict { actual, .. }) => {
                            assert_eq!(actual, Some(round + 1), "a loser sees the winner's event")
                        }
                        Err(other) => {
                            panic!("a race may only end in success or Conflict: {other:?}")
                        }
                    }
                    barrier.wait().await;
                }
                wins
            }));
        }
        let mut wins = Vec::new();
        for task in tasks {
            wins.extend(task.await.expect("writer task"));
        }
        wins.sort();
        let rounds: Vec<u64> = wins.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            rounds,
            (0..ROUNDS).collect::<Vec<_>>(),
            "exactly one winner per round"
        );
        let stored = read_stream_all(store, &s).await;
        let revisions: Vec<u64> = stored.iter().map(|e| e.revision).collect();
        assert_eq!(
            revisions,
            (0..ROUNDS).collect::<Vec<_>>(),
            "contiguous revisions"
        );
        let ids: Vec<EventId> = stored.iter().map(|e| e.id).collect();
        let winners: Vec<EventId> = wins.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, winners, "the stored events are the winners', in order");
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "no duplicates"
        );
    }

    async fn next_item(sub: &mut sirenia_core::Subscription, what: &str) -> SubscriptionItem {
        match tokio::time::timeout(DELIVERY_TIMEOUT, sub.next()).await {
            Ok(Some(Ok(item))) => item,
            Ok(Some(Err(e))) => panic!("subscription failed while waiting for {what}: {e}"),
            Ok(None) => panic!("subscription ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {DELIVERY_TIMEOUT:?}"),
        }
    }

    async fn next_event(sub: &mut sirenia_core::Subscription, what: &str) -> RecordedEvent {
        match next_item(sub, what).await {
            SubscriptionItem::Event(e) => e,
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    /// A subscription from mid-log delivers the rest in order, signals caught-up once, then live
    /// events.
    pub async fn subscription_catch_up_then_live<S: EventStore>(store: &S) {
        let category = fresh_category();
        let filter = EventFilter::category(category.clone());
        for n in 0..4u32 {
            append_one(
                store,
                &stream(&category, n),
                ExpectedVersion::Any,
                events("A", 3),
            )
            .await
            .expect("append");
        }
        let log = read_category(store, &category).await;
        let start = log[5].position;
        let mut sub = store.subscribe(Subscribe::from(start).filter(filter).page_size(2));
        for expected in &log[5..] {
            let got = next_event(&mut sub, "a catch-up event").await;
            assert_eq!(
                &got, expected,
                "catch-up delivers the log from the start position, in order"
            );
        }
        match next_item(&mut sub, "the caught-up signal").await {
            SubscriptionItem::CaughtUp { head } => assert!(
                head >= log[11].position,
                "caught up at or after the last event delivered"
            ),
            other => panic!("expected CaughtUp after the last stored event, got {other:?}"),
        }
        for round in 0..3u64 {
            // Let the subscription reach its wait for new events, so the append must wake it.
            for _ in 0..3 {
                assert!(
                    sub.next().now_or_never().is_none(),
                    "nothing new to deliver before the live append"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let r = append_one(
                store,
                &stream(&category, 9),
                ExpectedVersion::Any,
                events("Live", 2),
            )
            .await
            .expect("live append");
            let a = r.streams[0].clone();
            let first = next_event(&mut sub, "a live event").await;
            let second = next_event(&mut sub, "a live event").await;
            assert_eq!(
                (first.revision, second.revision),
                (round * 2, round * 2 + 1),
                "live events arrive in order"
            );
            assert_eq!(Some(first.position), a.first_position);
            assert_eq!(Some(second.position), a.last_position);
        }
        let other = fresh_category();
        append_one(
            store,
            &stream(&other, 1),
            ExpectedVersion::Any,
            events("X", 1),
        )
        .await
        .expect("unrelated append");
        let marker = append_one(
            store,
            &stream(&category, 9),
            ExpectedVersion::Any,
            events("End", 1),
        )
        .await
        .expect("marker");
        let got = next_event(&mut sub, "the marker").await;
        assert_eq!(
            Some(got.position),
            marker.last_position(),
            "the filter skips other categories, and no CaughtUp is repeated"
        );
    }

    /// Writers append concurrently while a subscription runs: it sees every event exactly once, in
    /// strictly increasing positions, identical to the log read afterwards.
    pub async fn subscription_sees_concurrent_writers_in_order<S: EventStore>(store: &S) {
        const WRITERS: u32 = 4;
        const APPENDS: u64 = 40;
        let category = fresh_category();
        let mut sub = store
            .subscribe(Subscribe::from_start().filter(EventFilter::category(category.clone())));
        match next_item(&mut sub, "the caught-up signal").await {
            SubscriptionItem::CaughtUp { .. } => {}
            other => {
                panic!("a subscription to an empty category catches up at once, got {other:?}")
            }
        }
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (store, s) = (store.clone(), stream(&category, w));
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..APPENDS {
                    let batch = events("W", 1 + i % 3);
                    ids.extend(batch.iter().map(|e| e.id));
                    append_one(&store, &s, ExpectedVersion::Any, batch)
                        .await
                        .expect("append");
                    if i % 8 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ids
            }));
        }
        let mut acknowledged = HashSet::new();
        for task in tasks {
            acknowledged.extend(task.await.expect("writer"));
        }
        let mut seen = Vec::with_capacity(acknowledged.len());
        while seen.len() < acknowledged.len() {
            seen.push(next_event(&mut sub, "a live event").await);
        }
        assert!(
            seen.windows(2).all(|w| w[0].position < w[1].position),
            "delivered in strictly increasing positions"
        );
        let delivered: HashSet<EventId> = seen.iter().map(|e| e.id).collect();
        assert_eq!(
            delivered, acknowledged,
            "every acknowledged event delivered exactly once"
        );
        assert_eq!(
            seen,
            read_category(store, &category).await,
            "the subscription matches the log"
        );
    }

    /// A 100,000-event stream reads forward, backward and through the global log with memory bounded
    /// by a page, far below the stream's size.
    pub async fn large_stream_reads_in_bounded_memory<S: EventStore>(store: &S) {
        const EVENTS: u64 = 100_000;
        const BATCH: u64 = 1_000;
        const PAYLOAD: usize = 1_000;
        // The whole stream is over 100 MB of payload; a bounded reader needs a few pages of it.
        const BUDGET: isize = 16 * 1024 * 1024;
        let _heavy = HEAVY.lock().await;
        assert!(
            crate::alloc::is_installed(),
            "this case measures allocation: install sirenia_testkit::alloc::CountingAllocator as \
             the global allocator (conformance_tests! does)"
        );
        let category = fresh_category();
        let s = stream(&category, 1);
        let filler = "x".repeat(PAYLOAD);
        for batch in 0..EVENTS / BATCH {
            let events: Vec<NewEvent> = (0..BATCH)
                .map(|i| NewEvent::json("Big", &json!({ "i": batch * BATCH + i, "fill": filler })))
                .collect();
            append_one(store, &s, ExpectedVersion::Exact(batch * BATCH), events)
                .await
                .expect("append a batch");
        }
        for (what, mut events) in [
            ("forward", store.read_stream(&s, ReadStream::forward())),
            ("backward", store.read_stream(&s, ReadStream::backward())),
            (
                "global log",
                store.read_all(ReadAll::forward().filter(EventFilter::category(category.clone()))),
            ),
        ] {
            let baseline = crate::alloc::reset_peak();
            let mut count = 0u64;
            let mut sum = 0u64;
            while let Some(e) = events.next().await {
                let e = e.expect("read");
                count += 1;
                sum += e.revision;
            }
            let growth = crate::alloc::peak_bytes() - baseline;
            assert_eq!(count, EVENTS, "{what}: every event is read");
            assert_eq!(sum, EVENTS * (EVENTS - 1) / 2, "{what}: each revision once");
            assert!(
                growth < BUDGET,
                "{what}: reading {EVENTS} events grew the heap by {growth} bytes; the budget is \
                 {BUDGET} (reads must page, not load the whole stream)"
            );
        }
    }

    /// Revisions of a whole forward read of `stream`.
    async fn revisions<S: EventStore>(
        store: &S,
        stream: &StreamId,
        options: ReadStream,
    ) -> Vec<u64> {
        store
            .read_stream(stream, options)
            .map_ok(|e| e.revision)
            .try_collect()
            .await
            .expect("reading a stream succeeds")
    }

    /// Soft delete hides a stream from stream reads and from `stream_version`; appending recreates
    /// it with revisions continuing; the global log keeps every event; deleting a missing or deleted
    /// stream changes nothing; the expectation is checked against the visible version.
    pub async fn soft_delete_hides_and_recreation_continues_revisions<S: EventStore>(store: &S) {
        let category = fresh_category();
        let s = stream(&category, 1);
        append_one(store, &s, ExpectedVersion::NoStream, events("A", 3))
            .await
            .expect("append");
        match store.delete_stream(&s, ExpectedVersion::Exact(2)).await {
            Err(StoreError::Conflict {
                actual: Some(3), ..
            }) => {}
            other => panic!("a delete with a wrong expectation is a Conflict, got {other:?}"),
        }
        assert_eq!(
            read_stream_all(store, &s).await.len(),
            3,
            "a refused delete hides nothing"
        );
        let deleted = store
            .delete_stream(&s, ExpectedVersion::Exact(3))
            .await
            .expect("delete")
            .expect("a deleted stream has a record");
        assert_eq!(deleted.status, StreamStatus::Deleted);
        assert_eq!(deleted.version, 3, "revisions used stay used");
        assert_eq!(
            store.stream_info(&s).await.expect("info"),
            Some(deleted),
            "stream_info returns what change_stream did"
        );
        assert_eq!(
            store.stream_version(&s).await.expect("version"),
            None,
            "a soft-deleted stream has no version"
        );
        assert!(
            read_stream_all(store, &s).await.is_empty(),
            "a deleted stream reads as empty"
        );
        assert!(
            revisions(store, &s, ReadStream::backward())
                .await
                .is_empty(),
            "a deleted stream reads as empty backward"
        );
        assert_eq!(
            store
                .delete_stream(&s, ExpectedVersion::Any)
                .await
                .expect("deleting again"),
            Some(deleted),
            "deleting a deleted stream changes nothing"
        );
        assert_conflict(
            append_one(store, &s, ExpectedVersion::StreamExists, events("B", 1)).await,
            &s,
            ExpectedVersion::StreamExists,
            None,
        );
        let recreated = append_one(store, &s, ExpectedVersion::NoStream, events("B", 2))
            .await
            .expect("appending recreates a deleted stream");
        assert_eq!(recreated.streams[0].first_revision, 3, "revisions continue");
        assert_version(&recreated, &s, 5);
        assert_eq!(
            revisions(store, &s, ReadStream::forward()).await,
            vec![3, 4]
        );
        assert_eq!(
            revisions(store, &s, ReadStream::backward()).await,
            vec![4, 3]
        );
        assert_eq!(store.stream_version(&s).await.expect("version"), Some(5));
        let info = store
            .stream_info(&s)
            .await
            .expect("info")
            .expect("a record");
        assert_eq!(
            (info.status, info.start, info.readable_from, info.version),
            (StreamStatus::Active, 3, 3, 5),
            "a recreated stream is active and starts where it was deleted"
        );
        assert_eq!(
            read_category(store, &category).await.len(),
            5,
            "the global log keeps deleted events"
        );
        let missing = stream(&category, 2);
        assert_eq!(
            store
                .delete_stream(&missing, ExpectedVersion::Any)
                .await
                .expect("deleting a missing stream"),
            None
        );
        assert_eq!(store.stream_info(&missing).await.expect("info"), None);
    }

    /// A tombstoned stream refuses appends, reads, `stream_version` and every further lifecycle
    /// change with `StreamTombstoned`, even an append repeating earlier ids elsewhere; a name that
    /// never held events can be tombstoned; the global log keeps the events.
    pub async fn tombstone_refuses_reads_writes_and_changes<S: EventStore>(store: &S) {
        let category = fresh_category();
        let s = stream(&category, 1);
        append_one(store, &s, ExpectedVersion::NoStream, events("A", 2))
            .await
            .expect("append");
        assert_conflict(
            store
                .tombstone_stream(&s, ExpectedVersion::NoStream)
                .await
                .map(|_| AppendResult { streams: vec![] }),
            &s,
            ExpectedVersion::NoStream,
            Some(2),
        );
        let tomb = store
            .tombstone_stream(&s, ExpectedVersion::Exact(2))
            .await
            .expect("tombstone")
            .expect("a record");
        assert_eq!(tomb.status, StreamStatus::Tombstoned);
        let tombstoned = |r: Result<(), &StoreError>| matches!(r, Err(StoreError::StreamTombstoned { stream }) if stream == &s);
        let r = append_one(store, &s, ExpectedVersion::Any, events("B", 1)).await;
        assert!(
            tombstoned(r.as_ref().map(|_| ())),
            "an append to a tombstoned stream: {r:?}"
        );
        let r = store
            .append(vec![
                StreamWrite::new(stream(&category, 3), ExpectedVersion::Any, events("B", 1)),
                StreamWrite::new(s.clone(), ExpectedVersion::Any, events("B", 1)),
            ])
            .await;
        assert!(
            tombstoned(r.as_ref().map(|_| ())),
            "a multi-stream append touching it: {r:?}"
        );
        assert_eq!(
            store
                .stream_version(&stream(&category, 3))
                .await
                .expect("version"),
            None,
            "the refused multi-stream append wrote nothing"
        );
        let r = store.stream_version(&s).await;
        assert!(
            tombstoned(r.as_ref().map(|_| ())),
            "stream_version of a tombstoned stream: {r:?}"
        );
        let r: Result<Vec<RecordedEvent>, StoreError> = store
            .read_stream(&s, ReadStream::forward())
            .try_collect()
            .await;
        assert!(
            tombstoned(r.as_ref().map(|_| ())),
            "reading a tombstoned stream: {r:?}"
        );
        let r: Result<Vec<RecordedEvent>, StoreError> = store
            .read_stream(&s, ReadStream::backward())
            .try_collect()
            .await;
        assert!(
            tombstoned(r.as_ref().map(|_| ())),
            "reading a tombstoned stream backward: {r:?}"
        );
        for change in [
            StreamChange::Delete {
                expected: ExpectedVersion::Any,
            },
            StreamChange::Tombstone {
                expected: ExpectedVersion::Any,
            },
            StreamChange::TruncateBefore { before: 1 },
        ] {
            let r = store.change_stream(&s, change).await;
            assert!(
                tombstoned(r.as_ref().map(|_| ())),
                "{change:?} of a tombstoned stream: {r:?}"
            );
        }
        assert_eq!(
            store.stream_info(&s).await.expect("info"),
            Some(tomb),
            "stream_info still describes a tombstoned stream"
        );
        assert_eq!(
            read_category(store, &category).await.len(),
            2,
            "the log keeps its events"
        );
        // A name that never held events.
        let reserved = stream(&category, 2);
        let info = store
            .tombstone_stream(&reserved, ExpectedVersion::NoStream)
            .await
            .expect("tombstone a new name")
            .expect("a record");
        assert_eq!(
            info,
            StreamInfo {
                version: 0,
                start: 0,
                readable_from: 0,
                status: StreamStatus::Tombstoned
            }
        );
        let r = append_one(store, &reserved, ExpectedVersion::NoStream, events("C", 1)).await;
        assert!(
            matches!(r, Err(StoreError::StreamTombstoned { .. })),
            "a tombstoned name stays closed: {r:?}"
        );
    }

    /// Truncating before a revision hides older revisions from stream reads in both directions and
    /// across pages, never moves back, refuses a revision past the end or a missing stream, and
    /// leaves appends and the global log as they were.
    pub async fn truncate_hides_older_revisions_from_stream_reads<S: EventStore>(store: &S) {
        let category = fresh_category();
        let s = stream(&category, 1);
        append_one(store, &s, ExpectedVersion::NoStream, events("A", 5))
            .await
            .expect("append");
        let info = store
            .truncate_stream(&s, 2)
            .await
            .expect("truncate")
            .expect("a record");
        assert_eq!(
            (info.readable_from, info.version, info.status),
            (2, 5, StreamStatus::Active)
        );
        assert_eq!(
            revisions(store, &s, ReadStream::forward()).await,
            vec![2, 3, 4]
        );
        assert_eq!(
            revisions(store, &s, ReadStream::forward().page_size(1)).await,
            vec![2, 3, 4],
            "page by page"
        );
        assert_eq!(
            revisions(store, &s, ReadStream::forward().from(3)).await,
            vec![3, 4]
        );
        assert_eq!(
            revisions(store, &s, ReadStream::backward()).await,
            vec![4, 3, 2]
        );
        assert_eq!(
            revisions(store, &s, ReadStream::backward().page_size(2)).await,
            vec![4, 3, 2],
            "backward page by page"
        );
        assert!(
            revisions(store, &s, ReadStream::backward().from(1))
                .await
                .is_empty()
        );
        assert_eq!(
            store.truncate_stream(&s, 1).await.expect("an earlier cut"),
            Some(info),
            "truncation never un-hides"
        );
        match store.truncate_stream(&s, 6).await {
            Err(StoreError::RevisionOutOfRange {
                revision: 6,
                version: 5,
                ..
            }) => {}
            other => panic!("truncating past the end is RevisionOutOfRange, got {other:?}"),
        }
        match store.truncate_stream(&stream(&category, 2), 0).await {
            Err(StoreError::StreamNotFound { .. }) => {}
            other => panic!("truncating a missing stream is StreamNotFound, got {other:?}"),
        }
        assert_eq!(store.stream_version(&s).await.expect("version"), Some(5));
        append_one(store, &s, ExpectedVersion::Exact(5), events("B", 1))
            .await
            .expect("a truncated stream takes appends at its version");
        store
            .truncate_stream(&s, 6)
            .await
            .expect("truncate to the end");
        assert!(read_stream_all(store, &s).await.is_empty());
        assert_eq!(
            store.stream_version(&s).await.expect("version"),
            Some(6),
            "a stream truncated to its end still exists"
        );
        assert_eq!(
            read_category(store, &category).await.len(),
            6,
            "the log keeps its events"
        );
    }
}
