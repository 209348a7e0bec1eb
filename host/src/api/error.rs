//! API errors as JSON responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::entities::EntityError;
use crate::ingest::PipelineError;
use crate::oplog::StoreError;
use crate::plugin::PluginError;

/// An error answered as `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// A 400 answer.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), error = %self.message, "API request failed");
        }
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: error.to_string(),
        }
    }
}

impl From<EntityError> for ApiError {
    fn from(error: EntityError) -> Self {
        let status = match &error {
            EntityError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EntityError::InvalidName { .. } | EntityError::InvalidStatus { .. } => {
                StatusCode::BAD_REQUEST
            }
            EntityError::NotFound(_) => StatusCode::NOT_FOUND,
            EntityError::Exists(_) | EntityError::Loading { .. } => StatusCode::CONFLICT,
            EntityError::NotLoadable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            EntityError::Plugin(PluginError::ConfigRejected { .. }) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            EntityError::Plugin(PluginError::Worker(_)) => StatusCode::SERVICE_UNAVAILABLE,
            EntityError::Plugin(_) => StatusCode::BAD_GATEWAY,
            EntityError::Store(_) | EntityError::Cache(_) | EntityError::Worker(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError {
            status,
            message: error.to_string(),
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(error: PipelineError) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: error.to_string(),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        ApiError {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}
