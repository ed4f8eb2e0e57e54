//! Snapshots: an aggregate's state as of a version, so a long stream loads from the snapshot
//! and the events after it.
//!
//! A snapshot carries the aggregate's snapshot schema version ([`Snapshotted::SNAPSHOT_VERSION`])
//! and the version (number of events) it was taken at. One that does not decode, or has another
//! schema version, is ignored and the aggregate is replayed from its events: a command never
//! fails because of a snapshot. Snapshots are off by default; [`SnapshotPolicy::Every`] turns
//! them on for a repository (see `Repository::with_snapshots`), and they are written in the
//! background after a successful append.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::aggregate::Aggregate;
use crate::error::StoreError;
use crate::id::{StreamId, Timestamp};

/// An aggregate whose state can be saved as a snapshot (serde, JSON).
pub trait Snapshotted: Aggregate + Serialize + DeserializeOwned + Clone {
    /// The schema version of the snapshot format: bump it when the state's serde shape
    /// changes, and older snapshots are ignored (the aggregate is replayed from its events).
    const SNAPSHOT_VERSION: u16 = 1;
}

/// A stored snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// How many events of the stream the state includes.
    pub version: u64,
    /// The snapshot format's schema version.
    pub schema_version: u16,
    /// The encoded state.
    pub data: Bytes,
    /// When it was taken.
    pub taken_at: Timestamp,
    /// When the last event it includes was recorded (the epoch if unknown): what time travel
    /// by timestamp compares.
    pub recorded_at: Timestamp,
}

/// A boxed future, so snapshot stores can be used behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where snapshots are kept. Every store of Sirenia has one beside its events.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores `snapshot` (replacing one of the same stream and version).
    fn save(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The snapshot of `stream` with the highest version at or below `version`.
    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;

    /// The snapshot of `stream` with the highest version whose last event was recorded at or
    /// before `at` (snapshots whose `recorded_at` is unknown are not considered).
    fn load_at<'a>(
        &'a self,
        stream: &'a StreamId,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;
}

/// When a repository takes snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// Never (the default).
    #[default]
    Never,
    /// Whenever an append crosses a multiple of this many events (0 is treated as never).
    Every(u64),
}

impl SnapshotPolicy {
    /// Whether an append that moved a stream from `before` to `after` events calls for a
    /// snapshot.
    pub fn due(self, before: u64, after: u64) -> bool {
        match self {
            SnapshotPolicy::Every(n) if n > 0 => after / n > before / n,
            _ => false,
        }
    }
}

/// Snapshots in memory (tests; the in-memory store).
#[derive(Clone, Debug, Default)]
pub struct MemorySnapshots {
    inner: Arc<Mutex<BTreeMap<(StreamId, u64), Snapshot>>>,
}

impl MemorySnapshots {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SnapshotStore for MemorySnapshots {
    fn save(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((snapshot.stream.clone(), snapshot.version), snapshot);
        Box::pin(async { Ok(()) })
    }

    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let found = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range((stream.clone(), 0)..=(stream.clone(), version))
            .next_back()
            .map(|(_, s)| s.clone());
        Box::pin(async move { Ok(found) })
    }

    fn load_at<'a>(
        &'a self,
        stream: &'a StreamId,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let found = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range((stream.clone(), 0)..=(stream.clone(), u64::MAX))
            .rev()
            .map(|(_, s)| s)
            .find(|s| s.recorded_at > Timestamp::EPOCH && s.recorded_at <= at)
            .cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// How a repository encodes and decodes its aggregate's snapshots (set up where the aggregate
/// is known to be [`Snapshotted`]).
pub(crate) struct SnapshotCodec<A> {
    pub(crate) store: Arc<dyn SnapshotStore>,
    pub(crate) policy: SnapshotPolicy,
    pub(crate) schema_version: u16,
    pub(crate) encode: fn(&A) -> Option<Bytes>,
    pub(crate) decode: fn(&[u8]) -> Option<A>,
}

impl<A> Clone for SnapshotCodec<A> {
    fn clone(&self) -> Self {
        SnapshotCodec {
            store: self.store.clone(),
            policy: self.policy,
            schema_version: self.schema_version,
            encode: self.encode,
            decode: self.decode,
        }
    }
}

impl<A: Snapshotted> SnapshotCodec<A> {
    pub(crate) fn new(store: Arc<dyn SnapshotStore>, policy: SnapshotPolicy) -> Self {
        SnapshotCodec {
            store,
            policy,
            schema_version: A::SNAPSHOT_VERSION,
            encode: |state| serde_json::to_vec(state).ok().map(Bytes::from),
            decode: |bytes| serde_json::from_slice(bytes).ok(),
        }
    }
}
