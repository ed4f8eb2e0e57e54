//! The PostgreSQL store's [`ProjectionBackend`]: projections whose read model lives in the
//! store's database commit the handler's writes (its own tables through
//! [`PostgresProjection`], documents) in the same transaction that moves the checkpoint, so a
//! crash at any point neither loses nor repeats an effect. The target itself is core's
//! [`TransactionalTarget`].
//!
//! Checkpoints live in `<schema>.projections`, parked events in `<schema>.parked_events`,
//! documents in `<schema>.documents`. One instance of a projection name runs at a time across
//! every process on the database: a backend takes a session advisory lock in `lock` (a standby
//! waits there) on a connection of its own, outside the store's pool, and holds it until it is
//! dropped: closing the connection ends the session, which releases the lock, or withdraws a
//! standby's request still waiting (so a cancelled standby leaves nothing behind). If the
//! process dies, PostgreSQL ends the session. Here too are the admin port's queries on those
//! tables.

use serde_json::Value;
use sirenia_core::Document;
use sirenia_core::projection::{
    ApplyError, Checkpoint, FailedEvent, HandlerError, ProjectionRequest,
};
use sirenia_core::transactional::{
    BackendCheckpoints, Bookkeeping, DocumentWrite, ProjectionBackend, Step, TransactionalTarget,
    Work,
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
    pending_request: String,
    finish_request: String,
    put_document: String,
    delete_document: String,
    clear_documents: String,
    document: String,
    documents: String,
    notify: String,
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
            pending_request: format!("SELECT kind FROM {s}.projection_requests WHERE name = $1"),
            finish_request: format!(
                "DELETE FROM {s}.projection_requests WHERE name = $1 AND kind = $2"
            ),
            put_document: format!(
                "INSERT INTO {s}.documents (collection, id, body) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body,
                   updated_at = now()"
            ),
            delete_document: format!("DELETE FROM {s}.documents WHERE collection = $1 AND id = $2"),
            clear_documents: format!("DELETE FROM {s}.documents WHERE collection = $1"),
            document: format!(
                "SELECT body::text FROM {s}.documents WHERE collection = $1 AND id = $2"
            ),
            documents: format!(
                "SELECT id, body::text FROM {s}.documents WHERE collection = $1 AND id > $2
                 ORDER BY id LIMIT $3"
            ),
            // The store's wake-up channel (schema names are `[a-z0-9_]`).
            notify: format!("NOTIFY sirenia_{schema}"),
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

fn handler_error(index: usize, error: HandlerError) -> ApplyError {
    ApplyError::Handler {
        index,
        error,
        prefix_committed: false,
    }
}

/// No handler of the store's own: a projection whose read model is documents only.
impl PostgresProjection for () {
    async fn setup(&mut self, _: &Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn apply(&mut self, _: &Transaction<'_>, _: &RecordedEvent) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn reset(&mut self, _: &Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A projection target on PostgreSQL: see [`PostgresStore::projection`].
pub type PostgresTarget<P> = TransactionalTarget<PostgresBackend<P>>;

/// Checkpoints in the store's database for
/// [`AtLeastOnce`](sirenia_core::projection::AtLeastOnce) projections into sinks elsewhere:
/// see [`StoreAdmin::checkpoints`](sirenia_core::StoreAdmin::checkpoints).
pub type PostgresCheckpoints = BackendCheckpoints<PostgresBackend<()>>;

/// The PostgreSQL store's [`ProjectionBackend`], running handler `P` (`()` for none) in its
/// transactions on a connection of its own, outside the pool (opened on first use), which
/// holds the projection's advisory lock once taken.
pub struct PostgresBackend<P> {
    store: PostgresStore,
    sql: Sql,
    handler: P,
    client: Option<tokio_postgres::Client>,
    /// The projection whose lock `client`'s session holds.
    locked: Option<String>,
    /// The projection whose lock went with a closed connection: nothing is read or committed
    /// until `lock` takes it again (the projector starts again after the error).
    lost: Option<String>,
}

impl<P: PostgresProjection> PostgresBackend<P> {
    pub(crate) fn new(store: &PostgresStore, handler: P) -> Self {
        PostgresBackend {
            sql: Sql::new(store.schema()),
            store: store.clone(),
            handler,
            client: None,
            locked: None,
            lost: None,
        }
    }

    /// Forgets a connection that has closed (a restart, a failover, a dropped session): a new
    /// one is opened on next use, unless the lock went with it.
    fn forget_closed(&mut self) {
        if self
            .client
            .as_ref()
            .is_some_and(tokio_postgres::Client::is_closed)
        {
            self.forget_connection();
        }
    }

    fn forget_connection(&mut self) {
        self.client = None;
        if let Some(name) = self.locked.take() {
            self.lost = Some(name);
        }
    }

    /// `result`, after forgetting the connection if it failed because the connection closed
    /// (the client may learn of it only from the failing call).
    fn checked<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            self.note_failure(e);
        }
        result
    }

    fn note_failure(&mut self, error: &StoreError) {
        if let StoreError::Backend {
            source: Some(source),
            ..
        } = error
            && source
                .downcast_ref::<tokio_postgres::Error>()
                .is_some_and(tokio_postgres::Error::is_closed)
        {
            self.forget_connection();
        }
    }

    /// The connection (opened if needed) and the statements.
    async fn connection(&mut self) -> Result<(&tokio_postgres::Client, &Sql), StoreError> {
        self.client().await?;
        match &self.client {
            Some(client) => Ok((client, &self.sql)),
            None => Err(StoreError::Closed),
        }
    }

    async fn client(&mut self) -> Result<&mut tokio_postgres::Client, StoreError> {
        self.forget_closed();
        if let Some(name) = &self.lost {
            return Err(StoreError::Backend {
                message: format!(
                    "the connection holding the lock of projection {name} closed; the \
                     projector must take the lock again"
                ),
                source: None,
            });
        }
        if self.client.is_none() {
            self.client = Some(self.store.dedicated_client().await?);
        }
        self.client.as_mut().ok_or_else(|| StoreError::Closed)
    }

    /// Runs the handler's step inside `tx`.
    async fn run_step(
        handler: &mut P,
        tx: &Transaction<'_>,
        step: &Step,
    ) -> Result<(), ApplyError> {
        match step {
            Step::Setup => handler.setup(tx).await.map_err(|e| handler_error(0, e)),
            Step::Apply(batch) => {
                for (index, event) in batch.events().iter().enumerate() {
                    handler
                        .apply(tx, event)
                        .await
                        .map_err(|e| handler_error(index, e))?;
                }
                Ok(())
            }
            Step::Replay(event) => handler
                .apply(tx, event)
                .await
                .map_err(|e| handler_error(0, e)),
            Step::Reset => handler.reset(tx).await.map_err(|e| handler_error(0, e)),
        }
    }
}

async fn write_document(
    tx: &Transaction<'_>,
    sql: &Sql,
    write: &DocumentWrite,
) -> Result<(), StoreError> {
    match write {
        DocumentWrite::Put {
            collection,
            id,
            body,
        } => tx.execute(&sql.put_document, &[collection, id, body]).await,
        DocumentWrite::Delete { collection, id } => {
            tx.execute(&sql.delete_document, &[collection, id]).await
        }
        DocumentWrite::Clear { collection } => {
            tx.execute(&sql.clear_documents, &[collection]).await
        }
    }
    .map(|_| ())
    .map_err(pg_error)
}

async fn bookkeeping(
    tx: &Transaction<'_>,
    sql: &Sql,
    name: &str,
    change: &Bookkeeping,
) -> Result<(), StoreError> {
    match change {
        Bookkeeping::Checkpoint(next) => save_checkpoint(tx, sql, name, *next).await,
        Bookkeeping::Park(failed) => park_row(tx, sql, name, failed).await,
        Bookkeeping::Unpark(position) => tx
            .execute(&sql.unpark, &[&name, &to_i64(position.0)])
            .await
            .map(|_| ())
            .map_err(pg_error),
        Bookkeeping::Fault(failed) => set_fault(tx, sql, name, failed).await,
        Bookkeeping::Reset => {
            tx.execute(&sql.reset_parked, &[&name])
                .await
                .map_err(pg_error)?;
            tx.execute(&sql.reset_checkpoint, &[&name])
                .await
                .map(|_| ())
                .map_err(pg_error)
        }
        Bookkeeping::FinishRequest(request) => tx
            .execute(&sql.finish_request, &[&name, &request.as_str()])
            .await
            .map(|_| ())
            .map_err(pg_error),
    }
}

async fn read_document(
    client: &impl GenericClient,
    sql: &Sql,
    collection: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    let row = client
        .query_opt(&sql.document, &[&collection, &id])
        .await
        .map_err(pg_error)?;
    row.map(|r| decode_document(collection, id, r.get(0)))
        .transpose()
}

fn decode_document(collection: &str, id: &str, body: &str) -> Result<Value, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        message: format!("document {id:?} of {collection:?} is not JSON: {e}"),
    })
}

