//! An in-process Hrana-over-HTTP server (what Turso / sqld speak) over a real SQLite file, for
//! tests and benchmarks. Written from the Hrana 3 spec and faithful in what a client observes:
//!
//! - `POST /v2/pipeline`, `/v3/pipeline` (JSON) and `/v3/cursor` (NDJSON entries); `GET /v2`,
//!   `/v3` for version checks;
//! - streams are server-side connections named by a baton that changes on every response; an
//!   unknown or reused baton, or one idle past the stream timeout, gets HTTP 400 and the stream
//!   (with any open transaction) is gone;
//! - every request of a pipeline runs even after one fails; batches honour step conditions;
//! - bearer-token auth (401), injected latency per HTTP request, injected 503s (which kill the
//!   stream, as any HTTP error does), and a "down" switch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pubsearch_native_worker::turso::hrana::{
    Batch, BatchCond, BatchResult, Col, HranaError, PipelineRequest, PipelineResponse, Stmt,
    StmtResult, StreamRequest, StreamResponse, StreamResult, Value,
};
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde_json::json;

/// Largest request body accepted; bigger ones get HTTP 413.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

struct Stream {
    conn: Connection,
    sqls: HashMap<i32, String>,
    last_used: Instant,
}

#[derive(Default)]
struct Faults {
    latency: Duration,
    fail_next: usize,
    down: bool,
}

struct Inner {
    path: PathBuf,
    token: Option<String>,
    stream_timeout: Mutex<Duration>,
    /// baton → stream; a baton is valid for exactly one request.
    streams: Mutex<HashMap<String, Stream>>,
    faults: Mutex<Faults>,
    next_baton: AtomicU64,
    pipelines: AtomicUsize,
    statements: AtomicUsize,
}

/// A running server; stops when dropped.
pub struct HranaServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HranaServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a connection to the server's database the way the server does (WAL, busy timeout):
/// tests use it as the "second writer" and to inspect what arrived.
pub fn connect(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn
}

impl HranaServer {
    /// Serves the SQLite file at `path` on a loopback port; requests need `token` if given.
    pub async fn start(path: &Path, token: Option<&str>) -> HranaServer {
        drop(connect(path));
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            token: token.map(str::to_string),
            stream_timeout: Mutex::new(Duration::from_secs(10)),
            streams: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            next_baton: AtomicU64::new(1),
            pipelines: AtomicUsize::new(0),
            statements: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/v2", get(|| async { StatusCode::OK }))
            .route("/v3", get(|| async { StatusCode::OK }))
            .route("/v2/pipeline", post(pipeline))
            .route("/v3/pipeline", post(pipeline))
            .route("/v3/cursor", post(cursor))
            // Like a real server, refuse oversized requests (axum's default is 2 MiB).
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        HranaServer { inner, addr, task }
    }

    /// The database URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Delay added to every HTTP request (a round trip to a distant region).
    pub fn set_latency(&self, latency: Duration) {
        self.inner.faults.lock().unwrap().latency = latency;
    }

    /// The next `count` HTTP requests fail with 503.
    pub fn fail_next(&self, count: usize) {
        self.inner.faults.lock().unwrap().fail_next = count;
    }

    /// While down, every HTTP request fails with 503.
    pub fn set_down(&self, down: bool) {
        self.inner.faults.lock().unwrap().down = down;
    }

    /// How long a stream may sit idle before its baton expires.
    pub fn set_stream_timeout(&self, timeout: Duration) {
        *self.inner.stream_timeout.lock().unwrap() = timeout;
    }

    /// Pipeline and cursor requests served (including failed ones).
    pub fn pipelines(&self) -> usize {
        self.inner.pipelines.load(Ordering::SeqCst)
    }

    /// Statements executed.
    pub fn statements(&self) -> usize {
        self.inner.statements.load(Ordering::SeqCst)
    }

    /// Streams currently open.
    pub fn open_streams(&self) -> usize {
        self.inner.streams.lock().unwrap().len()
    }
}

fn error_response(status: StatusCode, message: &str, code: &str) -> Response {
    (
        status,
        axum::Json(json!({ "message": message, "code": code })),
    )
        .into_response()
}

/// An HTTP-level refusal (the stream, if any, is gone).
struct Rejection {
    status: StatusCode,
    message: &'static str,
    code: &'static str,
}

impl Rejection {
    fn into_response(self) -> Response {
        error_response(self.status, self.message, self.code)
    }
}

