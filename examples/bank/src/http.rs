//! The HTTP API (axum) over the account aggregate. The contract is in the README; every error
//! is `{"error": code, "message": text}`.
//!
//! Handlers are thin: the extractors of [`crate::extract`] turn the request into typed values
//! (or a 4xx [`ApiError`]), a POST becomes an [`Operation`] that [`Commands`] runs once per
//! `Idempotency-Key`, and a GET reads through a repository or the read model.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sirenia::store::Direction;
use sirenia::{AnyStore, EventStore, Loaded, Metered, RecordedEvent, Repository, Timestamp};

use crate::account::{Account, AccountStatus};
use crate::error::{ApiError, load_error, store_error};
use crate::extract::{
    AccountId, CorrelationId, Json, NOT_AN_ACCOUNT_ID, NoBody, PostHeaders, Query, TransferId,
    parse_id, requested_amount,
};
use crate::observe::{self, HTTP_REQUESTS_TOTAL};
use crate::operation::{Commands, Operation, Post};
use crate::outcome::Answer;
use crate::read_model::{MAX_LIST, ReadModel};
use crate::transfer::TransferStatus;

pub use crate::extract::{
    CORRELATION_ID, IDEMPOTENCY_KEY, MAX_BODY_BYTES, MAX_CORRELATION_ID_CHARS, MAX_DRAINED_BYTES,
};
pub use crate::outcome::IDEMPOTENT_REPLAYED;

/// How many times a command is retried when concurrent requests move its account first
/// (then 409 `contention`).
pub const COMMAND_RETRIES: u32 = 20;
const _: () = assert!(COMMAND_RETRIES <= sirenia::limits::MAX_COMMAND_RETRIES);
/// Events per page of `GET /accounts/{id}/events` when `limit` is not given.
pub const DEFAULT_EVENTS_LIMIT: u64 = 100;
/// Largest `limit` of `GET /accounts/{id}/events`.
pub const MAX_EVENTS_LIMIT: u64 = 1_000;

/// The store the service runs on: any store, metered.
pub type Store = Metered<AnyStore>;

/// The service's state, shared by every request.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    commands: Commands<Store>,
    runner: Option<tokio::task::JoinHandle<()>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    read_model: Option<ReadModel>,
}

impl App {
    /// The service on `store`, with the accounts projection running in a task of this
    /// runtime (call it inside one).
    pub fn new(store: AnyStore) -> Self {
        let read_model = match ReadModel::start(&store) {
            Ok(model) => Some(model),
            Err(e) => {
                tracing::warn!(error = %e, "no accounts read model");
                None
            }
        };
        let metered = Metered::new(store.clone());
        let accounts_for_steps = Arc::new(retrying(Repository::new(metered.clone())));
        let transfers = Arc::new(retrying(Repository::new(metered.clone())));
        let runner = crate::transfer::start(
            &store,
            metered.clone(),
            transfers.clone(),
            accounts_for_steps,
        );
        let accounts = Arc::new(retrying(Repository::new(metered)));
        App {
            inner: Arc::new(Inner {
                commands: Commands::new(accounts, transfers),
                runner,
                read_model,
                metrics: observe::prometheus(),
            }),
        }
    }

    fn accounts(&self) -> &Repository<Account, Store> {
        self.inner.commands.accounts()
    }

    /// Runs `operation`, asked for with `body` and `headers`.
    async fn submit(
        &self,
        operation: Operation,
        body: Value,
        headers: PostHeaders,
    ) -> Result<Answer, ApiError> {
        let post = Post {
            operation,
            body,
            if_match: headers.if_match.map(|v| v.0),
            correlation_id: headers.correlation_id.0,
            key: headers.key.map(|k| k.0),
        };
        self.inner.commands.submit(post).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runner) = &self.runner {
            runner.abort();
        }
    }
}

/// `repository` with [`COMMAND_RETRIES`] retries on conflicts.
fn retrying<A: sirenia::Aggregate>(repository: Repository<A, Store>) -> Repository<A, Store> {
    match repository.with_max_retries(COMMAND_RETRIES) {
        Ok(repository) => repository,
        Err(_) => unreachable!("COMMAND_RETRIES is checked against the limit"),
    }
}

