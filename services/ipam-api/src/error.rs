//! The one error shape of the API, `{"error": {"code", "message", "field"}}`, so that a client
//! handles every refusal (a bad event, an unknown id, a missing token, a failing log) the same way.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use schemars::JsonSchema;
use serde::Serialize;

/// A refused request: the HTTP status and the JSON body that explains it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable snake_case code, such as `invalid_mac`, `not_an_input` or `not_found`.
    pub code: String,
    pub message: String,
    /// The path of the offending field, such as `data.mac`, when one field is to blame.
    pub field: Option<String>,
    /// For `POST /v1/events`: the position in the batch of the event that was refused.
    pub index: Option<usize>,
    /// For a `503` that will pass: the seconds a client should wait, sent as `Retry-After`.
    pub retry_after_secs: Option<u32>,
}

/// Every refusal's body.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Error")]
pub(crate) struct Body<'a> {
    error: Detail<'a>,
}

/// What was refused and why.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ErrorDetail")]
struct Detail<'a> {
    /// One of `x-error-codes` at the top of the OpenAPI document.
    code: &'a str,
    message: &'a str,
    /// The path of the offending field, such as `data.mac`, when one field is to blame.
    field: Option<&'a str>,
    /// `POST /v1/events`: the refused event's index in the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
            index: None,
            retry_after_secs: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn with_index(mut self, index: usize) -> ApiError {
        self.index = Some(index);
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The log refused or failed an operation; the client may retry.
    pub fn log(error: &ipam_log::LogError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", format!("the event log failed: {error}"))
    }

    /// The JSON body, also used by middleware that builds responses by hand.
    pub fn body(&self) -> serde_json::Value {
        let body = Body {
            error: Detail { code: &self.code, message: &self.message, field: self.field.as_deref(), index: self.index },
        };
        serde_json::to_value(body).unwrap_or_default()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(seconds) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        response.json(self.body())
    }
}