/// Auth, faults and latency, common to both endpoints. `Err` is the HTTP error to return.
async fn admit(inner: &Inner, headers: &HeaderMap, baton: Option<&str>) -> Result<(), Rejection> {
    inner.pipelines.fetch_add(1, Ordering::SeqCst);
    let latency = inner.faults.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(token) = &inner.token {
        let expected = format!("Bearer {token}");
        let given = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if given != Some(expected.as_str()) {
            return Err(Rejection {
                status: StatusCode::UNAUTHORIZED,
                message: "Unauthorized: invalid or missing auth token",
                code: "AUTH_FAILED",
            });
        }
    }
    let fail = {
        let mut faults = inner.faults.lock().unwrap();
        let fail = faults.down || faults.fail_next > 0;
        faults.fail_next = faults.fail_next.saturating_sub(1);
        fail
    };
    if fail {
        // An HTTP error ends the stream, as with a real server restart.
        if let Some(baton) = baton {
            inner.streams.lock().unwrap().remove(baton);
        }
        return Err(Rejection {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "injected failure",
            code: "UNAVAILABLE",
        });
    }
    Ok(())
}

/// Finds (or opens) the stream a baton names; expired or unknown batons are errors.
fn take_stream(inner: &Inner, baton: Option<&str>) -> Result<Stream, Rejection> {
    let timeout = *inner.stream_timeout.lock().unwrap();
    let mut streams = inner.streams.lock().unwrap();
    streams.retain(|_, stream| stream.last_used.elapsed() <= timeout);
    match baton {
        None => {
            let conn = connect(&inner.path);
            Ok(Stream {
                conn,
                sqls: HashMap::new(),
                last_used: Instant::now(),
            })
        }
        Some(baton) => streams.remove(baton).ok_or(Rejection {
            status: StatusCode::BAD_REQUEST,
            message: "the baton is invalid or the stream has expired",
            code: "STREAM_EXPIRED",
        }),
    }
}

/// Parks a stream under a fresh baton, unless it was closed.
fn park(inner: &Inner, mut stream: Stream, closed: bool) -> Option<String> {
    if closed {
        return None;
    }
    stream.last_used = Instant::now();
    let baton = format!(
        "b{}-{:016x}",
        inner.next_baton.fetch_add(1, Ordering::SeqCst),
        rand::random::<u64>()
    );
    inner.streams.lock().unwrap().insert(baton.clone(), stream);
    Some(baton)
}

/// Decodes a request body, applies auth and faults, and finds its stream.
async fn accept<R: serde::de::DeserializeOwned>(
    inner: &Inner,
    headers: &HeaderMap,
    body: &[u8],
    baton: impl Fn(&R) -> Option<&str>,
) -> Result<(R, Stream), Box<Response>> {
    let request: R = serde_json::from_slice(body).map_err(|error| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            &error.to_string(),
            "PROTOCOL",
        ))
    })?;
    admit(inner, headers, baton(&request))
        .await
        .map_err(|rejection| Box::new(rejection.into_response()))?;
    let stream = take_stream(inner, baton(&request))
        .map_err(|rejection| Box::new(rejection.into_response()))?;
    Ok((request, stream))
}

async fn pipeline(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, mut stream) = match accept(&inner, &headers, &body, |r: &PipelineRequest| {
        r.baton.as_deref()
    })
    .await
    {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    let worker = Arc::clone(&inner);
    let (stream, results, closed) = tokio::task::spawn_blocking(move || {
        let mut results = Vec::with_capacity(request.requests.len());
        let mut closed = false;
        for request in request.requests {
            if closed {
                results.push(StreamResult::Error {
                    error: sql_error("the stream is closed", "STREAM_CLOSED"),
                });
                continue;
            }
            if matches!(request, StreamRequest::Close) {
                closed = true;
            }
            results.push(match run_request(&worker, &mut stream, request) {
                Ok(response) => StreamResult::Ok { response },
                Err(error) => StreamResult::Error { error },
            });
        }
        (stream, results, closed)
    })
    .await
    .unwrap();
    let baton = park(&inner, stream, closed);
    axum::Json(PipelineResponse {
        baton,
        base_url: None,
        results,
    })
    .into_response()
}

fn sql_error(message: &str, code: &str) -> HranaError {
    HranaError {
        message: message.to_string(),
        code: Some(code.to_string()),
    }
}

fn sqlite_error(error: rusqlite::Error) -> HranaError {
    let code = match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => "SQLITE_CONSTRAINT",
        Some(rusqlite::ErrorCode::DatabaseBusy) => "SQLITE_BUSY",
        Some(rusqlite::ErrorCode::DatabaseLocked) => "SQLITE_LOCKED",
        Some(rusqlite::ErrorCode::ReadOnly) => "SQLITE_READONLY",
        _ => "SQLITE_ERROR",
    };
    sql_error(&error.to_string(), code)
}

