//! The HTTP API (axum) over the account aggregate. The contract is in the README; every error
//! is `{"error": code, "message": text}`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sirenia::store::Direction;
use sirenia::{
    AnyStore, CommandContext, EventStore, Executed, Metered, RecordedEvent, Repository, Timestamp,
};
use uuid::Uuid;

use crate::account::{Account, AccountCommand, AccountStatus, MAX_AMOUNT};
use crate::error::{ApiError, command_error, load_error, store_error};
use crate::idempotency::{self, MAX_IDEMPOTENCY_KEY_CHARS, Record};
use crate::observe::{self, COMMANDS_TOTAL, HTTP_REQUESTS_TOTAL};
use crate::outcome::Outcome;
use crate::read_model::{MAX_LIST, ReadModel};
use crate::transfer::{Transfer, TransferCommand, TransferStatus};

/// How many times a command is retried when concurrent requests move its account first
/// (then 409 `contention`).
pub const COMMAND_RETRIES: u32 = 20;
const _: () = assert!(COMMAND_RETRIES <= sirenia::limits::MAX_COMMAND_RETRIES);
/// Largest request body accepted, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a too-large body is read and discarded so the 413 arrives whole before the
/// connection closes; beyond this the connection is closed after the answer.
pub const MAX_DRAINED_BYTES: usize = 8 * 1024 * 1024;
/// The longest `X-Correlation-Id`, in characters.
pub const MAX_CORRELATION_ID_CHARS: usize = 200;
/// Events per page of `GET /accounts/{id}/events` when `limit` is not given.
pub const DEFAULT_EVENTS_LIMIT: u64 = 100;
/// Largest `limit` of `GET /accounts/{id}/events`.
pub const MAX_EVENTS_LIMIT: u64 = 1_000;

/// The correlation-id header, read from requests and echoed on every answer.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The idempotency-key header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer replayed for a repeated `Idempotency-Key`.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The store the service runs on: any store, metered.
pub type Store = Metered<AnyStore>;

/// The service's state, shared by every request.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    accounts: Repository<Account, Store>,
    transfers: Arc<Repository<Transfer, Store>>,
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
        App {
            inner: Arc::new(Inner {
                transfers,
                runner,
                read_model,
                accounts: retrying(Repository::new(metered)),
                metrics: observe::prometheus(),
            }),
        }
    }

    fn store(&self) -> &Store {
        self.inner.accounts.store()
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

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
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
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Takes `X-Correlation-Id` (400 if it is not 1 to [`MAX_CORRELATION_ID_CHARS`] visible ASCII
/// characters) or makes one, and echoes it on the answer.
async fn correlation(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(&CORRELATION_ID) {
        Some(value) => match visible_ascii(value, MAX_CORRELATION_ID_CHARS) {
            Some(id) => id.to_owned(),
            None => {
                return ApiError::bad_request(
                    "invalid_header",
                    format!(
                        "X-Correlation-Id must be 1 to {MAX_CORRELATION_ID_CHARS} visible ASCII \
                         characters"
                    ),
                )
                .into_response();
            }
        },
        None => Uuid::now_v7().to_string(),
    };
    let value = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("invalid"));
    request
        .headers_mut()
        .insert(CORRELATION_ID.clone(), value.clone());
    let span = tracing::info_span!("request", correlation_id = %id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    response.headers_mut().insert(CORRELATION_ID.clone(), value);
    response
}

/// Gives every error answer that is not JSON yet (the framework's 405, a panic's 500, …) the
/// JSON body, and counts answers by status.
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
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "request_failed",
    };
    let message = status.canonical_reason().unwrap_or("request failed");
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = ApiError::new(status, code, message).body().to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

fn visible_ascii(value: &HeaderValue, max: usize) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= max
        && text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !text.starts_with(' ')
        && !text.ends_with(' ');
    ok.then_some(text)
}

/// What the headers of a POST ask for.
struct PostHeaders {
    correlation_id: String,
    idempotency_key: Option<String>,
    if_match: Option<u64>,
}

fn post_headers(headers: &HeaderMap) -> Result<PostHeaders, ApiError> {
    let correlation_id = headers
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let idempotency_key = match headers.get(&IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            visible_ascii(value, MAX_IDEMPOTENCY_KEY_CHARS)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        format!(
                            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible \
                             ASCII characters"
                        ),
                    )
                })?
                .to_owned(),
        ),
    };
    let if_match = match headers.get(header::IF_MATCH) {
        None => None,
        Some(value) => Some(parse_etag(value).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                "If-Match must be a version in quotes, as the ETag gives it: \"3\"",
            )
        })?),
    };
    Ok(PostHeaders {
        correlation_id,
        idempotency_key,
        if_match,
    })
}

