//! Stream lifecycle: soft delete, tombstone and truncate-before, decided once for every store.
//!
//! A stream's lifecycle is a small record beside its events ([`StreamInfo`]). The events
//! themselves are never rewritten: the global log is immutable history, so projections rebuilt
//! tomorrow see what they saw today. What changes is the *stream view*:
//!
//! - **Soft delete** hides the stream: reads return nothing and
//!   [`stream_version`](crate::EventStore::stream_version) says `None`, as for a stream that never
//!   existed. Appending recreates it; revisions continue where they stopped (so an id or position
//!   once handed out never names another event), and the recreated stream's readers and
//!   aggregates start from the first revision after the deletion.
//! - **Tombstone** ends the stream for good: every later read, write or lifecycle change of it
//!   is [`StoreError::StreamTombstoned`]. A name that never held events can be tombstoned too.
//! - **Truncate before** a revision hides the older events from stream reads. An aggregate
//!   whose early events are hidden loads only from a snapshot at or after the cut; without one
//!   the repository answers [`StoreError::StreamTruncated`] rather than a state built from half
//!   a history.
//!
//! Stores keep the record and call [`decide_change`] and [`append_target`]; the rules live here
//! only.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::id::{ExpectedVersion, StreamId};

/// Where a stream is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    /// Readable and writable.
    #[default]
    Active,
    /// Soft-deleted: hidden until the next append recreates it.
    Deleted,
    /// Tombstoned: closed for good.
    Tombstoned,
}

impl StreamStatus {
    /// The status's stored code (stores keep it as a small integer).
    pub fn code(self) -> i16 {
        match self {
            StreamStatus::Active => 0,
            StreamStatus::Deleted => 1,
            StreamStatus::Tombstoned => 2,
        }
    }

    /// The status with stored code `code`.
    pub fn from_code(code: i64) -> Result<Self, StoreError> {
        match code {
            0 => Ok(StreamStatus::Active),
            1 => Ok(StreamStatus::Deleted),
            2 => Ok(StreamStatus::Tombstoned),
            other => Err(StoreError::Corrupt {
                message: format!("unknown stream status code {other}"),
            }),
        }
    }
}

/// What a store knows about one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The next revision to be written: every revision below it was used once, even those now
    /// hidden.
    pub version: u64,
    /// The first revision of the stream's current life (a soft delete moves it to `version`).
    pub start: u64,
    /// The first revision stream reads return (`start` or later: truncation moves it).
    pub readable_from: u64,
    /// Active, deleted or tombstoned.
    pub status: StreamStatus,
}

impl StreamInfo {
    /// A stream with `version` events and no lifecycle change.
    pub fn active(version: u64) -> Self {
        StreamInfo {
            version,
            start: 0,
            readable_from: 0,
            status: StreamStatus::Active,
        }
    }

    /// The version writers' expectations are checked against: `None` when the stream is
    /// hidden (soft-deleted) or has no events.
    pub fn visible_version(&self) -> Option<u64> {
        match self.status {
            StreamStatus::Active if self.version > 0 => Some(self.version),
            _ => None,
        }
    }

    /// Whether any lifecycle change was ever made (a store need keep a record only then).
    pub fn has_lifecycle(&self) -> bool {
        self.start > 0 || self.readable_from > 0 || self.status != StreamStatus::Active
    }
}

/// A lifecycle change of one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum StreamChange {
    /// Soft delete, if the stream's visible version satisfies `expected`. Deleting a stream
    /// that is missing or already deleted changes nothing.
    Delete {
        /// What the stream's version must be.
        expected: ExpectedVersion,
    },
    /// Tombstone, if the stream's visible version satisfies `expected`.
    Tombstone {
        /// What the stream's version must be.
        expected: ExpectedVersion,
    },
    /// Hide the revisions below `before` from stream reads (never un-hides anything).
    TruncateBefore {
        /// The first revision that stays readable; at most the stream's version.
        before: u64,
    },
}

/// Decides `change` of `stream`, whose record is `current` (`None`: the stream has neither
/// events nor a record). Returns the record to store, or `None` when nothing changes.
pub fn decide_change(
    stream: &StreamId,
    current: Option<StreamInfo>,
    change: StreamChange,
) -> Result<Option<StreamInfo>, StoreError> {
    let info = current.unwrap_or_default();
    if info.status == StreamStatus::Tombstoned {
        return Err(StoreError::StreamTombstoned {
            stream: stream.clone(),
        });
    }
    let visible = info.visible_version();
    let check = |expected: ExpectedVersion| {
        if expected.is_satisfied_by(visible) {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: visible,
            })
        }
    };
    match change {
        StreamChange::Delete { expected } => {
            check(expected)?;
            if visible.is_none() {
                return Ok(None);
            }
            Ok(Some(StreamInfo {
                version: info.version,
                start: info.version,
                readable_from: info.version,
                status: StreamStatus::Deleted,
            }))
        }
        StreamChange::Tombstone { expected } => {
            check(expected)?;
            Ok(Some(StreamInfo {
                version: info.version,
                start: info.version,
                readable_from: info.version,
                status: StreamStatus::Tombstoned,
            }))
        }
        StreamChange::TruncateBefore { before } => {
            if visible.is_none() {
                return Err(StoreError::StreamNotFound {
                    stream: stream.clone(),
                });
            }
            if before > info.version {
                return Err(StoreError::RevisionOutOfRange {
                    stream: stream.clone(),
                    revision: before,
                    version: info.version,
                });
            }
            if before <= info.readable_from {
                return Ok(None);
            }
            Ok(Some(StreamInfo {
                readable_from: before,
                ..info
            }))
        }
    }
}

