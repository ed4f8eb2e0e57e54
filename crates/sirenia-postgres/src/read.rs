//! Reads: the page queries of a stream and of the log, the log's safe bound and head, and row
//! decoding. The log is read only below the settled bound (every transaction below it has
//! finished, so nothing can appear there later), after waiting a little for transactions in
//! flight when the read began (read-your-writes). A filtered page of the log examines a bounded
//! window of positions, so a rare filter costs a bounded scan per page, not a table scan.

use std::time::Duration;

use bytes::Bytes;
use sirenia_core::lifecycle::{StreamInfo, StreamStatus};
use sirenia_core::limits::MAX_SCAN_PER_PAGE;
use sirenia_core::{
    AllPage, Direction, EventFilter, EventId, EventStore, Metadata, Position, RecordedEvent,
    StoreError, StreamId, Timestamp,
};
use tokio_postgres::Row;

use crate::{MAX_VISIBILITY_WAIT, PostgresStore, corrupt, pg_error, schema, to_i64};

/// A stream's record from the first four columns of the `version` query (the version from the
/// log, then `start`, `readable_from` and `status` from the lifecycle record, 0 without one); a
/// stream without events or lifecycle is no record.
pub(crate) fn decode_stream_info(row: &Row) -> Result<Option<StreamInfo>, StoreError> {
    let number = |i: usize, what: &str| {
        let v: i64 = row.get(i);
        u64::try_from(v).map_err(|_| corrupt(what, v))
    };
    let status: i16 = row.get(3);
    let info = StreamInfo {
        version: number(0, "version")?,
        start: number(1, "stream start")?,
        readable_from: number(2, "readable_from")?,
        status: StreamStatus::from_code(i64::from(status))?,
    };
    Ok((info.version > 0 || info.has_lifecycle()).then_some(info))
}

/// An event from a row of `Sql::select_events`; a row that is not one (no payload or two, a
/// number out of range) is `Corrupt`.
pub(crate) fn decode_event(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.get(0);
    let stream: &str = row.get(1);
    let revision: i64 = row.get(2);
    let schema_version: i32 = row.get(5);
    let json: Option<String> = row.get(7);
    let raw: Option<Vec<u8>> = row.get(8);
    let metadata: Option<String> = row.get(9);
    let recorded_at: std::time::SystemTime = row.get(10);
    Ok(RecordedEvent {
        position: Position(u64::try_from(position).map_err(|_| corrupt("position", position))?),
        stream_id: StreamId::new(stream).map_err(|e| corrupt("stream id", e))?,
        revision: u64::try_from(revision).map_err(|_| corrupt("revision", revision))?,
        id: EventId(row.get(3)),
        event_type: row.get(4),
        schema_version: u16::try_from(schema_version)
            .map_err(|_| corrupt("schema version", schema_version))?,
        content_type: row.get(6),
        data: match (json, raw) {
            (Some(text), None) => Bytes::from(text.into_bytes()),
            (None, Some(bytes)) => Bytes::from(bytes),
            (None, None) => return Err(corrupt("event", "no payload")),
            (Some(_), Some(_)) => return Err(corrupt("event", "two payloads")),
        },
        metadata: match metadata {
            Some(text) => serde_json::from_str(&text).map_err(|e| corrupt("metadata", e))?,
            None => Metadata::default(),
        },
        recorded_at: Timestamp::from_system_time(recorded_at),
    })
}

impl PostgresStore {
    /// Runs `sql` (prepared once per connection; it selects the columns of `Sql::select_events`)
    /// on a pooled connection and decodes the events.
    pub(crate) async fn query_events(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        let rows = client.query(&statement, params).await.map_err(pg_error)?;
        rows.iter().map(decode_event).collect()
    }

