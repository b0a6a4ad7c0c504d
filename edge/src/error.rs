//! Every failure the edge can answer with, and its JSON response.

use worker::Response;

/// What went wrong with a request; each maps to one status code and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed: use GET")]
    MethodNotAllowed,
    /// No snapshot is loaded yet: never answered as an empty result.
    #[error("search is starting up: {0}")]
    Unavailable(String),
    /// A live build could not be read just now (R2 failed, or a chunk failed its digest).
    #[error("search is degraded: {0}")]
    Degraded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: u32 = 5;

impl EdgeError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::BadRequest(_) => 400,
            EdgeError::NotFound => 404,
            EdgeError::MethodNotAllowed => 405,
            EdgeError::Unavailable(_) | EdgeError::Degraded(_) => 503,
            EdgeError::Internal(_) => 500,
        }
    }

    /// A JSON error response; internal details are logged, not returned.
    pub fn into_response(self) -> worker::Result<Response> {
        let message = match &self {
            EdgeError::Internal(detail) => {
                worker::console_error!("internal error: {detail}");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = Response::from_json(&serde_json::json!({ "error": message }))?
            .with_status(self.status());
        response.headers_mut().set("Cache-Control", "no-store")?;
        if matches!(self, EdgeError::Unavailable(_) | EdgeError::Degraded(_)) {
            response
                .headers_mut()
                .set("Retry-After", &RETRY_AFTER_SECONDS.to_string())?;
        }
        if matches!(self, EdgeError::MethodNotAllowed) {
            response.headers_mut().set("Allow", "GET, HEAD, OPTIONS")?;
        }
        Ok(response)
    }
}

impl From<worker::Error> for EdgeError {
    fn from(error: worker::Error) -> Self {
        EdgeError::Internal(error.to_string())
    }
}

impl From<rusqlite::Error> for EdgeError {
    fn from(error: rusqlite::Error) -> Self {
        EdgeError::Internal(error.to_string())
    }
}

impl From<pubsearch_shared::SearchError> for EdgeError {
    fn from(error: pubsearch_shared::SearchError) -> Self {
        EdgeError::Internal(error.to_string())
    }
}
