//! The schema: forward-only migrations, applied on connect under an advisory lock so that
//! processes starting together migrate once.

use sirenia_core::StoreError;
use tokio_postgres::Client;

use crate::pg_error;

/// Each entry moves a schema one version forward; `{s}` is the quoted schema name. Never edit an
/// entry once released: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: streams (one row per stream, locked by appends), the log, and the append function.
    r#"
CREATE TABLE {s}.streams (
    stream_id text PRIMARY KEY,
    version   bigint NOT NULL
);
CREATE TABLE {s}.events (
    position       bigint PRIMARY KEY,
    stream_id      text NOT NULL,
    revision       bigint NOT NULL,
    event_id       uuid NOT NULL,
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    content_type   text NOT NULL,
    data           jsonb,
    data_bytes     bytea,
    metadata       jsonb,
    recorded_at    timestamptz NOT NULL DEFAULT statement_timestamp(),
    CONSTRAINT events_stream_revision UNIQUE (stream_id, revision),
    CONSTRAINT events_event_id UNIQUE (event_id),
    CONSTRAINT events_one_payload CHECK ((data IS NULL) <> (data_bytes IS NULL))
);
-- Appends the writes of one request, all or nothing. Positions are
-- (transaction id << 20) + the event's index among the transaction's appends, so they increase in
-- transaction-id order, and readers that stop below pg_snapshot_xmin << 20 never see a position
-- appear below one they have read. Stream rows are locked in name order (no deadlocks) and every
-- expectation is checked before any event is inserted; a failed expectation raises SR001 with
-- "<write index>:<version>" as its detail, rolling everything back. Returns the position base
-- and, per write, the stream version before it. It does not NOTIFY: a notifying transaction
-- takes a global lock at commit, which would serialize every append's commit.
CREATE FUNCTION {s}.append(
    p_streams text[], p_kinds smallint[], p_expected bigint[], p_counts bigint[],
    p_write integer[], p_index bigint[],
    p_ids uuid[], p_types text[], p_versions integer[], p_content_types text[],
    p_json jsonb[], p_bytes bytea[], p_metadata jsonb[],
    OUT base bigint, OUT firsts bigint[])
LANGUAGE plpgsql AS $fn$
DECLARE
    n   integer := coalesce(array_length(p_streams, 1), 0);
    i   integer;
    cur bigint;
    ok  boolean;
    xid bigint := pg_current_xact_id()::text::bigint;
BEGIN
    IF xid >= (1::bigint << 43) THEN
        RAISE EXCEPTION 'transaction id % is beyond what positions can encode', xid;
    END IF;
    -- After whatever this transaction appended already (several appends may share it).
    SELECT coalesce(max(e.position) + 1, xid << 20) INTO base FROM {s}.events e
        WHERE e.position >= (xid << 20) AND e.position < ((xid + 1) << 20);
    IF base + coalesce(array_length(p_ids, 1), 0) > ((xid + 1) << 20) THEN
        RAISE EXCEPTION 'one transaction cannot append more than 2^20 events';
    END IF;
    firsts := array_fill(0::bigint, ARRAY[n]);
    FOR i IN SELECT t.ord FROM unnest(p_streams) WITH ORDINALITY AS t(name, ord) ORDER BY t.name LOOP
        -- One statement locks the stream's row and moves its version; a new stream is
        -- created (racing creators meet on the primary key and retry the update).
        LOOP
            UPDATE {s}.streams SET version = version + p_counts[i]
                WHERE stream_id = p_streams[i] RETURNING version - p_counts[i] INTO cur;
            EXIT WHEN FOUND;
            INSERT INTO {s}.streams (stream_id, version) VALUES (p_streams[i], p_counts[i])
                ON CONFLICT (stream_id) DO NOTHING;
            IF FOUND THEN
                cur := 0;
                EXIT;
            END IF;
        END LOOP;
        ok := CASE p_kinds[i]
            WHEN 0 THEN true
            WHEN 1 THEN cur = 0
            WHEN 2 THEN cur > 0
            ELSE cur = p_expected[i]
        END;
        IF NOT ok THEN
            RAISE EXCEPTION USING ERRCODE = 'SR001', MESSAGE = 'sirenia: expected version',
                DETAIL = i::text || ':' || cur::text;
        END IF;
        firsts[i] := cur;
    END LOOP;
    -- p_write[k] is the write of event k, p_index[k] its index within that write.
    INSERT INTO {s}.events (position, stream_id, revision, event_id, event_type, schema_version,
                            content_type, data, data_bytes, metadata)
    SELECT base + e.ord - 1, p_streams[e.w], firsts[e.w] + e.ix, e.id, e.ty, e.ver, e.ct,
           e.js, e.bs, e.md
    FROM unnest(p_write, p_index, p_ids, p_types, p_versions, p_content_types, p_json, p_bytes,
                p_metadata) WITH ORDINALITY AS e(w, ix, id, ty, ver, ct, js, bs, md, ord);