/// `"3"` (or `W/"3"`, or a bare `3`) → 3.
fn parse_etag(value: &HeaderValue) -> Option<u64> {
    let text = value.to_str().ok()?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    inner.parse().ok()
}

/// Reads the body, at most [`MAX_BODY_BYTES`]; a larger one is drained (up to
/// [`MAX_DRAINED_BYTES`]) and refused with 413.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_DRAINED_BYTES as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|_| ApiError::bad_request("invalid_body", "the body could not be read"))?;
        total = total.saturating_add(chunk.len());
        if total > MAX_DRAINED_BYTES {
            return Err(too_large());
        }
        if total <= MAX_BODY_BYTES {
            buffer.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(buffer))
}

/// A JSON body: its bytes (parsed into the request's type, which refuses duplicate and unknown
/// fields) and its value (what an idempotency key compares).
struct JsonBody {
    bytes: Bytes,
    value: Value,
}

/// Reads a JSON body: `Content-Type: application/json` (415 otherwise) and valid JSON (400).
async fn read_json(headers: &HeaderMap, body: Body) -> Result<JsonBody, ApiError> {
    let bytes = read_body(headers, body).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    Ok(JsonBody { bytes, value })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    owner: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: Value,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("invalid body: {e}")))
}

/// An amount in minor units: an integer from 1 to [`MAX_AMOUNT`]. Other integers (zero,
/// negative, huge) break the rule (422); anything else is not an amount (400).
fn amount(value: &Value) -> Result<u64, ApiError> {
    let out_of_range = || {
        ApiError::unprocessable(
            "invalid_amount",
            format!("amount must be an integer from 1 to {MAX_AMOUNT}"),
        )
    };
    let Value::Number(n) = value else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "amount must be an integer number of minor units",
        ));
    };
    if let Some(a) = n.as_u64() {
        return if (1..=MAX_AMOUNT).contains(&a) {
            Ok(a)
        } else {
            Err(out_of_range())
        };
    }
    if n.is_i64() {
        return Err(out_of_range());
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 => Err(out_of_range()),
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "amount must be an integer number of minor units",
        )),
    }
}

fn account_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_request("invalid_id", "an account id is a UUID"))
}

/// Runs `run` once per idempotency key: without a key it just runs; with one, a stored answer
/// for the same request is replayed, one for another request is refused, and a new answer is
/// stored before it is sent, unless it is transient (5xx, or 409 after too much contention).
async fn idempotent<F, Fut>(
    app: &App,
    key: Option<&str>,
    command: &'static str,
    request: Value,
    run: F,
) -> Response
where
    F: FnOnce(Option<Uuid>) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let Some(key) = key else {
        return run(None).await.into_response();
    };
    // The request is kept as a fingerprint: a short value, however large or deep the body.
    let request = Value::String(
        Uuid::new_v5(
            &Uuid::from_u128(0x1d3c_8f2e_4a6b_4c0d_9e7f_5a3b_2c1d_0e01),
            &serde_json::to_vec(&request).unwrap_or_default(),
        )
        .to_string(),
    );
    let replay = |stored: Record, replayed: bool| {
        if stored.request != request {
            return ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for another request",
            )
            .into_response();
        }
        if replayed {
            metrics::counter!(
                COMMANDS_TOTAL,
                "command" => command_label(command),
                "outcome" => "replayed"
            )
            .increment(1);
        }
        let mut response = stored.response.into_response();
        if replayed {
            response.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
        }
        response
    };
    match idempotency::find(app.store(), key).await {
        Ok(Some(stored)) => return replay(stored, true),
        Ok(None) => {}
        Err(e) => return store_error(&e).into_response(),
    }
    let outcome = run(Some(idempotency::command_id(key))).await;
    // Transient answers are not the request's answer: a retry with the key runs again.
    if outcome.status().is_server_error() || outcome.status() == StatusCode::CONFLICT {
        return outcome.into_response();
    }
    let record = Record {
        request: request.clone(),
        response: outcome.clone(),
    };
    match idempotency::store(app.store(), key, record).await {
        Ok(stored) => {
            let replayed = stored.response != outcome;
            replay(stored, replayed)
        }
        Err(e) => store_error(&e).into_response(),
    }
}

