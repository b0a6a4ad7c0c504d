//! A Turso (libSQL) client speaking Hrana over HTTP on reqwest.
//!
//! One pipeline is one HTTP round trip: batch many statements into it (see
//! [`Batch::transaction`]) rather than paying a round trip per row. Every request has a
//! timeout; retries are bounded, back off exponentially, and happen only where they are safe:
//! a request that never reached the server is always retried, one that may have run only when
//! the caller says the work is idempotent ([`Retry::Idempotent`]).

use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

use url::Url;

use super::hrana::{
    Batch, BatchResult, HranaError, PipelineRequest, PipelineResponse, Stmt, StmtResult,
    StreamRequest, StreamResponse, StreamResult,
};

/// Why a Turso call failed. Server errors carry the server's message and code.
#[derive(Debug, thiserror::Error)]
pub enum TursoError {
    #[error("invalid Turso URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("Turso is unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("Turso did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Turso rejected the credentials (HTTP {status}): {message}")]
    Auth { status: u16, message: String },
    #[error("Turso answered HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        code: Option<String>,
    },
    #[error("Turso SQL error{}: {message}", code.as_deref().map(|code| format!(" {code}")).unwrap_or_default())]
    Sql {
        message: String,
        code: Option<String>,
    },
    #[error("unexpected Turso response: {0}")]
    Protocol(String),
}

impl TursoError {
    /// Whether trying again later can succeed (the server or network, not the request, failed).
    pub fn is_retryable(&self) -> bool {
        match self {
            TursoError::Transport(_) | TursoError::Timeout(_) => true,
            TursoError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether the request certainly never reached the server.
    fn never_sent(&self) -> bool {
        matches!(self, TursoError::Transport(error) if error.is_connect())
    }

    fn from_sql(error: HranaError) -> Self {
        TursoError::Sql {
            message: error.message,
            code: error.code,
        }
    }
}

/// Which failures a call may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only failures before the request was sent: safe for any statement.
    Unsent,
    /// Any retryable failure: for reads and idempotent writes (upserts keyed by revision).
    Idempotent,
}

/// Connection settings; `TURSO_URL` and `TURSO_AUTH_TOKEN` fill them in production.
#[derive(Debug, Clone)]
pub struct TursoConfig {
    /// The database URL: `libsql://…` (HTTPS), `https://…` or `http://…` (loopback tests).
    pub url: Url,
    /// Redacted in `Debug`, so no log or error can carry it.
    pub auth_token: Option<SecretString>,
    /// Limit on each HTTP request.
    pub timeout: Duration,
    /// Attempts per call, including the first.
    pub attempts: u32,
    /// First retry delay; doubles per attempt up to 10 s.
    pub backoff: Duration,
}

impl TursoConfig {
    /// Settings for `url` with defaults: 10 s timeout, 4 attempts, 200 ms first backoff.
    pub fn new(url: &str, auth_token: Option<String>) -> Result<Self, TursoError> {
        let invalid = |reason: String| TursoError::Url {
            url: url.to_string(),
            reason,
        };
        let normalized = match url.strip_prefix("libsql://") {
            Some(rest) => format!("https://{rest}"),
            None => url.to_string(),
        };
        let parsed = Url::parse(&normalized).map_err(|error| invalid(error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("expected libsql://, https:// or http://".into()));
        }
        Ok(TursoConfig {
            url: parsed,
            auth_token: auth_token
                .filter(|token| !token.is_empty())
                .map(SecretString::from),
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_millis(200),
        })
    }
}

/// A Turso client; cheap to clone (one shared HTTP connection pool).
#[derive(Debug, Clone)]
pub struct TursoClient {
    http: reqwest::Client,
    config: TursoConfig,
    pipeline_url: Url,
}

fn pipeline_url(base: &Url) -> Result<Url, TursoError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join("v2/pipeline").map_err(|error| TursoError::Url {
        url: base.to_string(),
        reason: error.to_string(),
    })
}

