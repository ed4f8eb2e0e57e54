//! [`Outcome`]: an answer to a POST as data, so an `Idempotency-Key` can store it and replay it
//! exactly; [`Answer`]: an outcome as sent, marked when it is a replay.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Status, `Location` and JSON body of an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The HTTP status code.
    pub status: u16,
    /// The `Location` header, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The JSON body.
    pub body: Value,
}

impl Outcome {
    /// An answer with `status` and `body`.
    pub fn new(status: StatusCode, body: Value) -> Self {
        Outcome {
            status: status.as_u16(),
            location: None,
            body,
        }
    }

    /// The status as a [`StatusCode`] (500 if the stored number is not one).
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body)).into_response();
        if let Some(location) = self.location
            && let Ok(value) = HeaderValue::from_str(&location)
        {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }
}

/// Set on an answer replayed for a repeated `Idempotency-Key`.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The answer to a POST: its outcome, and whether it is the stored answer of an earlier request
/// with the same `Idempotency-Key` (then sent with `Idempotent-Replayed: true`).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The outcome.
    pub outcome: Outcome,
    /// Whether it is replayed.
    pub replayed: bool,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = self.outcome.into_response();
        if self.replayed {
            response.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}
