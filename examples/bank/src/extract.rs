//! The request's parts as typed values: extractors whose rejection is an [`ApiError`], so a
//! malformed request is answered `{"error", "message"}` with the right status before a handler
//! runs. Limits are constants here.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::account::Requested;
use crate::error::ApiError;
use crate::idempotency::MAX_IDEMPOTENCY_KEY_CHARS;

/// Largest request body accepted, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a too-large body is read and discarded so the 413 arrives whole before the
/// connection closes; beyond this the connection is closed after the answer.
pub const MAX_DRAINED_BYTES: usize = 8 * 1024 * 1024;
/// The longest `X-Correlation-Id`, in characters.
pub const MAX_CORRELATION_ID_CHARS: usize = 200;

/// The correlation-id header, read from requests and echoed on every answer.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The idempotency-key header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// 1 to `max` visible ASCII characters (inner spaces allowed).
fn visible_ascii(value: &HeaderValue, max: usize) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= max
        && text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !text.starts_with(' ')
        && !text.ends_with(' ');
    ok.then_some(text)
}

/// The request's correlation id: its `X-Correlation-Id` (1 to [`MAX_CORRELATION_ID_CHARS`]
/// visible ASCII characters, else 400 `invalid_header`), or a new UUID v7.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    /// The id `headers` give, or a new one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        match headers.get(&CORRELATION_ID) {
            None => Ok(CorrelationId(Uuid::now_v7().to_string())),
            Some(value) => visible_ascii(value, MAX_CORRELATION_ID_CHARS)
                .map(|id| CorrelationId(id.to_owned()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        format!(
                            "X-Correlation-Id must be 1 to {MAX_CORRELATION_ID_CHARS} visible \
                             ASCII characters"
                        ),
                    )
                }),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = ApiError;

    /// The id the correlation layer settled on, or (without that layer) the header's.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<CorrelationId>() {
            Some(id) => Ok(id.clone()),
            None => CorrelationId::from_headers(&parts.headers),
        }
    }
}

/// `Idempotency-Key`: 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] visible ASCII characters (else 400
/// `invalid_header`). Take it as `Option<IdempotencyKey>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, ApiError> {
        let Some(value) = parts.headers.get(&IDEMPOTENCY_KEY) else {
            return Ok(None);
        };
        match visible_ascii(value, MAX_IDEMPOTENCY_KEY_CHARS) {
            Some(key) => Ok(Some(IdempotencyKey(key.to_owned()))),
            None => Err(ApiError::bad_request(
                "invalid_header",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII \
                     characters"
                ),
            )),
        }
    }
}

/// `If-Match`: the version the client's change expects, as the `ETag` gave it (`"3"`; `W/"3"`
/// and a bare `3` are taken too; else 400 `invalid_header`). Take it as `Option<IfMatch>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfMatch(pub u64);

impl IfMatch {
    fn parse(value: &HeaderValue) -> Option<u64> {
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
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, ApiError> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(None);
        };
        match IfMatch::parse(value) {
            Some(version) => Ok(Some(IfMatch(version))),
            None => Err(ApiError::bad_request(
                "invalid_header",
                "If-Match must be a version in quotes, as the ETag gives it: \"3\"",
            )),
        }
    }
}

/// The route's one `{id}` as a UUID, else 400 `invalid_id` with `message`.
async fn path_uuid<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    message: &'static str,
) -> Result<Uuid, ApiError> {
    let Path(raw) = <Path<String> as FromRequestParts<S>>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::from_status(e.status()))?;
    parse_id(&raw, message)
}

/// `raw` as a UUID, else 400 `invalid_id` with `message`.
pub fn parse_id(raw: &str, message: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_request("invalid_id", message))
}

/// The 400 message for an account id that is not one.
pub const NOT_AN_ACCOUNT_ID: &str = "an account id is a UUID";

/// The account id in the path (`/accounts/{id}…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for AccountId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        path_uuid(parts, state, NOT_AN_ACCOUNT_ID)
            .await
            .map(AccountId)
    }
}

/// The transfer id in the path (`/transfers/{id}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for TransferId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        path_uuid(parts, state, "a transfer id is a UUID")
            .await
            .map(TransferId)
    }
}

/// The query string as `T` (which refuses unknown parameters); 400 `invalid_query` otherwise.
#[derive(Clone, Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Reads the body, at most [`MAX_BODY_BYTES`]; a larger one is drained (up to
/// [`MAX_DRAINED_BYTES`]) and refused with 413, so the answer arrives whole.
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

/// A JSON body: sent as `Content-Type: application/json` (else 415), at most
/// [`MAX_BODY_BYTES`] (else 413), valid JSON (else 400 `invalid_json`) of type `T`, which
/// refuses unknown and duplicate fields (else 400 `invalid_request`).
#[derive(Clone, Debug)]
pub struct Json<T> {
    /// The body as `T`.
    pub value: T,
    /// The body as JSON: what an `Idempotency-Key` compares (formatting aside).
    pub raw: Value,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = read_body(&parts.headers, body).await?;
        let is_json = parts
            .headers
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
        let raw = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}"))
        })?;
        // From the bytes, not from `raw`: a map would have dropped a duplicate field.
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_request", format!("invalid body: {e}")))?;
        Ok(Json { value, raw })
    }
}

/// No body: nothing, white space or `{}` (any content type), else 400 `invalid_request`; 413
/// beyond [`MAX_BODY_BYTES`].
#[derive(Clone, Copy, Debug)]
pub struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = read_body(&parts.headers, body).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(NoBody);
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(o)) if o.is_empty() => Ok(NoBody),
            _ => Err(ApiError::bad_request(
                "invalid_request",
                "close takes no body",
            )),
        }
    }
}

/// A JSON amount as the account rule takes it: any whole number (400 `invalid_request` for
/// anything else). Whether it is an amount is the rule's call ([`Requested::check`]).
pub fn requested_amount(value: &Value) -> Result<Requested, ApiError> {
    let not_whole = || {
        ApiError::bad_request(
            "invalid_request",
            "amount must be an integer number of minor units",
        )
    };
    let Value::Number(n) = value else {
        return Err(not_whole());
    };
    if let Some(units) = n.as_u64() {
        return Ok(Requested::Units(units));
    }
    if n.is_i64() {
        return Ok(Requested::Outside);
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 => Ok(Requested::Outside),
        _ => Err(not_whole()),
    }
}

/// What a POST's headers ask for: `Idempotency-Key`, `If-Match` (read in that order) and the
/// correlation id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostHeaders {
    /// The `Idempotency-Key`.
    pub key: Option<IdempotencyKey>,
    /// The `If-Match` version.
    pub if_match: Option<IfMatch>,
    /// The correlation id.
    pub correlation_id: CorrelationId,
}

impl<S: Send + Sync> FromRequestParts<S> for PostHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(PostHeaders {
            key: <IdempotencyKey as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
                .await?,
            if_match: <IfMatch as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
                .await?,
            correlation_id: CorrelationId::from_request_parts(parts, state).await?,
        })
    }
}