async fn read_request(
    client: &impl GenericClient,
    sql: &Sql,
    name: &str,
) -> Result<Option<ProjectionRequest>, StoreError> {
    let row = client
        .query_opt(&sql.pending_request, &[&name])
        .await
        .map_err(pg_error)?;
    Ok(row.and_then(|r| ProjectionRequest::parse(r.get::<_, &str>(0))))
}

impl<P: PostgresProjection> ProjectionBackend for PostgresBackend<P> {
    async fn lock(&mut self, name: &str) -> Result<(), StoreError> {
        self.forget_closed();
        if let Some(held) = &self.locked {
            if held == name {
                return Ok(());
            }
            return Err(StoreError::InvalidOptions {
                message: format!("this backend already holds the lock of projection {held}"),
            });
        }
        // Waited for on a connection held only by this call: cancelled (a standby shutting
        // down), the connection closes and withdraws the request.
        let client = match self.client.take() {
            Some(client) => client,
            None => self.store.dedicated_client().await?,
        };
        client
            .execute(&self.sql.lock, &[&self.store.schema(), &name])
            .await
            .map_err(pg_error)?;
        self.client = Some(client);
        self.locked = Some(name.to_owned());
        self.lost = None;
        Ok(())
    }

    async fn checkpoint(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        let result = match self.connection().await {
            Ok((client, sql)) => load_checkpoint(client, sql, name).await,
            Err(e) => Err(e),
        };
        self.checked(result)
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        let result = match self.connection().await {
            Ok((client, sql)) => list_parked(client, sql, name).await,
            Err(e) => Err(e),
        };
        self.checked(result)
    }