END
$fn$;
"#,
    // 2: projections: a checkpoint per projection name (the next position to read) with the
    // event it is faulted on, parked (dead-letter) events, and the version of each read model
    // readers should use (blue/green), and operators' requests (rebuild, replay parked events)
    // for the running projector; aggregate snapshots.
    r#"
CREATE TABLE {s}.projections (
    name          text PRIMARY KEY,
    next_position bigint NOT NULL,
    fault         jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.parked_events (
    name       text NOT NULL,
    position   bigint NOT NULL,
    event_id   uuid NOT NULL,
    stream_id  text NOT NULL,
    event_type text NOT NULL,
    error      text NOT NULL,
    attempts   integer NOT NULL,
    parked_at  bigint NOT NULL,
    PRIMARY KEY (name, position)
);
CREATE TABLE {s}.projection_versions (
    name       text PRIMARY KEY,
    version    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.projection_requests (
    name         text PRIMARY KEY,
    kind         text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.snapshots (
    stream_id      text NOT NULL,
    version        bigint NOT NULL,
    schema_version integer NOT NULL,
    data           bytea NOT NULL,
    taken_at       bigint NOT NULL,
    recorded_at    bigint NOT NULL,
    PRIMARY KEY (stream_id, version)
);
"#,
    // 3: stream lifecycle (soft delete, tombstone, truncate-before) on the stream rows, and the
    // append function honouring it.
    r#"
ALTER TABLE {s}.streams
    ADD COLUMN start         bigint   NOT NULL DEFAULT 0,
    ADD COLUMN readable_from bigint   NOT NULL DEFAULT 0,
    ADD COLUMN status        smallint NOT NULL DEFAULT 0;
CREATE OR REPLACE FUNCTION {s}.append(
    p_streams text[], p_kinds smallint[], p_expected bigint[], p_counts bigint[],
    p_write integer[], p_index bigint[],
    p_ids uuid[], p_types text[], p_versions integer[], p_content_types text[],
    p_json jsonb[], p_bytes bytea[], p_metadata jsonb[],
    OUT base bigint, OUT firsts bigint[])
LANGUAGE plpgsql AS $fn$
DECLARE
    n   integer := coalesce(array_length(p_streams, 1), 0);
    i   integer;
    cur bigint;
    vis bigint;
    st  smallint;
    ok  boolean;
    xid bigint := pg_current_xact_id()::text::bigint;
BEGIN
    IF xid >= (1::bigint << 43) THEN
        RAISE EXCEPTION 'transaction id % is beyond what positions can encode', xid;
    END IF;
    -- After whatever this transaction appended already (several appends may share it).
    SELECT coalesce(max(e.position) + 1, xid << 20) INTO base FROM {s}.events e
        WHERE e.position >= (xid << 20) AND e.position < ((xid + 1) << 20);
    IF base + coalesce(array_length(p_ids, 1), 0) > ((xid + 1) << 20) THEN
        RAISE EXCEPTION 'one transaction cannot append more than 2^20 events';
    END IF;
    firsts := array_fill(0::bigint, ARRAY[n]);
    FOR i IN SELECT t.ord FROM unnest(p_streams) WITH ORDINALITY AS t(name, ord) ORDER BY t.name LOOP
        -- One statement locks the stream's row and moves its version; a new stream is
        -- created (racing creators meet on the primary key and retry the update).
        LOOP
            UPDATE {s}.streams SET version = version + p_counts[i]
                WHERE stream_id = p_streams[i] RETURNING version - p_counts[i], status
                INTO cur, st;
            EXIT WHEN FOUND;
            INSERT INTO {s}.streams (stream_id, version) VALUES (p_streams[i], p_counts[i])
                ON CONFLICT (stream_id) DO NOTHING;
            IF FOUND THEN
                cur := 0;
                st := 0;
                EXIT;
            END IF;
        END LOOP;
        -- Status 2: tombstoned, closed for good. Status 1: soft-deleted, so expectations see
        -- no stream, and events recreate it (revisions go on from cur).
        IF st = 2 THEN
            RAISE EXCEPTION USING ERRCODE = 'SR002', MESSAGE = 'sirenia: stream tombstoned',
                DETAIL = i::text;
        END IF;
        vis := CASE WHEN st = 1 THEN 0 ELSE cur END;
        ok := CASE p_kinds[i]
            WHEN 0 THEN true
            WHEN 1 THEN vis = 0
            WHEN 2 THEN vis > 0
            ELSE vis = p_expected[i]
        END;
        IF NOT ok THEN
            RAISE EXCEPTION USING ERRCODE = 'SR001', MESSAGE = 'sirenia: expected version',
                DETAIL = i::text || ':' || vis::text;
        END IF;
        IF st = 1 AND p_counts[i] > 0 THEN
            UPDATE {s}.streams SET status = 0 WHERE stream_id = p_streams[i];
        END IF;
        firsts[i] := cur;
    END LOOP;
    -- p_write[k] is the write of event k, p_index[k] its index within that write.
    INSERT INTO {s}.events (position, stream_id, revision, event_id, event_type, schema_version,
                            content_type, data, data_bytes, metadata)
    SELECT base + e.ord - 1, p_streams[e.w], firsts[e.w] + e.ix, e.id, e.ty, e.ver, e.ct,
           e.js, e.bs, e.md
    FROM unnest(p_write, p_index, p_ids, p_types, p_versions, p_content_types, p_json, p_bytes,
                p_metadata) WITH ORDINALITY AS e(w, ix, id, ty, ver, ct, js, bs, md, ord);
END
$fn$;
"#,
    // 4: expected versions decided by the log itself. A stream's version is the revision after
    // its last event, and the unique (stream_id, revision) key is what makes two appends of
    // the same revision meet, so a single-stream append is one plain INSERT: the stream rows
    // keep only lifecycle records, and no longer move with every append. What keeps appends
    // out of a deleted or tombstoned stream is a fence: a row in the stream's revision space
    // at its version, with a negative position (every read of the log reads positions from 1,
    // so no reader ever sees one). An append of that revision meets the fence on the key and
    // is decided again by the append function, which honours the lifecycle (and, when it
    // recreates a soft-deleted stream, replaces the fence by the first new event).
    r#"
-- Processes still running an older Sirenia wait here, and fail afterwards: none can close a
-- stream between the fences below and the column's removal.
LOCK TABLE {s}.streams, {s}.events IN SHARE ROW EXCLUSIVE MODE;
CREATE SEQUENCE {s}.fence_positions;
INSERT INTO {s}.events (position, stream_id, revision, event_id, event_type, schema_version,
                        content_type, data_bytes)
SELECT -nextval('{s}.fence_positions'), stream_id, version, gen_random_uuid(), '$fence', 0,
       'application/x-sirenia-fence', '\x'::bytea
FROM {s}.streams WHERE status <> 0;
ALTER TABLE {s}.streams DROP COLUMN version;
-- Puts a fence at the stream's version and returns that version (or the version of the fence
-- already there: a fence is always the stream's top revision). An append that takes the
-- revision first sends it round again; the loop is here, in the server, so that it keeps up
-- with appends that never stop.
CREATE FUNCTION {s}.fence(p_stream text) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    v     bigint;
    p     bigint;
    tries integer := 0;
BEGIN
    LOOP
        SELECT e.revision, e.position INTO v, p FROM {s}.events e
            WHERE e.stream_id = p_stream ORDER BY e.revision DESC LIMIT 1;
        IF NOT FOUND THEN
            v := 0;
        ELSIF p < 0 THEN
            RETURN v;
        ELSE
            v := v + 1;
        END IF;
        BEGIN
            INSERT INTO {s}.events (position, stream_id, revision, event_id, event_type,
                                    schema_version, content_type, data_bytes)
            VALUES (-nextval('{s}.fence_positions'), p_stream, v, gen_random_uuid(), '$fence',
                    0, 'application/x-sirenia-fence', '\x'::bytea);
            RETURN v;
        EXCEPTION WHEN unique_violation THEN
            tries := tries + 1;
            IF tries >= 10000 THEN
                RAISE EXCEPTION 'sirenia: appends kept taking the revision a fence was to hold';
            END IF;
        END;
    END LOOP;
END
$fn$;
-- The append function, with versions from the log. Calls take an advisory lock per stream
-- name, in name order (lifecycle records are few, and a row lock needs a row), so calls on
-- the same streams take turns and never wait on each other in a cycle. One-statement appends
-- take no lock: one that takes a revision this call decided on makes the INSERT fail on the
-- key, and the call decides again (in read committed; a transaction with a fixed snapshot
-- would only see the same versions again, and gets a serialization failure to retry).
CREATE OR REPLACE FUNCTION {s}.append(
    p_streams text[], p_kinds smallint[], p_expected bigint[], p_counts bigint[],
    p_write integer[], p_index bigint[],
    p_ids uuid[], p_types text[], p_versions integer[], p_content_types text[],
    p_json jsonb[], p_bytes bytea[], p_metadata jsonb[],
    OUT base bigint, OUT firsts bigint[])
LANGUAGE plpgsql AS $fn$
DECLARE
    n       integer := coalesce(array_length(p_streams, 1), 0);
    i       integer;
    cur     bigint;
    vis     bigint;
    st      smallint;
    ok      boolean;
    tries   integer := 0;
    clash   text;
    ordered integer[];
    xid     bigint := pg_current_xact_id()::text::bigint;
BEGIN
    IF xid >= (1::bigint << 43) THEN
        RAISE EXCEPTION 'transaction id % is beyond what positions can encode', xid;
    END IF;
    -- After whatever this transaction appended already (several appends may share it).
    SELECT coalesce(max(e.position) + 1, xid << 20) INTO base FROM {s}.events e
        WHERE e.position >= (xid << 20) AND e.position < ((xid + 1) << 20);
    IF base + coalesce(array_length(p_ids, 1), 0) > ((xid + 1) << 20) THEN
        RAISE EXCEPTION 'one transaction cannot append more than 2^20 events';
    END IF;
    SELECT coalesce(array_agg(t.ord::integer ORDER BY t.name), '{}') INTO ordered
        FROM unnest(p_streams) WITH ORDINALITY AS t(name, ord);
    FOREACH i IN ARRAY ordered LOOP
        PERFORM pg_advisory_xact_lock(hashtext('sirenia-stream:{s}'), hashtext(p_streams[i]));
    END LOOP;
    LOOP
        BEGIN
            firsts := array_fill(0::bigint, ARRAY[n]);
            FOREACH i IN ARRAY ordered LOOP
                -- The lifecycle record, locked against a concurrent change (no record:
                -- active); what follows sees what the change committed.
                st := NULL;
                SELECT r.status INTO st FROM {s}.streams r WHERE r.stream_id = p_streams[i]
                    FOR UPDATE;
                st := coalesce(st, 0);
                SELECT coalesce(max(e.revision) + 1, 0) INTO cur FROM {s}.events e
                    WHERE e.stream_id = p_streams[i] AND e.position > 0;
                -- Status 2: tombstoned, closed for good. Status 1: soft-deleted, so
                -- expectations see no stream, and events recreate it (revisions go on).
                IF st = 2 THEN
                    RAISE EXCEPTION USING ERRCODE = 'SR002',
                        MESSAGE = 'sirenia: stream tombstoned', DETAIL = i::text;
                END IF;
                vis := CASE WHEN st = 1 THEN 0 ELSE cur END;
                ok := CASE p_kinds[i]
                    WHEN 0 THEN true
                    WHEN 1 THEN vis = 0
                    WHEN 2 THEN vis > 0
                    ELSE vis = p_expected[i]
                END;
                IF NOT ok THEN
                    RAISE EXCEPTION USING ERRCODE = 'SR001',
                        MESSAGE = 'sirenia: expected version',
                        DETAIL = i::text || ':' || vis::text;
                END IF;
                IF st = 1 AND p_counts[i] > 0 THEN
                    -- Recreated: the fence gives way to the first new event.
                    DELETE FROM {s}.events WHERE stream_id = p_streams[i] AND revision = cur
                        AND position < 0;
                    UPDATE {s}.streams SET status = 0 WHERE stream_id = p_streams[i];
                END IF;
                firsts[i] := cur;
            END LOOP;
            -- p_write[k] is the write of event k, p_index[k] its index within that write.
            INSERT INTO {s}.events (position, stream_id, revision, event_id, event_type,
                                    schema_version, content_type, data, data_bytes, metadata)
            SELECT base + e.ord - 1, p_streams[e.w], firsts[e.w] + e.ix, e.id, e.ty, e.ver,
                   e.ct, e.js, e.bs, e.md
            FROM unnest(p_write, p_index, p_ids, p_types, p_versions, p_content_types, p_json,
                        p_bytes, p_metadata) WITH ORDINALITY AS e(w, ix, id, ty, ver, ct, js, bs,
                                                                  md, ord);
            RETURN;
        EXCEPTION WHEN unique_violation THEN
            GET STACKED DIAGNOSTICS clash = CONSTRAINT_NAME;
            tries := tries + 1;
            IF clash IS DISTINCT FROM 'events_stream_revision' OR tries >= 100 THEN
                RAISE;
            END IF;
            IF current_setting('transaction_isolation') <> 'read committed' THEN
                RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                    MESSAGE = 'sirenia: a concurrent append took a revision this '
                              'transaction''s snapshot cannot see; retry the transaction';
            END IF;
        END;
    END LOOP;
END
$fn$;
"#,
    // 5: no CHECK constraint on the log. PostgreSQL prepares a table's CHECK expressions anew
    // for every statement that writes it, and `events_one_payload` alone cost about 5 % of
    // single-event appends (S1, one writer). Every statement of the store fills exactly one of
    // `data` and `data_bytes`, and every read refuses a row that does not as corrupt.
    r#"
ALTER TABLE {s}.events DROP CONSTRAINT events_one_payload;
"#,
    // 6: document read models (`DocumentProjection`): JSON documents by collection and id,
    // written by the projection that owns the collection, with its checkpoint.
    r#"
CREATE TABLE {s}.documents (
    collection text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    body       jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, id)
);
"#,
];

/// The schema version this build writes.
#[allow(clippy::cast_possible_truncation)] // a handful of migrations, checked at compile time
pub(crate) const SCHEMA_VERSION: i32 = {
    assert!(MIGRATIONS.len() < i32::MAX as usize);
    MIGRATIONS.len() as i32
};

/// Creates `schema` if needed and brings it to [`SCHEMA_VERSION`], holding an advisory lock so
/// that concurrent starts migrate once. A schema from a newer Sirenia is refused.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), StoreError> {
    migrate_to(client, schema, SCHEMA_VERSION).await
}