/// What an append to `stream` with record `current` must do: refuse it (tombstoned), or check
/// the write's expectation against the returned visible version. After a successful append with
/// events the store sets a soft-deleted stream's status back to active (it was recreated).
pub fn append_target(
    stream: &StreamId,
    current: Option<&StreamInfo>,
) -> Result<Option<u64>, StoreError> {
    match current {
        None => Ok(None),
        Some(info) if info.status == StreamStatus::Tombstoned => {
            Err(StoreError::StreamTombstoned {
                stream: stream.clone(),
            })
        }
        Some(info) => Ok(info.visible_version()),
    }
}

/// The first revision a stream read may return, given the record: reads of a tombstoned stream
/// fail, the rest start no earlier than `readable_from`.
pub fn readable_from(stream: &StreamId, current: Option<&StreamInfo>) -> Result<u64, StoreError> {
    match current {
        None => Ok(0),
        Some(info) if info.status == StreamStatus::Tombstoned => {
            Err(StoreError::StreamTombstoned {
                stream: stream.clone(),
            })
        }
        Some(info) => Ok(info.readable_from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> StreamId {
        StreamId::new("acc-1").unwrap()
    }

    #[test]
    fn delete_hides_and_recreation_continues_revisions() {
        let deleted = decide_change(
            &s(),
            Some(StreamInfo::active(3)),
            StreamChange::Delete {
                expected: ExpectedVersion::Exact(3),
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(deleted.visible_version(), None);
        assert_eq!((deleted.start, deleted.readable_from), (3, 3));
        assert_eq!(append_target(&s(), Some(&deleted)).unwrap(), None);
        // Deleting again changes nothing.
        let again = decide_change(
            &s(),
            Some(deleted),
            StreamChange::Delete {
                expected: ExpectedVersion::Any,
            },
        )
        .unwrap();
        assert_eq!(again, None);
    }

    #[test]
    fn tombstone_refuses_everything_after() {
        let t = decide_change(
            &s(),
            None,
            StreamChange::Tombstone {
                expected: ExpectedVersion::NoStream,
            },
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            append_target(&s(), Some(&t)),
            Err(StoreError::StreamTombstoned { .. })
        ));
        assert!(matches!(
            readable_from(&s(), Some(&t)),
            Err(StoreError::StreamTombstoned { .. })
        ));
        for change in [
            StreamChange::Delete {
                expected: ExpectedVersion::Any,
            },
            StreamChange::TruncateBefore { before: 0 },
        ] {
            assert!(matches!(
                decide_change(&s(), Some(t), change),
                Err(StoreError::StreamTombstoned { .. })
            ));
        }
    }

    #[test]
    fn truncation_only_moves_forward_and_within_the_stream() {
        let cut = decide_change(
            &s(),
            Some(StreamInfo::active(5)),
            StreamChange::TruncateBefore { before: 3 },
        )
        .unwrap()
        .unwrap();
        assert_eq!(cut.readable_from, 3);
        assert_eq!(cut.visible_version(), Some(5));
        assert_eq!(
            decide_change(&s(), Some(cut), StreamChange::TruncateBefore { before: 2 }).unwrap(),
            None
        );
        assert!(matches!(
            decide_change(&s(), Some(cut), StreamChange::TruncateBefore { before: 6 }),
            Err(StoreError::RevisionOutOfRange {
                revision: 6,
                version: 5,
                ..
            })
        ));
        assert!(matches!(
            decide_change(&s(), None, StreamChange::TruncateBefore { before: 0 }),
            Err(StoreError::StreamNotFound { .. })
        ));
    }

    #[test]
    fn expectations_are_checked_against_the_visible_version() {
        let r = decide_change(
            &s(),
            Some(StreamInfo::active(2)),
            StreamChange::Tombstone {
                expected: ExpectedVersion::Exact(1),
            },
        );
        assert!(matches!(
            r,
            Err(StoreError::Conflict {
                actual: Some(2),
                ..
            })
        ));
    }
}