/// The router: every route, JSON errors for everything (including the framework's own
/// rejections), correlation ids and tracing.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/accounts", post(open_account).get(list_accounts))
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/events", get(account_events))
        .route("/accounts/{id}/deposits", post(deposit))
        .route("/accounts/{id}/withdrawals", post(withdraw))
        .route("/accounts/{id}/close", post(close))
        .route("/transfers", post(request_transfer))
        .route("/transfers/{id}", get(get_transfer))
        .fallback(not_found)
        .with_state(app)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(correlation))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the service failed; try again later",
                )
                .into_response()
            },
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Takes the request's correlation id (400 if `X-Correlation-Id` is malformed) or makes one,
/// hands it to the handlers (the [`CorrelationId`] extractor) and echoes it on the answer.
async fn correlation(mut request: Request, next: Next) -> Response {
    let id = match CorrelationId::from_headers(request.headers()) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let value = HeaderValue::from_str(&id.0).unwrap_or(HeaderValue::from_static("invalid"));
    let span = tracing::info_span!("request", correlation_id = %id.0);
    request.extensions_mut().insert(id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    response.headers_mut().insert(CORRELATION_ID.clone(), value);
    response
}

/// Gives every error answer that is not JSON yet (the framework's 405, …) the JSON body, and
/// counts answers by status.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "status" => status.as_str().to_owned()).increment(1);
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = ApiError::from_status(status).body().to_string();
    Response::from_parts(parts, Body::from(body))
}

async fn health() -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok" }))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    if let Some(model) = &app.inner.read_model {
        let status = model.status();
        let label = crate::read_model::PROJECTION;
        // Positions and lags stay far below 2^53, where f64 is exact.
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!(observe::PROJECTION_POSITION, "projection" => label)
                .set(status.next.0 as f64);
            if let Some(lag) = status.lag_events {
                metrics::gauge!(observe::PROJECTION_LAG_EVENTS, "projection" => label)
                    .set(lag as f64);
            }
        }
        metrics::gauge!(observe::PROJECTION_LAG_SECONDS, "projection" => label)
            .set(status.lag_seconds);
        let state = match status.state {
            sirenia::projection::ProjectionState::Stopped => 0.0,
            sirenia::projection::ProjectionState::CatchingUp => 1.0,
            sirenia::projection::ProjectionState::Live => 2.0,
            sirenia::projection::ProjectionState::Faulted => 3.0,
        };
        metrics::gauge!(observe::PROJECTION_STATE, "projection" => label).set(state);
    }
    let text = app
        .inner
        .metrics
        .as_ref()
        .map(metrics_exporter_prometheus::PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    owner: String,
}

/// `amount` stays JSON until [`requested_amount`] reads it: a non-integer is a 400 with its
/// own message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    from: String,
    to: String,
    amount: Value,
}

/// `POST /accounts`.
async fn open_account(
    State(app): State<App>,
    headers: PostHeaders,
    Json { value, raw }: Json<OpenBody>,
) -> Result<Answer, ApiError> {
    let operation = Operation::Open { owner: value.owner };
    app.submit(operation, raw, headers).await
}

/// `POST /accounts/{id}/deposits`.
async fn deposit(
    State(app): State<App>,
    headers: PostHeaders,
    AccountId(account): AccountId,
    Json { value, raw }: Json<AmountBody>,
) -> Result<Answer, ApiError> {
    let amount = requested_amount(&value.amount)?;
    app.submit(Operation::Deposit { account, amount }, raw, headers)
        .await
}

/// `POST /accounts/{id}/withdrawals`.
async fn withdraw(
    State(app): State<App>,
    headers: PostHeaders,
    AccountId(account): AccountId,
    Json { value, raw }: Json<AmountBody>,
) -> Result<Answer, ApiError> {
    let amount = requested_amount(&value.amount)?;
    app.submit(Operation::Withdraw { account, amount }, raw, headers)
        .await
}

/// `POST /accounts/{id}/close`: no body.
async fn close(
    State(app): State<App>,
    headers: PostHeaders,
    AccountId(account): AccountId,
    _: NoBody,
) -> Result<Answer, ApiError> {
    app.submit(Operation::Close { account }, Value::Null, headers)
        .await
}

/// `POST /transfers`: 202 with the transfer's id; the transfer runs as a process. Unknown or
/// closed accounts are accepted and make the transfer fail (after a refund if need be).
async fn request_transfer(
    State(app): State<App>,
    headers: PostHeaders,
    Json { value, raw }: Json<TransferBody>,
) -> Result<Answer, ApiError> {
    let operation = Operation::Transfer {
        from: parse_id(&value.from, NOT_AN_ACCOUNT_ID)?,
        to: parse_id(&value.to, NOT_AN_ACCOUNT_ID)?,
        amount: requested_amount(&value.amount)?,
    };
    app.submit(operation, raw, headers).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountQuery {
    version: Option<u64>,
    as_of: Option<String>,
}

/// `GET /accounts/{id}[?version=N | ?as_of=T]`.
async fn get_account(
    State(app): State<App>,
    AccountId(id): AccountId,
    Query(q): Query<AccountQuery>,
) -> Result<Response, ApiError> {
    let id = id.to_string();
    let loaded = match (q.version, q.as_of) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give version or as_of, not both",
            ));
        }
        (Some(version), None) => load_version(app.accounts(), &id, version).await?,
        (None, Some(as_of)) => {
            let at = match Timestamp::parse_rfc3339(&as_of) {
                Ok(at) => at,
                // Before 1970: before any account was opened.
                Err(sirenia::InvalidTimestamp::BeforeEpoch) => Timestamp::EPOCH,
                Err(e) => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("as_of is not RFC 3339: {e}"),
                    ));
                }
            };
            app.accounts()
                .load_as_of(&id, at)
                .await
                .map_err(|e| load_error(&e))?
        }
        (None, None) => app.accounts().load(&id).await.map_err(|e| load_error(&e))?,
    };
    if loaded.version == 0 {
        return Err(ApiError::account_not_found());
    }
    let status = match loaded.state.status {
        AccountStatus::Closed => "closed",
        _ => "open",
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", loaded.version))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    Ok((
        [(header::ETAG, etag)],
        axum::Json(json!({
            "id": id,
            "owner": loaded.state.owner,
            "balance": loaded.state.balance,
            "status": status,
            "version": loaded.version,
        })),
    )
        .into_response())
}