impl TursoClient {
    pub fn new(config: TursoConfig) -> Result<Self, TursoError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(TursoError::Transport)?;
        Ok(TursoClient {
            pipeline_url: pipeline_url(&config.url)?,
            http,
            config,
        })
    }

    /// The database this client talks to.
    pub fn url(&self) -> &Url {
        &self.config.url
    }

    /// One `pipeline` round trip, no retries. Every request in it runs, even after one fails;
    /// an HTTP error means the whole stream is gone.
    pub async fn pipeline(
        &self,
        url: &Url,
        request: &PipelineRequest,
    ) -> Result<PipelineResponse, TursoError> {
        let mut http = self
            .http
            .post(url.clone())
            .timeout(self.config.timeout)
            .json(request);
        if let Some(token) = &self.config.auth_token {
            http = http.bearer_auth(token.expose_secret());
        }
        let response = http.send().await.map_err(|error| self.transport(error))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.transport(error))?;
        if !status.is_success() {
            let (message, code) = match serde_json::from_slice::<HranaError>(&body) {
                Ok(error) => (error.message, error.code),
                Err(_) => (String::from_utf8_lossy(&body).trim().to_string(), None),
            };
            let status = status.as_u16();
            return Err(if status == 401 || status == 403 {
                TursoError::Auth { status, message }
            } else {
                TursoError::Http {
                    status,
                    message,
                    code,
                }
            });
        }
        let response: PipelineResponse = serde_json::from_slice(&body)
            .map_err(|error| TursoError::Protocol(format!("pipeline response: {error}")))?;
        if response.results.len() != request.requests.len() {
            return Err(TursoError::Protocol(format!(
                "{} results for {} requests",
                response.results.len(),
                request.requests.len()
            )));
        }
        Ok(response)
    }

    fn transport(&self, error: reqwest::Error) -> TursoError {
        if error.is_timeout() {
            TursoError::Timeout(self.config.timeout)
        } else {
            TursoError::Transport(error)
        }
    }

    /// Runs `requests` on a fresh stream and closes it, in one round trip, retrying as `retry`
    /// allows. Returns one result per request (the closing one is dropped).
    pub async fn run(
        &self,
        requests: Vec<StreamRequest>,
        retry: Retry,
    ) -> Result<Vec<StreamResult>, TursoError> {
        let mut requests = requests;
        requests.push(StreamRequest::Close);
        let request = PipelineRequest {
            baton: None,
            requests,
        };
        let mut delay = self.config.backoff;
        let mut attempt = 1;
        loop {
            match self.pipeline(&self.pipeline_url, &request).await {
                Ok(mut response) => {
                    response.results.pop();
                    return Ok(response.results);
                }
                Err(error)
                    if attempt < self.config.attempts
                        && (error.never_sent()
                            || (retry == Retry::Idempotent && error.is_retryable())) =>
                {
                    tracing::debug!(%error, attempt, "Turso call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Executes one statement.
    pub async fn execute(&self, stmt: Stmt, retry: Retry) -> Result<StmtResult, TursoError> {
        let mut results = self
            .run(vec![StreamRequest::Execute { stmt }], retry)
            .await?;
        match results.pop() {
            Some(StreamResult::Ok {
                response: StreamResponse::Execute { result },
            }) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a batch in one round trip. Step errors are in the result, not an `Err`.
    pub async fn batch(&self, batch: Batch, retry: Retry) -> Result<BatchResult, TursoError> {
        let mut results = self
            .run(vec![StreamRequest::Batch { batch }], retry)
            .await?;
        match results.pop() {
            Some(StreamResult::Ok {
                response: StreamResponse::Batch { result },
            }) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Opens a stream for an interactive transaction: each call is one round trip carrying the
    /// baton from the previous one. Streams are never retried; a failed stream is gone.
    pub fn stream(&self) -> TursoStream {
        TursoStream {
            client: self.clone(),
            url: self.pipeline_url.clone(),
            baton: None,
            open: true,
        }
    }
}

fn unexpected(result: Option<StreamResult>) -> TursoError {
    match result {
        Some(StreamResult::Error { error }) => TursoError::from_sql(error),
        other => TursoError::Protocol(format!("unexpected result {other:?}")),
    }
}

/// An open stream: its own server-side connection, so `BEGIN` … `COMMIT` span calls.
#[derive(Debug)]
pub struct TursoStream {
    client: TursoClient,
    url: Url,
    baton: Option<String>,
    open: bool,
}

impl TursoStream {
    async fn send(&mut self, request: StreamRequest) -> Result<StreamResponse, TursoError> {
        if !self.open {
            return Err(TursoError::Protocol("the stream is closed".into()));
        }
        let is_close = matches!(request, StreamRequest::Close);
        let pipeline = PipelineRequest {
            baton: self.baton.take(),
            requests: vec![request],
        };
        let response = match self.client.pipeline(&self.url, &pipeline).await {
            Ok(response) => response,
            Err(error) => {
                self.open = false;
                return Err(error);
            }
        };
        if let Some(base_url) = &response.base_url {
            self.url = pipeline_url(&Url::parse(base_url).map_err(|error| TursoError::Url {
                url: base_url.clone(),
                reason: error.to_string(),
            })?)?;
        }
        self.baton = response.baton;
        if self.baton.is_none() && !is_close {
            self.open = false;
        }
        match response.results.into_iter().next() {
            Some(StreamResult::Ok { response }) => Ok(response),
            Some(StreamResult::Error { error }) => Err(TursoError::from_sql(error)),
            None => Err(TursoError::Protocol("no result".into())),
        }
    }

    /// Executes one statement on the stream.
    pub async fn execute(&mut self, stmt: Stmt) -> Result<StmtResult, TursoError> {
        match self.send(StreamRequest::Execute { stmt }).await? {
            StreamResponse::Execute { result } => Ok(result),
            other => Err(TursoError::Protocol(format!(
                "expected execute, got {other:?}"
            ))),
        }
    }

    /// Whether the stream is outside any transaction.
    pub async fn is_autocommit(&mut self) -> Result<bool, TursoError> {
        match self.send(StreamRequest::GetAutocommit).await? {
            StreamResponse::GetAutocommit { is_autocommit } => Ok(is_autocommit),
            other => Err(TursoError::Protocol(format!(
                "expected get_autocommit, got {other:?}"
            ))),
        }
    }

    /// Closes the stream (an open transaction is rolled back by the server).
    pub async fn close(mut self) -> Result<(), TursoError> {
        if !self.open {
            return Ok(());
        }
        self.send(StreamRequest::Close).await.map(drop)
    }
}
