//! Every failure the edge answers with: an [`ApiError`], whose status, body and headers
//! `pubsearch_shared::api` decides so the native server fails the same way.

use pubsearch_shared::api::ApiError;
use worker::Response;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EdgeError(#[from] pub ApiError);

impl EdgeError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        EdgeError(ApiError::BadRequest(message.into()))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        EdgeError(ApiError::Unavailable(message.into()))
    }

    pub fn degraded(message: impl Into<String>) -> Self {
        EdgeError(ApiError::Degraded(message.into()))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        EdgeError(ApiError::Internal(message.into()))
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        self.0.status()
    }

    /// The JSON error response; internal details are logged, not returned.
    pub fn into_response(self) -> worker::Result<Response> {
        if let ApiError::Internal(detail) = &self.0 {
            worker::console_error!("internal error: {detail}");
        }
        let mut response = Response::ok(self.0.body())?.with_status(self.status());
        let headers = response.headers_mut();
        headers.set("Content-Type", "application/json")?;
        for (name, value) in self.0.headers() {
            headers.set(name, &value)?;
        }
        Ok(response)
    }
}

impl From<worker::Error> for EdgeError {
    fn from(error: worker::Error) -> Self {
        EdgeError::internal(error.to_string())
    }
}

impl From<rusqlite::Error> for EdgeError {
    fn from(error: rusqlite::Error) -> Self {
        EdgeError::internal(error.to_string())
    }
}

impl From<pubsearch_shared::SearchError> for EdgeError {
    fn from(error: pubsearch_shared::SearchError) -> Self {
        EdgeError(error.into())
    }
}
