//! Every failure a server answers with, and the response it makes: one status, a JSON body and
//! the same headers at the edge and natively.

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed: use GET")]
    MethodNotAllowed,
    /// No snapshot is loaded yet: never answered as an empty result.
    #[error("search is starting up: {0}")]
    Unavailable(String),
    /// A live build could not be read just now.
    #[error("search is degraded: {0}")]
    Degraded(String),
    /// The server's fault; the detail is logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: u32 = 5;

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::Unavailable(_) | ApiError::Degraded(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The JSON body: `{"error": message}`, with internal details left out.
    pub fn body(&self) -> String {
        let message = match self {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        serde_json::json!({ "error": message }).to_string()
    }

    /// Headers besides `Content-Type` (always JSON).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("Cache-Control", super::NO_STORE.to_owned())];
        match self {
            ApiError::Unavailable(_) | ApiError::Degraded(_) => {
                headers.push(("Retry-After", RETRY_AFTER_SECONDS.to_string()))
            }
            ApiError::MethodNotAllowed => headers.push(("Allow", super::ALLOWED_METHODS.into())),
            _ => {}
        }
        headers
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(error: rusqlite::Error) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl From<crate::SearchError> for ApiError {
    fn from(error: crate::SearchError) -> Self {
        match error {
            // The client asked for what this index cannot do; the keyword mode still answers.
            crate::SearchError::NoVectors => ApiError::BadRequest(format!("invalid mode: {error}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn internal_details_stay_out_of_the_body() {
        let error = ApiError::Internal("disk I/O error at /secret/path".into());
        assert_eq!(error.status(), 500);
        assert_eq!(error.body(), r#"{"error":"internal error"}"#);
    }

    #[test]
    fn unavailable_asks_for_a_retry_and_never_caches() {
        let headers = ApiError::Unavailable("loading".into()).headers();
        assert!(headers.contains(&("Retry-After", "5".into())));
        assert!(headers.contains(&("Cache-Control", "no-store".into())));
        let headers = ApiError::MethodNotAllowed.headers();
        assert!(headers.iter().any(|(name, _)| *name == "Allow"));
    }
}