/// The account after its first `version` events: 404 if it has none, or fewer.
async fn load_version(
    accounts: &Repository<Account, Store>,
    id: &str,
    version: u64,
) -> Result<Loaded<Account>, ApiError> {
    let loaded = accounts
        .load_version(id, version)
        .await
        .map_err(|e| load_error(&e))?;
    if loaded.version == 0 {
        return Err(ApiError::account_not_found());
    }
    if loaded.version < version {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("the account has {} events, not {version}", loaded.version),
        ));
    }
    Ok(loaded)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    min_position: Option<u64>,
    limit: Option<u32>,
    after: Option<String>,
}

/// The accounts read model. With `min_position`, waits (at most 5 s) until the projection has
/// processed that position, else 503 `not_caught_up`.
async fn list_accounts(
    State(app): State<App>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_LIST}"),
        ));
    }
    let Some(model) = &app.inner.read_model else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_read_model",
            "this store keeps no accounts read model",
        ));
    };
    if let Some(position) = q.min_position {
        let caught_up = model
            .wait_for(sirenia::Position(position))
            .await
            .map_err(|e| store_error(&e))?;
        if !caught_up {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_caught_up",
                format!("the read model has not reached position {position} yet; retry"),
            ));
        }
    }
    let rows = model
        .list(q.after, limit)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(axum::Json(rows).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    from: Option<u64>,
    limit: Option<u64>,
}

fn event_json(event: &RecordedEvent) -> Value {
    let data = serde_json::from_slice::<Value>(&event.data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&event.data).into_owned()));
    json!({
        "revision": event.revision,
        "position": event.position.0,
        "type": event.event_type,
        "schema_version": event.schema_version,
        "data": data,
        "recorded_at": event.recorded_at.to_string(),
        "metadata": {
            "correlation_id": event.metadata.correlation_id,
            "causation_id": event.metadata.causation_id,
        },
    })
}

/// `GET /accounts/{id}/events[?from=R&limit=L]`.
async fn account_events(
    State(app): State<App>,
    AccountId(id): AccountId,
    Query(q): Query<EventsQuery>,
) -> Result<axum::Json<Vec<Value>>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_EVENTS_LIMIT}"),
        ));
    }
    let stream = app
        .accounts()
        .stream_id(&id.to_string())
        .map_err(|_| ApiError::bad_request("invalid_id", "not a valid account id"))?;
    let store = app.accounts().store();
    if store
        .stream_version(&stream)
        .await
        .map_err(|e| store_error(&e))?
        .is_none()
    {
        return Err(ApiError::account_not_found());
    }
    // `limit` is at most MAX_EVENTS_LIMIT, well within usize.
    let max = usize::try_from(limit).unwrap_or(1);
    let page = store
        .read_stream_page(&stream, q.from.unwrap_or(0), Direction::Forward, max)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(axum::Json(page.iter().map(event_json).collect()))
}

/// `GET /transfers/{id}`.
async fn get_transfer(
    State(app): State<App>,
    TransferId(id): TransferId,
) -> Result<axum::Json<Value>, ApiError> {
    let id = id.to_string();
    let loaded = app
        .inner
        .commands
        .transfers()
        .load(&id)
        .await
        .map_err(|e| load_error(&e))?;
    let t = loaded.state;
    let status = match t.status {
        TransferStatus::Unknown => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "transfer_not_found",
                "no such transfer",
            ));
        }
        TransferStatus::Pending => "pending",
        TransferStatus::Completed => "completed",
        TransferStatus::Failed => "failed",
    };
    let reason = (t.status == TransferStatus::Failed).then_some(t.reason);
    Ok(axum::Json(json!({
        "id": id, "from": t.from, "to": t.to, "amount": t.amount, "status": status,
        "reason": reason.flatten(),
    })))
}