fn run_request(
    inner: &Inner,
    stream: &mut Stream,
    request: StreamRequest,
) -> Result<StreamResponse, HranaError> {
    match request {
        StreamRequest::Close => Ok(StreamResponse::Close),
        StreamRequest::Execute { stmt } => Ok(StreamResponse::Execute {
            result: execute(inner, stream, &stmt)?,
        }),
        StreamRequest::Batch { batch } => Ok(StreamResponse::Batch {
            result: run_batch(inner, stream, &batch, |_, _| {}),
        }),
        StreamRequest::Sequence { sql, sql_id } => {
            let sql = resolve_sql(stream, sql.as_deref(), sql_id)?;
            stream.conn.execute_batch(&sql).map_err(sqlite_error)?;
            Ok(StreamResponse::Sequence)
        }
        StreamRequest::Describe { sql, sql_id } => {
            let sql = resolve_sql(stream, sql.as_deref(), sql_id)?;
            let statement = stream.conn.prepare(&sql).map_err(sqlite_error)?;
            let params: Vec<_> = (1..=statement.parameter_count())
                .map(|index| json!({ "name": statement.parameter_name(index) }))
                .collect();
            let cols: Vec<_> = statement
                .column_names()
                .map(|name| json!({ "name": name, "decltype": null }))
                .collect();
            Ok(StreamResponse::Describe {
                result: json!({
                    "params": params,
                    "cols": cols,
                    "is_explain": statement.is_explain() > 0,
                    "is_readonly": statement.readonly(),
                }),
            })
        }
        StreamRequest::StoreSql { sql_id, sql } => {
            if stream.sqls.insert(sql_id, sql).is_some() {
                return Err(sql_error("sql id already in use", "PROTOCOL"));
            }
            Ok(StreamResponse::StoreSql)
        }
        StreamRequest::CloseSql { sql_id } => {
            stream.sqls.remove(&sql_id);
            Ok(StreamResponse::CloseSql)
        }
        StreamRequest::GetAutocommit => Ok(StreamResponse::GetAutocommit {
            is_autocommit: stream.conn.is_autocommit(),
        }),
    }
}

fn resolve_sql(
    stream: &Stream,
    sql: Option<&str>,
    sql_id: Option<i32>,
) -> Result<String, HranaError> {
    match (sql, sql_id) {
        (Some(sql), None) => Ok(sql.to_string()),
        (None, Some(id)) => stream
            .sqls
            .get(&id)
            .cloned()
            .ok_or_else(|| sql_error(&format!("sql id {id} is not stored"), "PROTOCOL")),
        _ => Err(sql_error(
            "exactly one of sql and sql_id is required",
            "PROTOCOL",
        )),
    }
}

fn to_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Integer { value },
        ValueRef::Real(value) => Value::Float { value },
        ValueRef::Text(text) => Value::Text {
            value: String::from_utf8_lossy(text).into_owned(),
        },
        ValueRef::Blob(bytes) => Value::Blob {
            value: bytes.to_vec(),
        },
    }
}

/// Runs one statement, calling `on_row` per row (the cursor endpoint streams them).
fn execute_with(
    inner: &Inner,
    stream: &mut Stream,
    stmt: &Stmt,
    mut on_row: impl FnMut(Vec<Value>),
) -> Result<StmtResult, HranaError> {
    inner.statements.fetch_add(1, Ordering::SeqCst);
    let sql = resolve_sql(stream, stmt.sql.as_deref(), stmt.sql_id)?;
    let conn = &stream.conn;
    let mut statement = conn.prepare(&sql).map_err(sqlite_error)?;
    let expected = statement.parameter_count();
    if stmt.named_args.is_empty() && stmt.args.len() != expected {
        return Err(sql_error(
            &format!("expected {expected} arguments, got {}", stmt.args.len()),
            "ARGS_INVALID",
        ));
    }
    for (index, value) in stmt.args.iter().enumerate() {
        statement
            .raw_bind_parameter(index + 1, rusqlite::types::Value::from(value.clone()))
            .map_err(sqlite_error)?;
    }
    for arg in &stmt.named_args {
        let candidates = if arg.name.starts_with([':', '@', '$']) {
            vec![arg.name.clone()]
        } else {
            [":", "@", "$"]
                .iter()
                .map(|prefix| format!("{prefix}{}", arg.name))
                .collect()
        };
        let index = candidates
            .iter()
            .find_map(|name| statement.parameter_index(name).ok().flatten())
            .ok_or_else(|| {
                sql_error(&format!("no parameter named {}", arg.name), "ARGS_INVALID")
            })?;
        statement
            .raw_bind_parameter(index, rusqlite::types::Value::from(arg.value.clone()))
            .map_err(sqlite_error)?;
    }
    let cols: Vec<Col> = statement
        .column_names()
        .map(|name| Col {
            name: Some(name.to_string()),
            decltype: None,
        })
        .collect();
    let readonly = statement.readonly();
    let want_rows = stmt.want_rows.unwrap_or(true);
    let mut rows = Vec::new();
    {
        let mut raw = statement.raw_query();
        while let Some(row) = raw.next().map_err(sqlite_error)? {
            if want_rows {
                let values = (0..cols.len())
                    .map(|index| to_value(row.get_ref(index).expect("column in range")))
                    .collect::<Vec<_>>();
                on_row(values.clone());
                rows.push(values);
            }
        }
    }
    Ok(StmtResult {
        cols,
        rows,
        affected_row_count: if readonly { 0 } else { conn.changes() },
        last_insert_rowid: Some(conn.last_insert_rowid()),
    })
}