    async fn pending_request(
        &mut self,
        name: &str,
    ) -> Result<Option<ProjectionRequest>, StoreError> {
        let result = match self.connection().await {
            Ok((client, sql)) => read_request(client, sql, name).await,
            Err(e) => Err(e),
        };
        self.checked(result)
    }

    async fn document(&mut self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let result = match self.connection().await {
            Ok((client, sql)) => read_document(client, sql, collection, id).await,
            Err(e) => Err(e),
        };
        self.checked(result)
    }

    async fn commit(&mut self, name: &str, work: Work) -> Result<(), ApplyError> {
        self.client().await?;
        let Some(client) = self.client.as_mut() else {
            return Err(StoreError::Closed.into());
        };
        let result = commit_on(client, &self.sql, &mut self.handler, name, &work).await;
        if let Err(ApplyError::Store(e)) = &result {
            self.note_failure(e);
        }
        result?;
        if !work.bookkeeping.is_empty() {
            self.store.projection_committed();
        }
        Ok(())
    }
}

/// Runs `work` in one transaction on `client`.
async fn commit_on<P: PostgresProjection>(
    client: &mut tokio_postgres::Client,
    sql: &Sql,
    handler: &mut P,
    name: &str,
    work: &Work,
) -> Result<(), ApplyError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    if let Some(step) = &work.step {
        PostgresBackend::run_step(handler, &tx, step).await?;
    }
    for write in &work.documents {
        write_document(&tx, sql, write).await?;
    }
    for change in &work.bookkeeping {
        bookkeeping(&tx, sql, name, change).await?;
    }
    if !work.bookkeeping.is_empty() {
        // Delivered at commit: other processes' checkpoint waits wake.
        tx.batch_execute(&sql.notify).await.map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
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

/// The stored checkpoint of projection `name`.
pub(crate) async fn stored_checkpoint(
    store: &PostgresStore,
    name: &str,
) -> Result<Checkpoint, StoreError> {
    let client = store.client().await?;
    load_checkpoint(&**client, &Sql::new(store.schema()), name).await
}

/// The committed document `id` of `collection`.
pub(crate) async fn stored_document(
    store: &PostgresStore,
    collection: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    let client = store.client().await?;
    read_document(&**client, &Sql::new(store.schema()), collection, id).await
}

/// At most `limit` documents of `collection` after `after`, by id.
pub(crate) async fn stored_documents(
    store: &PostgresStore,
    collection: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Document>, StoreError> {
    let client = store.client().await?;
    let sql = Sql::new(store.schema());
    let rows = client
        .query(
            &sql.documents,
            &[&collection, &after.unwrap_or(""), &to_i64(limit as u64)],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|r| {
            let id: String = r.get(0);
            let body = decode_document(collection, &id, r.get(1))?;
            Ok(Document { id, body })
        })
        .collect()
}

/// The request for `name` not yet taken by its projector.
pub(crate) async fn stored_request(
    store: &PostgresStore,
    name: &str,
) -> Result<Option<ProjectionRequest>, StoreError> {
    let client = store.client().await?;
    read_request(&**client, &Sql::new(store.schema()), name).await
}
