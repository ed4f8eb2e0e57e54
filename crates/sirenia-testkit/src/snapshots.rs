//! Conformance cases for snapshot stores, and for a repository loading through them. Every
//! store's snapshot store runs them (see each store's tests).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sirenia_core::snapshot::{Snapshot, SnapshotPolicy, SnapshotStore, Snapshotted};
use sirenia_core::{
    Aggregate, DomainEvent, EventStore, ExpectedVersion, Repository, StoreError, StreamId,
    Timestamp,
};

fn snapshot(stream: &str, version: u64, data: &str) -> Snapshot {
    Snapshot {
        stream: StreamId::new(stream).expect("valid stream id"),
        version,
        schema_version: 1,
        data: Bytes::from(data.to_owned()),
        taken_at: Timestamp::from_micros(1_700_000_000_000_000 + version),
        recorded_at: Timestamp::from_micros(1_600_000_000_000_000 + version),
    }
}

/// Save and load: the latest at or below a version, replacement, isolation between streams.
pub async fn snapshot_store_cases(store: &dyn SnapshotStore) {
    let a = StreamId::new("snap-a").expect("valid");
    assert_eq!(store.load(&a, u64::MAX).await.expect("load"), None);
    store
        .save(snapshot("snap-a", 10, "ten"))
        .await
        .expect("save");
    store
        .save(snapshot("snap-a", 20, "twenty"))
        .await
        .expect("save");
    store
        .save(snapshot("snap-b", 15, "other"))
        .await
        .expect("save");
    let at = |v: u64| {
        let a = a.clone();
        async move { store.load(&a, v).await.expect("load").map(|s| s.version) }
    };
    assert_eq!(at(5).await, None);
    assert_eq!(at(10).await, Some(10));
    assert_eq!(at(15).await, Some(10));
    assert_eq!(at(25).await, Some(20));
    assert_eq!(at(u64::MAX).await, Some(20));
    let loaded = store.load(&a, 20).await.expect("load").expect("found");
    assert_eq!(loaded, snapshot("snap-a", 20, "twenty"));
    store
        .save(snapshot("snap-a", 20, "again"))
        .await
        .expect("save");
    let loaded = store.load(&a, 20).await.expect("load").expect("found");
    assert_eq!(loaded.data, Bytes::from("again"));
    let b = StreamId::new("snap-b").expect("valid");
    assert_eq!(store.load(&b, 14).await.expect("load"), None);
    // By time: the latest whose last event was recorded at or before the instant.
    let at = |micros: u64| {
        let a = a.clone();
        async move {
            store
                .load_at(&a, Timestamp::from_micros(micros))
                .await
                .expect("load")
                .map(|s| s.version)
        }
    };
    assert_eq!(at(1_600_000_000_000_009).await, None);
    assert_eq!(at(1_600_000_000_000_010).await, Some(10));
    assert_eq!(at(1_600_000_000_000_019).await, Some(10));
    assert_eq!(at(1_600_000_000_000_099).await, Some(20));
    // A snapshot whose time is unknown is not used by time.
    let mut unknown = snapshot("snap-c", 5, "five");
    unknown.recorded_at = Timestamp::EPOCH;
    store.save(unknown).await.expect("save");
    let c = StreamId::new("snap-c").expect("valid");
    assert_eq!(
        store.load_at(&c, Timestamp::now()).await.expect("load"),
        None
    );
}

/// A counter with a history, for the repository cases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The sum.
    pub total: i64,
    /// Every amount, in order (so a wrong replay shows).
    pub history: Vec<i64>,
}

/// Adds an amount.
#[derive(Clone, Debug)]
pub struct AddAmount(pub i64);

/// An amount was added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TallyEvent {
    /// It.
    Added(i64),
}

impl DomainEvent for TallyEvent {}

impl Aggregate for Tally {
    const CATEGORY: &'static str = "tally";
    type Command = AddAmount;
    type Event = TallyEvent;
    type Error = std::convert::Infallible;

    fn apply(&mut self, TallyEvent::Added(n): &TallyEvent) {
        self.total += n;
        self.history.push(*n);
    }

