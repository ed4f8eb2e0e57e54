//! Projections whose read model lives in the store's database: the handler writes its tables
//! in the same PostgreSQL transaction that moves the projection's checkpoint, so a crash at any
//! point neither loses nor repeats an effect.
//!
//! Checkpoints live in `<schema>.projections`, parked events in `<schema>.parked_events`. One
//! instance of a projection name runs at a time across every process on the database: a target
//! takes a session advisory lock in `start` (a standby waits there) on a connection of its own,
//! outside the store's pool, and holds it until it is dropped: closing the connection ends the
//! session, which releases the lock, or withdraws a standby's request still waiting (so a
//! cancelled standby leaves nothing behind). If the process dies, PostgreSQL ends the session.

use sirenia_core::projection::{
    ApplyError, Checkpoint, CheckpointStore, EventBatch, FailedEvent, HandlerError,
    ProjectionRequest, ProjectionTarget,
};
use sirenia_core::{Position, RecordedEvent, StoreError, Timestamp};
use tokio_postgres::{GenericClient, Transaction};

use crate::schema::quote;
use crate::{PostgresStore, pg_error, to_i64};

/// A projection whose read model is tables in the store's database. Each method runs inside
/// the transaction it is given; returning an error rolls all of it back.
pub trait PostgresProjection: Send + Sync + 'static {
    /// Creates the read model's tables if they do not exist (runs on every start).
    fn setup(
        &mut self,
        tx: &Transaction<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
    /// Applies one event.
    fn apply(
        &mut self,
        tx: &Transaction<'_>,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
    /// Empties the read model, for a rebuild.
    fn reset(
        &mut self,
        tx: &Transaction<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// The SQL a projection target runs, for one schema.
#[derive(Clone, Debug)]
struct Sql {
    lock: String,
    load: String,
    save: String,
    park: String,
    fault: String,
    parked: String,
    unpark: String,
    reset_parked: String,
    reset_checkpoint: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let s = quote(schema);
        Sql {
            lock: "SELECT pg_advisory_lock(hashtext('sirenia-projection:' || $1), hashtext($2))"
                .to_owned(),
            load: format!("SELECT next_position, fault::text FROM {s}.projections WHERE name = $1"),
            // The checkpoint never moves backwards (a reset deletes the row instead).
            save: format!(
                "INSERT INTO {s}.projections (name, next_position, fault, updated_at)
                 VALUES ($1, $2, NULL, now())
                 ON CONFLICT (name) DO UPDATE SET
                   next_position = GREATEST({s}.projections.next_position, excluded.next_position),
                   fault = NULL, updated_at = now()"
            ),
            park: format!(
                "INSERT INTO {s}.parked_events
                   (name, position, event_id, stream_id, event_type, error, attempts, parked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (name, position) DO UPDATE SET error = excluded.error,
                   attempts = excluded.attempts, parked_at = excluded.parked_at"
            ),
            fault: format!(
                "INSERT INTO {s}.projections (name, next_position, fault, updated_at)
                 VALUES ($1, $2, $3::text::jsonb, now())
                 ON CONFLICT (name) DO UPDATE SET fault = excluded.fault, updated_at = now()"
            ),
            parked: format!(
                "SELECT position, event_id, stream_id, event_type, error, attempts, parked_at
                 FROM {s}.parked_events WHERE name = $1 ORDER BY position"
            ),
            unpark: format!("DELETE FROM {s}.parked_events WHERE name = $1 AND position = $2"),
            reset_parked: format!("DELETE FROM {s}.parked_events WHERE name = $1"),
            reset_checkpoint: format!("DELETE FROM {s}.projections WHERE name = $1"),
        }
    }
}

async fn load_checkpoint(
    client: &impl GenericClient,
    sql: &Sql,
    name: &str,
) -> Result<Checkpoint, StoreError> {
    let Some(row) = client
        .query_opt(&sql.load, &[&name])
        .await
        .map_err(pg_error)?
    else {
        return Ok(Checkpoint {
            next: Position(1),
            fault: None,
        });
    };
    let next: i64 = row.get(0);
    let fault: Option<String> = row.get(1);
    let next = u64::try_from(next).map_err(|_| StoreError::Corrupt {
        message: format!("projection {name} has checkpoint {next}"),
    })?;
    let fault = fault
        .map(|f| serde_json::from_str::<FailedEvent>(&f))
        .transpose()
        .map_err(|e| StoreError::Corrupt {
            message: format!("projection {name} fault record: {e}"),
        })?;
    Ok(Checkpoint {
        next: Position(next),
        fault,
    })
}

async fn save_checkpoint(
    client: &impl GenericClient,
    sql: &Sql,
    name: &str,
    next: Position,
) -> Result<(), StoreError> {
    client
        .execute(&sql.save, &[&name, &to_i64(next.0)])
        .await
        .map(|_| ())
        .map_err(pg_error)
}

async fn park_row(
    client: &impl GenericClient,
    sql: &Sql,
    name: &str,
    failed: &FailedEvent,
) -> Result<(), StoreError> {
    let attempts = i32::try_from(failed.attempts).unwrap_or(i32::MAX);
    client
        .execute(
            &sql.park,
            &[
                &name,
                &to_i64(failed.position.0),
                &failed.event_id.as_uuid(),
                &failed.stream,
                &failed.event_type,
                &failed.error,
                &attempts,
                &to_i64(failed.at.as_micros()),
            ],
        )
        .await
        .map(|_| ())
        .map_err(pg_error)
}

async fn set_fault(
    client: &impl GenericClient,
    sql: &Sql,
    name: &str,
    failed: &FailedEvent,
) -> Result<(), StoreError> {
    let fault = serde_json::to_string(failed).map_err(|e| StoreError::Corrupt {
        message: format!("fault record: {e}"),
    })?;
    client
        .execute(&sql.fault, &[&name, &to_i64(failed.position.0), &fault])
        .await
        .map(|_| ())
        .map_err(pg_error)
}

async fn list_parked(
    client: &impl GenericClient,
    sql: &Sql,
    name: &str,
) -> Result<Vec<FailedEvent>, StoreError> {
    let rows = client
        .query(&sql.parked, &[&name])
        .await
        .map_err(pg_error)?;
    let corrupt = |what: &str| StoreError::Corrupt {
        message: format!("parked event of {name}: bad {what}"),
    };
    rows.iter()
        .map(|r| {
            let position: i64 = r.get(0);
            let attempts: i32 = r.get(5);
            let at: i64 = r.get(6);
            Ok(FailedEvent {
                position: Position(u64::try_from(position).map_err(|_| corrupt("position"))?),
                event_id: sirenia_core::EventId::from(r.get::<_, uuid::Uuid>(1)),
                stream: r.get(2),
                event_type: r.get(3),
                error: r.get(4),
                attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
                at: Timestamp::from_micros(u64::try_from(at).map_err(|_| corrupt("time"))?),
            })
        })
        .collect()
}

fn not_started() -> StoreError {
    StoreError::Backend {
        message: "the projection target was not started".to_owned(),
        source: None,
    }
}

fn handler_error(index: usize, error: HandlerError) -> ApplyError {
    ApplyError::Handler {
        index,
        error,
        prefix_committed: false,
    }
}

/// The target of a [`PostgresProjection`]: see [`PostgresStore::projection`].
pub struct PostgresTarget<P> {
    name: String,
    store: PostgresStore,
    sql: Sql,
    handler: P,
    /// The connection (outside the pool) holding the advisory lock; every transaction runs on
    /// it. Dropping it ends the session, which releases the lock, or withdraws the request of
    /// a standby still waiting for it.
    client: Option<tokio_postgres::Client>,
}

impl<P: PostgresProjection> PostgresTarget<P> {
    pub(crate) fn new(store: &PostgresStore, name: &str, handler: P) -> Self {
        PostgresTarget {
            name: name.to_owned(),
            sql: Sql::new(store.schema()),
            store: store.clone(),
            handler,
            client: None,
        }
    }

    fn client(&mut self) -> Result<&mut tokio_postgres::Client, StoreError> {
        self.client.as_mut().ok_or_else(not_started)
    }
}

impl<P: PostgresProjection> ProjectionTarget for PostgresTarget<P> {
    async fn start(&mut self) -> Result<Checkpoint, StoreError> {
        if self.client.is_none() {
            let client = self.store.dedicated_client().await?;
            client
                .execute(&self.sql.lock, &[&self.store.schema(), &self.name])
                .await
                .map_err(pg_error)?;
            self.client = Some(client);
        }
        let (sql, name) = (self.sql.clone(), self.name.clone());
        let Some(client) = self.client.as_mut() else {
            return Err(not_started());
        };
        let tx = client.transaction().await.map_err(pg_error)?;
        self.handler
            .setup(&tx)
            .await
            .map_err(|e| StoreError::Backend {
                message: format!("projection {name}: setting up its tables failed"),
                source: Some(e),
            })?;
        let checkpoint = load_checkpoint(&tx, &sql, &name).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(checkpoint)
    }

    async fn apply(&mut self, batch: EventBatch, next: Position) -> Result<(), ApplyError> {
        let Some(client) = self.client.as_mut() else {
            return Err(not_started().into());
        };
        let tx = client.transaction().await.map_err(pg_error)?;
        for (index, event) in batch.events().iter().enumerate() {
            self.handler
                .apply(&tx, event)
                .await
                .map_err(|e| handler_error(index, e))?;
        }
        save_checkpoint(&tx, &self.sql, &self.name, next).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    async fn park(&mut self, failed: &FailedEvent, next: Position) -> Result<(), StoreError> {
        let (sql, name) = (self.sql.clone(), self.name.clone());
        let tx = self.client()?.transaction().await.map_err(pg_error)?;
        park_row(&tx, &sql, &name, failed).await?;
        save_checkpoint(&tx, &sql, &name, next).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn fault(&mut self, failed: &FailedEvent) -> Result<(), StoreError> {
        let (sql, name) = (self.sql.clone(), self.name.clone());
        set_fault(&*self.client()?, &sql, &name, failed).await
    }

    async fn parked(&mut self) -> Result<Vec<FailedEvent>, StoreError> {
        let (sql, name) = (self.sql.clone(), self.name.clone());
        list_parked(&*self.client()?, &sql, &name).await
    }

    async fn replay_parked(&mut self, event: RecordedEvent) -> Result<(), ApplyError> {
        let Some(client) = self.client.as_mut() else {
            return Err(not_started().into());
        };
        let tx = client.transaction().await.map_err(pg_error)?;
        self.handler
            .apply(&tx, &event)
            .await
            .map_err(|e| handler_error(0, e))?;
        tx.execute(&self.sql.unpark, &[&self.name, &to_i64(event.position.0)])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    async fn pending_request(&mut self) -> Result<Option<ProjectionRequest>, StoreError> {
        self.store.pending_request(&self.name).await
    }

    async fn finish_request(&mut self, request: ProjectionRequest) -> Result<(), StoreError> {
        let s = quote(self.store.schema());
        let name = self.name.clone();
        self.client()?
            .execute(
                &format!("DELETE FROM {s}.projection_requests WHERE name = $1 AND kind = $2"),
                &[&name, &request.as_str()],
            )
            .await
            .map(|_| ())
            .map_err(pg_error)
    }

    async fn reset(&mut self) -> Result<(), ApplyError> {
        let Some(client) = self.client.as_mut() else {
            return Err(not_started().into());
        };
        let tx = client.transaction().await.map_err(pg_error)?;
        self.handler
            .reset(&tx)
            .await
            .map_err(|e| handler_error(0, e))?;
        tx.execute(&self.sql.reset_parked, &[&self.name])
            .await
            .map_err(pg_error)?;
        tx.execute(&self.sql.reset_checkpoint, &[&self.name])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }
}

/// Checkpoints in the store's database for
/// [`AtLeastOnce`](sirenia_core::projection::AtLeastOnce) projections into sinks elsewhere.
/// See [`PostgresStore::checkpoints`].
pub struct PostgresCheckpoints {
    store: PostgresStore,
    sql: Sql,
}

impl PostgresCheckpoints {
    pub(crate) fn new(store: &PostgresStore) -> Self {
        PostgresCheckpoints {
            sql: Sql::new(store.schema()),
            store: store.clone(),
        }
    }
}

impl CheckpointStore for PostgresCheckpoints {
    async fn load(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        load_checkpoint(&**self.store.client().await?, &self.sql, name).await
    }

    async fn save(&mut self, name: &str, next: Position) -> Result<(), StoreError> {
        save_checkpoint(&**self.store.client().await?, &self.sql, name, next).await
    }

    async fn park(
        &mut self,
        name: &str,
        failed: &FailedEvent,
        next: Position,
    ) -> Result<(), StoreError> {
        let mut client = self.store.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        park_row(&*tx, &self.sql, name, failed).await?;
        save_checkpoint(&*tx, &self.sql, name, next).await?;
        tx.commit().await.map_err(pg_error)
    }

    async fn fault(&mut self, name: &str, failed: &FailedEvent) -> Result<(), StoreError> {
        set_fault(&**self.store.client().await?, &self.sql, name, failed).await
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        list_parked(&**self.store.client().await?, &self.sql, name).await
    }

    async fn unpark(&mut self, name: &str, position: Position) -> Result<(), StoreError> {
        self.store
            .client()
            .await?
            .execute(&self.sql.unpark, &[&name, &to_i64(position.0)])
            .await
            .map(|_| ())
            .map_err(pg_error)
    }

    async fn reset(&mut self, name: &str) -> Result<(), StoreError> {
        let mut client = self.store.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute(&self.sql.reset_parked, &[&name])
            .await
            .map_err(pg_error)?;
        tx.execute(&self.sql.reset_checkpoint, &[&name])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)
    }
}

/// Every projection recorded in the schema.
pub(crate) async fn stored_projections(
    store: &PostgresStore,
) -> Result<Vec<sirenia_core::projection::StoredProjection>, StoreError> {
    let client = store.client().await?;
    let sql = Sql::new(store.schema());
    let s = quote(store.schema());
    let rows = client
        .query(
            &format!(
                "SELECT p.name, (SELECT count(*) FROM {s}.parked_events e WHERE e.name = p.name)
                 FROM {s}.projections p ORDER BY p.name"
            ),
            &[],
        )
        .await
        .map_err(pg_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get(0);
        let parked: i64 = row.get(1);
        let checkpoint = load_checkpoint(&**client, &sql, &name).await?;
        out.push(sirenia_core::projection::StoredProjection {
            name,
            next: checkpoint.next,
            fault: checkpoint.fault,
            parked: u64::try_from(parked).unwrap_or(0),
        });
    }
    Ok(out)
}

/// The parked events of projection `name`.
pub(crate) async fn stored_parked(
    store: &PostgresStore,
    name: &str,
) -> Result<Vec<FailedEvent>, StoreError> {
    let client = store.client().await?;
    list_parked(&**client, &Sql::new(store.schema()), name).await
}
