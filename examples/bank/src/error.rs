//! The service's error answers: `{"error": code, "message": text}` with the right status, and
//! the mapping from Sirenia's typed errors to them (done once, here).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sirenia::{CommandError, LoadError, StoreError};

use crate::account::AccountError;
use crate::outcome::Outcome;
use crate::transfer::TransferError;

/// An error answer.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine-readable code.
    pub code: &'static str,
    /// A human-readable explanation (never internals of a backend failure).
    pub message: String,
    /// More fields of the body (`expected`, `actual`, …).
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422 with `code`.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404 `account_not_found`.
    pub fn account_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "account_not_found",
            "no such account",
        )
    }

    /// The answer for a status the framework chose itself (its 404, 405, a rejected path, a
    /// panic's 500): a generic code for the status and its reason phrase as the message.
    pub fn from_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            s if s.is_server_error() => "internal",
            _ => "request_failed",
        };
        Self::new(
            status,
            code,
            status.canonical_reason().unwrap_or("request failed"),
        )
    }

    /// 500 `internal`, logging `error` (the body never carries it).
    pub fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, source = ?error.source(), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed; try again later",
        )
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("error".to_owned(), json!(self.code));
        body.insert("message".to_owned(), json!(self.message));
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Outcome::from(self).into_response()
    }
}

impl From<ApiError> for Outcome {
    fn from(e: ApiError) -> Self {
        Outcome::new(e.status, e.body())
    }
}

/// A store failure: 503 when the store is closed or refuses writes (an operator must act),
/// 500 otherwise; the body never carries the backend's message.
pub fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::WritesDisabled { .. } | StoreError::Closed => {
            tracing::error!(error = %e, "store unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the event store is not accepting writes; try again later",
            )
        }
        StoreError::StreamTombstoned { .. } => ApiError::new(
            StatusCode::GONE,
            "account_deleted",
            "the account's history was deleted for good",
        ),
        StoreError::StreamTruncated { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "history_truncated",
            "the account's early events were truncated and no snapshot covers them",
        ),
        _ => ApiError::internal(e),
    }
}

/// A failed load.
pub fn load_error(e: &LoadError) -> ApiError {
    match e {
        LoadError::InvalidId(_) => ApiError::bad_request("invalid_id", "not a valid account id"),
        LoadError::Store(e) => store_error(e),
        other => ApiError::internal(other),
    }
}

/// An account rule refused something: 404 for a missing account, 422 with the rule's code
/// otherwise.
pub fn account_rule(rule: &AccountError) -> ApiError {
    match rule {
        AccountError::NotFound => ApiError::account_not_found(),
        rule => ApiError::unprocessable(rule.code(), rule.to_string()),
    }
}

/// A failed transfer command.
pub fn transfer_error(e: &CommandError<TransferError>) -> ApiError {
    match e {
        CommandError::Rejected(rule) => ApiError::unprocessable(rule.code(), rule.to_string()),
        CommandError::Store(e) => store_error(e),
        other => ApiError::internal(other),
    }
}

/// A failed account command.
pub fn command_error(e: &CommandError<AccountError>) -> ApiError {
    match e {
        CommandError::Rejected(rule) => account_rule(rule),
        CommandError::Conflict {
            expected,
            actual: None,
            ..
        } if *expected > 0 => ApiError::account_not_found(),
        CommandError::Conflict {
            expected, actual, ..
        } => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "version_conflict",
            format!(
                "the account is at version {}, not {expected}",
                actual.unwrap_or(0)
            ),
        )
        .with("expected", json!(expected))
        .with("actual", json!(actual.unwrap_or(0))),
        CommandError::TooManyConflicts { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "contention",
            "the account changed under every attempt; try again",
        ),
        CommandError::CommandIdReused { .. } => ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request",
        ),
        CommandError::InvalidId(_) => ApiError::bad_request("invalid_id", "not a valid account id"),
        CommandError::Store(e) => store_error(e),
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_refusals_are_4xx_with_their_codes() {
        let stream = sirenia::StreamId::new("account-1").expect("valid");
        let gone = store_error(&StoreError::StreamTombstoned {
            stream: stream.clone(),
        });
        assert_eq!(
            (gone.status, gone.body()["error"].clone()),
            (StatusCode::GONE, json!("account_deleted"))
        );
        let cut = store_error(&StoreError::StreamTruncated {
            stream,
            readable_from: 3,
        });
        assert_eq!(
            (cut.status, cut.body()["error"].clone()),
            (StatusCode::CONFLICT, json!("history_truncated"))
        );
    }
}