fn context(headers: &PostHeaders, command_id: Option<Uuid>) -> CommandContext {
    let mut context = CommandContext::new().correlation_id(headers.correlation_id.clone());
    context = match command_id {
        Some(id) => context.command_id(id),
        None => context.causation_id(Uuid::now_v7().to_string()),
    };
    if let Some(version) = headers.if_match {
        context = context.expected_version(version);
    }
    context
}

/// The metric label of a command, from its route's last segment.
fn command_label(command: &'static str) -> &'static str {
    match command {
        "deposits" => "deposit",
        "withdrawals" => "withdraw",
        other => other,
    }
}

fn count(command: &'static str, outcome: &Outcome) {
    let command = command_label(command);
    let label = match outcome.status {
        200..=299 => "ok",
        412 => "conflict",
        400..=499 => "rejected",
        _ => "error",
    };
    metrics::counter!(COMMANDS_TOTAL, "command" => command, "outcome" => label).increment(1);
}

fn position(executed: &Executed<Account>) -> Value {
    json!(executed.last_position.map(|p| p.0))
}

async fn open_account(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let post = match post_headers(&headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let body = match read_json(&headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // Malformed requests are answered before the idempotency key is looked at: they store
    // nothing.
    let owner = match parse::<OpenBody>(&body.bytes) {
        Ok(b) => b.owner,
        Err(e) => return e.into_response(),
    };
    let request = json!({ "method": "POST", "path": "/accounts", "body": &body.value });
    let key = post.idempotency_key.clone();
    let (accounts, post) = (&app.inner.accounts, &post);
    idempotent(
        &app,
        key.as_deref(),
        "open",
        request,
        move |command_id| async move {
            let outcome = async {
            // With a key, the account id follows from it: a retry opens the same account.
            let id = match command_id {
                Some(c) => Uuid::new_v5(&c, b"account"),
                None => Uuid::now_v7(),
            };
            let executed = accounts
                .execute_with(
                    &id.to_string(),
                    AccountCommand::Open { owner },
                    &context(post, command_id),
                )
                .await
                .map_err(|e| command_error(&e))?;
            let mut outcome = Outcome::new(
                StatusCode::CREATED,
                json!({ "id": id, "version": executed.version, "position": position(&executed) }),
            );
            outcome.location = Some(format!("/accounts/{id}"));
            Ok::<_, ApiError>(outcome)
        }
        .await
        .unwrap_or_else(Outcome::from);
            count("open", &outcome);
            outcome
        },
    )
    .await
}

async fn account_command(
    app: App,
    raw_id: String,
    headers: HeaderMap,
    body: Body,
    command: &'static str,
) -> Response {
    let post = match post_headers(&headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let id = match account_id(&raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let body = if command == "close" {
        // Close takes no body; an empty JSON object is tolerated.
        let empty = JsonBody {
            bytes: Bytes::new(),
            value: Value::Null,
        };
        match read_body(&headers, body).await {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => empty,
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(o)) if o.is_empty() => empty,
                _ => {
                    return ApiError::bad_request("invalid_request", "close takes no body")
                        .into_response();
                }
            },
            Err(e) => return e.into_response(),
        }
    } else {
        match read_json(&headers, body).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        }
    };
    // Malformed requests (400) are answered before the idempotency key is looked at; rule
    // violations (422) are answers a key replays.
    let checked_amount = if command == "close" {
        None
    } else {
        let checked = match parse::<AmountBody>(&body.bytes) {
            Ok(b) => amount(&b.amount),
            Err(e) => return e.into_response(),
        };
        if let Err(e) = &checked
            && e.status == StatusCode::BAD_REQUEST
        {
            return e.clone().into_response();
        }
        Some(checked)
    };
    let path = format!("/accounts/{id}/{command}");
    let request = json!({
        "method": "POST", "path": path, "body": &body.value, "if_match": post.if_match,
    });
    let key = post.idempotency_key.clone();
    let (accounts, post) = (&app.inner.accounts, &post);
    idempotent(
        &app,
        key.as_deref(),
        command,
        request,
        move |command_id| async move {
            let outcome = async {
                let command = match (command, checked_amount) {
                    ("deposits", Some(amount)) => AccountCommand::Deposit { amount: amount? },
                    ("withdrawals", Some(amount)) => AccountCommand::Withdraw { amount: amount? },
                    _ => AccountCommand::Close,
                };
                let executed = accounts
                    .execute_with(&id.to_string(), command, &context(post, command_id))
                    .await
                    .map_err(|e| command_error(&e))?;
                Ok::<_, ApiError>(Outcome::new(
                    StatusCode::OK,
                    json!({
                        "id": id,
                        "version": executed.version,
                        "position": position(&executed),
                        "balance": executed.state.balance,
                    }),
                ))
            }
            .await
            .unwrap_or_else(Outcome::from);
            count(command, &outcome);
            outcome
        },
    )
    .await
}

async fn deposit(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    account_command(app, id, headers, body, "deposits").await
}

async fn withdraw(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    account_command(app, id, headers, body, "withdrawals").await
}

async fn close(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    account_command(app, id, headers, body, "close").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountQuery {
    version: Option<u64>,
    as_of: Option<String>,
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

async fn get_account(
    State(app): State<App>,
    Path(raw_id): Path<String>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = account_id(&raw_id)?.to_string();
    let q = query(q)?;
    let accounts = &app.inner.accounts;
    let loaded = match (q.version, q.as_of) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give version or as_of, not both",
            ));
        }
        (Some(version), None) => {
            let loaded = accounts
                .load_version(&id, version)
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
            loaded
        }
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
            accounts
                .load_as_of(&id, at)
                .await
                .map_err(|e| load_error(&e))?
        }
        (None, None) => accounts.load(&id).await.map_err(|e| load_error(&e))?,
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
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
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

async fn account_events(
    State(app): State<App>,
    Path(raw_id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = account_id(&raw_id)?.to_string();
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_EVENTS_LIMIT}"),
        ));
    }
    let stream = app
        .inner
        .accounts
        .stream_id(&id)
        .map_err(|_| ApiError::bad_request("invalid_id", "not a valid account id"))?;
    let store = app.store();
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
    let events: Vec<Value> = page.iter().map(event_json).collect();
    Ok(axum::Json(Value::Array(events)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    from: String,
    to: String,
    amount: Value,
}

/// `POST /transfers`: 202 with the transfer's id; the transfer runs as a process. Unknown or
/// closed accounts are accepted and make the transfer fail (after a refund if need be).
async fn request_transfer(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let post = match post_headers(&headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let body = match read_json(&headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let parsed = parse::<TransferBody>(&body.bytes).and_then(|t| {
        let (from, to) = (account_id(&t.from)?, account_id(&t.to)?);
        Ok((from, to, amount(&t.amount)))
    });
    let (from, to, checked_amount) = match parsed {
        Ok((_, _, Err(e))) if e.status == StatusCode::BAD_REQUEST => return e.into_response(),
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let request = json!({ "method": "POST", "path": "/transfers", "body": &body.value });
    let key = post.idempotency_key.clone();
    let (transfers, post) = (&app.inner.transfers, &post);
    idempotent(
        &app,
        key.as_deref(),
        "transfer",
        request,
        move |command_id| async move {
            let outcome = async {
                let amount = checked_amount?;
                let id = match command_id {
                    Some(c) => Uuid::new_v5(&c, b"transfer"),
                    None => Uuid::now_v7(),
                };
                transfers
                    .execute_with(
                        &id.to_string(),
                        TransferCommand::Request {
                            from: from.to_string(),
                            to: to.to_string(),
                            amount,
                        },
                        // If-Match concerns accounts; a new transfer has no version to match.
                        &CommandContext {
                            expected_version: None,
                            ..context(post, command_id)
                        },
                    )
                    .await
                    .map_err(|e| match e {
                        sirenia::CommandError::Rejected(r) => {
                            ApiError::unprocessable(r.code(), r.to_string())
                        }
                        sirenia::CommandError::Store(e) => store_error(&e),
                        other => ApiError::internal(&other),
                    })?;
                let mut outcome = Outcome::new(StatusCode::ACCEPTED, json!({ "id": id }));
                outcome.location = Some(format!("/transfers/{id}"));
                Ok::<_, ApiError>(outcome)
            }
            .await
            .unwrap_or_else(Outcome::from);
            count("transfer", &outcome);
            outcome
        },
    )
    .await
}

/// `GET /transfers/{id}`.
async fn get_transfer(
    State(app): State<App>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&raw_id)
        .map_err(|_| ApiError::bad_request("invalid_id", "a transfer id is a UUID"))?
        .to_string();
    let loaded = app
        .inner
        .transfers
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
    }))
    .into_response())
}