fn execute(inner: &Inner, stream: &mut Stream, stmt: &Stmt) -> Result<StmtResult, HranaError> {
    execute_with(inner, stream, stmt, |_| {})
}

fn holds(cond: &BatchCond, result: &BatchResult, conn: &Connection) -> bool {
    match cond {
        BatchCond::Ok { step } => result
            .step_results
            .get(*step as usize)
            .is_some_and(Option::is_some),
        BatchCond::Error { step } => result
            .step_errors
            .get(*step as usize)
            .is_some_and(Option::is_some),
        BatchCond::Not { cond } => !holds(cond, result, conn),
        BatchCond::And { conds } => conds.iter().all(|cond| holds(cond, result, conn)),
        BatchCond::Or { conds } => conds.iter().any(|cond| holds(cond, result, conn)),
        BatchCond::IsAutocommit => conn.is_autocommit(),
    }
}

/// Cursor entries, as the cursor endpoint streams them.
enum Entry {
    Begin(u32, Vec<Col>),
    Row(Vec<Value>),
    End(u64, Option<i64>),
    Error(u32, HranaError),
}

fn run_batch(
    inner: &Inner,
    stream: &mut Stream,
    batch: &Batch,
    mut entry: impl FnMut(Entry, u32),
) -> BatchResult {
    let mut result = BatchResult::default();
    for (index, step) in batch.steps.iter().enumerate() {
        let index = index as u32;
        let run = step
            .condition
            .as_ref()
            .is_none_or(|cond| holds(cond, &result, &stream.conn));
        if !run {
            result.step_results.push(None);
            result.step_errors.push(None);
            continue;
        }
        let mut rows = Vec::new();
        match execute_with(inner, stream, &step.stmt, |row| rows.push(row)) {
            Ok(stmt_result) => {
                entry(Entry::Begin(index, stmt_result.cols.clone()), index);
                for row in rows {
                    entry(Entry::Row(row), index);
                }
                entry(
                    Entry::End(
                        stmt_result.affected_row_count,
                        stmt_result.last_insert_rowid,
                    ),
                    index,
                );
                result.step_results.push(Some(stmt_result));
                result.step_errors.push(None);
            }
            Err(error) => {
                entry(Entry::Error(index, error.clone()), index);
                result.step_results.push(None);
                result.step_errors.push(Some(error));
            }
        }
    }
    result
}

#[derive(serde::Deserialize)]
struct CursorRequest {
    baton: Option<String>,
    batch: Batch,
}

async fn cursor(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, mut stream) = match accept(&inner, &headers, &body, |r: &CursorRequest| {
        r.baton.as_deref()
    })
    .await
    {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    let worker = Arc::clone(&inner);
    let (stream, lines) = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        run_batch(&worker, &mut stream, &request.batch, |entry, _| {
            lines.push(match entry {
                Entry::Begin(step, cols) => {
                    json!({"type": "step_begin", "step": step, "cols": cols})
                }
                Entry::Row(row) => json!({"type": "row", "row": row}),
                Entry::End(affected, rowid) => json!({
                    "type": "step_end",
                    "affected_row_count": affected,
                    "last_insert_rowid": rowid.map(|id| id.to_string()),
                }),
                Entry::Error(step, error) => {
                    json!({"type": "step_error", "step": step, "error": error})
                }
            });
        });
        (stream, lines)
    })
    .await
    .unwrap();
    let baton = park(&inner, stream, false);
    let mut body = serde_json::to_string(&json!({ "baton": baton, "base_url": null })).unwrap();
    for line in lines {
        body.push('\n');
        body.push_str(&line.to_string());
    }
    body.push('\n');
    ([("content-type", "text/plain")], body).into_response()
}