    /// The highest position below the current safe bound, without waiting for transactions in
    /// flight: a subscription's cheap check whether to read again.
    pub(crate) async fn head_without_waiting(&self) -> Result<Position, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.shared.sql.safe_head)
            .await
            .map_err(pg_error)?;
        let head: i64 = client
            .query_one(&statement, &[])
            .await
            .map_err(pg_error)?
            .get(0);
        u64::try_from(head)
            .map(Position)
            .map_err(|_| corrupt("position", head))
    }

    /// The settled bound: the safe bound (every position below it is final), once it has
    /// passed every position committed when the call began (waiting at most
    /// [`MAX_VISIBILITY_WAIT`]).
    async fn settled_bound(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let committed = client
            .prepare_cached(&self.shared.sql.committed_head)
            .await
            .map_err(pg_error)?;
        let bound = client
            .prepare_cached(self.shared.sql.safe_bound)
            .await
            .map_err(pg_error)?;
        let target: i64 = client
            .query_one(&committed, &[])
            .await
            .map_err(pg_error)?
            .get(0);
        let started = std::time::Instant::now();
        let mut pause = Duration::from_micros(500);
        loop {
            let value: i64 = client
                .query_one(&bound, &[])
                .await
                .map_err(pg_error)?
                .get(0);
            if value > target || started.elapsed() >= MAX_VISIBILITY_WAIT {
                return u64::try_from(value).map_err(|_| corrupt("snapshot bound", value));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The position a filtered page's scan stops at (`sql` returns at most one position), if
    /// the log reaches that far.
    async fn scan_end(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        Ok(client
            .query_opt(&statement, params)
            .await
            .map_err(pg_error)?
            .map(|r| r.get(0)))
    }

    /// At most `max` events accepted by `filter` with positions from `low` to `high`
    /// (inclusive), in `direction`.
    async fn log_range(
        &self,
        low: i64,
        high: i64,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let max = to_i64(max as u64);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&low, &high, &max];
        if !filter.categories.is_empty() {
            params.push(&filter.categories);
        }
        if !filter.event_types.is_empty() {
            params.push(&filter.event_types);
        }
        let order = match direction {
            Direction::Forward => "",
            Direction::Backward => " DESC",
        };
        if filter.is_all() {
            // One bound in SQL, the other applied here. With both, a table whose statistics
            // are stale (say, right after a bulk load, before autovacuum analyzed it) gets a
            // bitmap scan of the whole range and a sort: hundreds of milliseconds per page
            // instead of an ordered index scan that stops after `max` rows. Rows past the far
            // bound are at most `max`, and dropped.
            let (condition, param): (&str, &(dyn tokio_postgres::types::ToSql + Sync)) =
                match direction {
                    Direction::Forward => ("position >= $1", &low),
                    // Fences have negative positions: not events.
                    Direction::Backward => ("position <= $1 AND position > 0", &high),
                };
            let sql = format!(
                "{} WHERE {condition} ORDER BY position{order} LIMIT $2",
                self.shared.sql.select_events
            );
            let mut events = self.query_events(&sql, &[param, &max]).await?;
            let keep = events
                .iter()
                .position(|e| {
                    let p = to_i64(e.position.get());
                    p < low || p > high
                })
                .unwrap_or(events.len());
            events.truncate(keep);
            return Ok(events);
        }
        let sql = format!(
            "{} WHERE position >= $1 AND position <= $2{} ORDER BY position{order} LIMIT $3",
            self.shared.sql.select_events,
            Self::filter_sql(filter, 4)
        );
        self.query_events(&sql, &params).await
    }

    /// The filter's conditions, with parameters numbered from `next`.
    fn filter_sql(filter: &EventFilter, next: usize) -> String {
        let mut sql = String::new();
        let mut n = next;
        if !filter.categories.is_empty() {
            sql.push_str(&format!(" AND split_part(stream_id, '-', 1) = ANY(${n})"));
            n += 1;
        }
        if !filter.event_types.is_empty() {
            sql.push_str(&format!(" AND event_type = ANY(${n})"));
        }
        sql
    }

    /// The highest position below the settled bound (see
    /// [`settled_bound`](Self::settled_bound)): the port's head.
    pub(crate) async fn settled_head(&self) -> Result<Position, StoreError> {
        // The same settled bound as log reads: the head covers what was committed before the
        // call (read-your-writes), and nothing below it can still appear.
        let bound = to_i64(self.settled_bound().await?);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.shared.sql.head_below)
            .await
            .map_err(pg_error)?;
        let head: i64 = client
            .query_one(&statement, &[&bound])
            .await
            .map_err(pg_error)?
            .get(0);
        u64::try_from(head)
            .map(Position)
            .map_err(|_| corrupt("position", head))
    }

    /// A page of `stream`'s events (the port's `read_stream_page`).
    pub(crate) async fn stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let max = to_i64(max as u64);
        let (sql, from) = match direction {
            // No stream reaches revision 2^63 - max: the clamp keeps `from + max` in range.
            Direction::Forward => (
                &self.shared.sql.stream_forward,
                to_i64(from).min(i64::MAX - max),
            ),
            Direction::Backward => (&self.shared.sql.stream_backward, to_i64(from)),
        };
        let events = self
            .query_events(sql, &[&stream.as_str(), &from, &max])
            .await?;
        if events.is_empty() {
            // A tombstoned stream reads as an error, not as empty.
            sirenia_core::lifecycle::readable_from(
                stream,
                self.stream_info(stream).await?.as_ref(),
            )?;
        }
        Ok(events)
    }

    /// A page of the log (the port's `read_all_page`).
    pub(crate) async fn log_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        // Everything below the bound is final: no event can appear there later.
        let bound = self.settled_bound().await?;
        let s = schema::quote(&self.shared.schema);
        let scan = MAX_SCAN_PER_PAGE as i64 - 1;
        match direction {
            Direction::Forward => {
                let start = from.get().max(1);
                if start >= bound {
                    return Ok(AllPage {
                        events: Vec::new(),
                        next: Position(start),
                        at_end: true,
                    });
                }
                // The last position this page may examine: a bounded scan, also when filtered.
                let window_end: Option<i64> = if filter.is_all() {
                    None
                } else {
                    let sql = format!(
                        "SELECT position FROM {s}.events WHERE position >= $1 AND position < $2 \
                         ORDER BY position OFFSET $3 LIMIT 1"
                    );
                    self.scan_end(&sql, &[&to_i64(start), &to_i64(bound), &scan])
                        .await?
                };
                let last = window_end.unwrap_or(to_i64(bound) - 1);
                let events = self
                    .log_range(to_i64(start), last, Direction::Forward, filter, max)
                    .await?;
                let full = events.len() == max;
                let next = match events.last() {
                    Some(e) if full => e.position.get() + 1,
                    _ => u64::try_from(last).unwrap_or(0) + 1,
                };
                Ok(AllPage {
                    events,
                    next: Position(next),
                    at_end: !full && next >= bound,
                })
            }
            Direction::Backward => {
                let top = from.get().min(bound.saturating_sub(1));
                if from == Position::START || top == 0 {
                    return Ok(AllPage {
                        events: Vec::new(),
                        next: Position::START,
                        at_end: true,
                    });
                }
                let window_low: Option<i64> = if filter.is_all() {
                    None
                } else {
                    let sql = format!(
                        "SELECT position FROM {s}.events WHERE position <= $1 AND position > 0 \
                         ORDER BY position DESC OFFSET $2 LIMIT 1"
                    );
                    self.scan_end(&sql, &[&to_i64(top), &scan]).await?
                };
                let low = window_low.unwrap_or(1);
                let events = self
                    .log_range(low, to_i64(top), Direction::Backward, filter, max)
                    .await?;
                let full = events.len() == max;
                let next = match events.last() {
                    Some(e) if full => e.position.get() - 1,
                    _ => u64::try_from(low).unwrap_or(1).saturating_sub(1),
                };
                Ok(AllPage {
                    events,
                    next: Position(next),
                    at_end: next == 0,
                })
            }
        }
    }
}