/// [`migrate`], stopping at version `target` (tests start from older schemas).
async fn migrate_to(client: &mut Client, schema: &str, target: i32) -> Result<(), StoreError> {
    assert!(
        (1..=SCHEMA_VERSION).contains(&target),
        "no schema version {target}"
    );
    let quoted = quote(schema);
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('sirenia-migrate:' || $1))",
        &[&schema],
    )
    .await
    .map_err(pg_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         CREATE TABLE IF NOT EXISTS {quoted}.sirenia_schema (version integer NOT NULL);"
    ))
    .await
    .map_err(pg_error)?;
    let found: Option<i32> = tx
        .query_opt(&format!("SELECT version FROM {quoted}.sirenia_schema"), &[])
        .await
        .map_err(pg_error)?
        .map(|row| row.get(0));
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::Incompatible {
            message: format!(
                "schema {schema} has version {found}, written by a newer Sirenia; this build \
                 knows up to {SCHEMA_VERSION}"
            ),
        });
    }
    let (from, to) = (
        usize::try_from(found).unwrap_or(0),
        usize::try_from(target).unwrap_or(0),
    );
    for migration in MIGRATIONS.get(from..to).unwrap_or_default() {
        let sql = migration.replace("{s}", &quoted);
        tx.batch_execute(&sql).await.map_err(pg_error)?;
    }
    if found < target {
        tx.execute(&format!("DELETE FROM {quoted}.sirenia_schema"), &[])
            .await
            .map_err(pg_error)?;
        tx.execute(
            &format!("INSERT INTO {quoted}.sirenia_schema (version) VALUES ($1)"),
            &[&target],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}

/// `name` as a quoted SQL identifier (names are validated to `[a-z0-9_]` before).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sirenia_core::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamId, StreamWrite};

    use super::*;
    use crate::{PostgresOptions, PostgresStore};

    /// A schema written by version 3 (stream rows carrying versions) with an active, a
    /// soft-deleted and a tombstoned stream: version 4 fences the two closed ones, and the
    /// store goes on as their records say.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_4_fences_the_streams_version_3_closed() {
        let url = sirenia_testkit::postgres::url();
        let schema = sirenia_testkit::postgres::fresh_schema("sirenia_m");
        let _drop = sirenia_testkit::postgres::DropSchema(schema.clone());
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed by this test: {e}"));
        tokio::spawn(connection);
        migrate_to(&mut client, &schema, 3).await.unwrap();
        let s = quote(&schema);
        for (stream, events) in [("open-1", 2), ("deleted-1", 3), ("closed-1", 1)] {
            for _ in 0..events {
                client
                    .execute(
                        &format!(
                            "SELECT {s}.append(ARRAY[$1], ARRAY[0::smallint], ARRAY[0::bigint], \
                             ARRAY[1::bigint], ARRAY[1], ARRAY[0::bigint], \
                             ARRAY[gen_random_uuid()], ARRAY['E'], ARRAY[1], \
                             ARRAY['application/json'], ARRAY['{{}}'::jsonb], \
                             ARRAY[NULL::bytea], ARRAY[NULL::jsonb])"
                        ),
                        &[&stream],
                    )
                    .await
                    .unwrap();
            }
        }
        client
            .batch_execute(&format!(
                "UPDATE {s}.streams SET start = version, readable_from = version, status = 1 \
                 WHERE stream_id = 'deleted-1';
                 UPDATE {s}.streams SET start = version, readable_from = version, status = 2 \
                 WHERE stream_id = 'closed-1';"
            ))
            .await
            .unwrap();
        let options = PostgresOptions {
            schema: schema.clone(),
            pool_size: 2,
            ..PostgresOptions::default()
        };
        let store = PostgresStore::connect_with(&url, options).await.unwrap();
        let fences: Vec<(String, i64)> = client
            .query(
                &format!(
                    "SELECT stream_id, revision FROM {s}.events WHERE position < 0 \
                     ORDER BY stream_id"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            fences,
            vec![("closed-1".to_owned(), 1), ("deleted-1".to_owned(), 3)]
        );
        let one = |name: &str| {
            vec![StreamWrite::new(
                StreamId::new(name).unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent::json("E", &serde_json::json!({}))],
            )]
        };
        let open = store.append(one("open-1")).await.unwrap();
        assert_eq!(open.streams[0].first_revision, 2);
        let recreated = store.append(one("deleted-1")).await.unwrap();
        assert_eq!(recreated.streams[0].first_revision, 3, "revisions go on");
        let closed = store.append(one("closed-1")).await;
        assert!(
            matches!(closed, Err(StoreError::StreamTombstoned { .. })),
            "{closed:?}"
        );
    }
}