    fn handle(&self, AddAmount(n): AddAmount) -> Result<Vec<TallyEvent>, std::convert::Infallible> {
        Ok(vec![TallyEvent::Added(n)])
    }
}

impl Snapshotted for Tally {}

/// Waits (bounded) until `snapshots` holds one of `stream` at `version`.
async fn wait_for_snapshot(snapshots: &dyn SnapshotStore, stream: &StreamId, version: u64) {
    for _ in 0..500 {
        if snapshots
            .load(stream, version)
            .await
            .expect("load")
            .is_some_and(|s| s.version == version)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no snapshot of {stream} at version {version} was taken");
}

/// A repository with snapshots every 10 events loads what a replay loads, as of any version;
/// a corrupt snapshot or one of another schema version is ignored and commands go on.
pub async fn snapshot_repository_cases<S: EventStore>(store: S, snapshots: Arc<dyn SnapshotStore>) {
    let plain = Repository::<Tally, _>::new(store.clone());
    let snapped = Repository::<Tally, _>::new(store.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::Every(10));
    for i in 1..=35 {
        snapped.execute("t1", AddAmount(i)).await.expect("command");
    }
    let stream = StreamId::new("tally-t1").expect("valid");
    wait_for_snapshot(snapshots.as_ref(), &stream, 30).await;
    // Loaded from the snapshot at 30 plus 5 events, it equals a full replay (the position of
    // the last event applied is not known from a snapshot alone).
    let mut replayed = plain.load("t1").await.expect("load");
    replayed.last_position = None;
    let mut loaded = snapped.load("t1").await.expect("load");
    loaded.last_position = None;
    assert_eq!(loaded, replayed);
    for version in [0, 5, 10, 25, 30, 35] {
        let a = snapped.load_version("t1", version).await.expect("load");
        let b = plain.load_version("t1", version).await.expect("load");
        assert_eq!(
            (a.state, a.version),
            (b.state, b.version),
            "as of version {version}"
        );
    }
    // As of the instant each event was recorded, with snapshots, equals without.
    let events: Vec<sirenia_core::RecordedEvent> = {
        use futures_util::TryStreamExt;
        store
            .read_stream(&stream, sirenia_core::ReadStream::forward())
            .try_collect()
            .await
            .expect("read")
    };
    for event in events.iter().step_by(7).chain(events.last()) {
        let a = snapped
            .load_as_of("t1", event.recorded_at)
            .await
            .expect("load");
        let b = plain
            .load_as_of("t1", event.recorded_at)
            .await
            .expect("load");
        assert_eq!(
            (a.state, a.version),
            (b.state, b.version),
            "as of {}",
            event.recorded_at
        );
    }
    // A corrupt snapshot (the latest) is ignored: loads replay, commands succeed.
    let mut corrupt = snapshot("tally-t1", 35, "{not json");
    corrupt.schema_version = <Tally as Snapshotted>::SNAPSHOT_VERSION;
    snapshots.save(corrupt).await.expect("save");
    let loaded = snapped.load("t1").await.expect("load");
    assert_eq!(loaded.state, plain.load("t1").await.expect("load").state);
    snapped
        .execute("t1", AddAmount(100))
        .await
        .expect("a command despite a corrupt snapshot");
    // Another schema version is ignored too.
    let mut foreign = snapshot("tally-t2", 0, "{\"total\": 999, \"history\": []}");
    foreign.schema_version = 99;
    snapped.execute("t2", AddAmount(1)).await.expect("command");
    foreign.version = 1;
    snapshots.save(foreign).await.expect("save");
    assert_eq!(snapped.load("t2").await.expect("load").state.total, 1);
}

/// Aggregates over streams with a lifecycle: a truncated stream loads from a snapshot at or
/// after the cut and is `StreamTruncated` without one; a soft-deleted stream loads empty and a
/// command recreates it, and a snapshot from before the deletion is never used again.
pub async fn lifecycle_repository_cases<S: EventStore>(
    store: S,
    snapshots: Arc<dyn SnapshotStore>,
) {
    let plain = Repository::<Tally, _>::new(store.clone());
    let snapped = Repository::<Tally, _>::new(store.clone())
        .with_snapshots(snapshots.clone(), SnapshotPolicy::Every(10));
    let truncated = |r: &Result<_, _>| {
        matches!(
            r,
            Err(sirenia_core::LoadError::Store(
                StoreError::StreamTruncated { .. }
            ))
        )
    };
    let id = format!("cut{}", uuid::Uuid::now_v7().simple());
    let stream = plain.stream_id(&id).expect("valid");
    for i in 1..=25 {
        snapped.execute(&id, AddAmount(i)).await.expect("command");
    }
    wait_for_snapshot(snapshots.as_ref(), &stream, 20).await;
    let before = plain.load(&id).await.expect("load").state;
    store.truncate_stream(&stream, 20).await.expect("truncate");
    let loaded = snapped
        .load(&id)
        .await
        .expect("a snapshot at the cut keeps it loadable");
    assert_eq!((loaded.state, loaded.version), (before, 25));
    let r = plain.load(&id).await;
    assert!(
        truncated(&r),
        "without a snapshot a truncated stream is StreamTruncated: {r:?}"
    );
    match plain.execute(&id, AddAmount(1)).await {
        Err(sirenia_core::CommandError::Store(StoreError::StreamTruncated { .. })) => {}
        other => panic!("a command without a snapshot is StreamTruncated, got {other:?}"),
    }
    snapped
        .execute(&id, AddAmount(1))
        .await
        .expect("a command from the snapshot");
    store
        .truncate_stream(&stream, 23)
        .await
        .expect("truncate past the snapshot");
    let r = snapped.load(&id).await;
    assert!(
        truncated(&r),
        "a cut past every snapshot is StreamTruncated: {r:?}"
    );

    // Truncated to its very end, with no snapshot: commands are refused, not retried forever.
    let id = format!("end{}", uuid::Uuid::now_v7().simple());
    let stream = plain.stream_id(&id).expect("valid");
    for i in 1..=3 {
        plain.execute(&id, AddAmount(i)).await.expect("command");
    }
    store.truncate_stream(&stream, 3).await.expect("truncate");
    let r = plain.load(&id).await;
    assert!(
        truncated(&r),
        "loading a stream truncated to its end: {r:?}"
    );
    match plain.execute(&id, AddAmount(1)).await {
        Err(sirenia_core::CommandError::Store(StoreError::StreamTruncated { .. })) => {}
        other => panic!("a stream truncated to its end is StreamTruncated, got {other:?}"),
    }

    // Soft delete with a snapshot from the old life.
    let id = format!("del{}", uuid::Uuid::now_v7().simple());
    let stream = plain.stream_id(&id).expect("valid");
    for i in 1..=10 {
        snapped.execute(&id, AddAmount(i)).await.expect("command");
    }
    wait_for_snapshot(snapshots.as_ref(), &stream, 10).await;
    let before_delete = Timestamp::now();
    store
        .delete_stream(&stream, ExpectedVersion::Exact(10))
        .await
        .expect("delete");
    for repo in [&plain, &snapped] {
        let loaded = repo.load(&id).await.expect("load a deleted stream");
        assert_eq!((loaded.state, loaded.version), (Tally::default(), 0));
    }
    let done = snapped
        .execute(&id, AddAmount(7))
        .await
        .expect("a command recreates the stream");
    assert_eq!(done.version, 11, "revisions continue after a soft delete");
    assert_eq!(done.state.history, vec![7]);
    for repo in [&plain, &snapped] {
        let loaded = repo.load(&id).await.expect("load the recreated stream");
        assert_eq!(
            (loaded.state.history, loaded.version),
            (vec![7], 11),
            "the old life's snapshot is not used"
        );
    }
    // The old life is hidden from time travel too, by version and by instant.
    let r = plain.load_version(&id, 5).await;
    assert!(truncated(&r), "as of a version before the deletion: {r:?}");
    for repo in [&plain, &snapped] {
        let r = repo.load_as_of(&id, before_delete).await;
        assert!(truncated(&r), "as of an instant before the deletion: {r:?}");
    }
}
