//! Hrana over HTTP, JSON encoding (protocol versions 2 and 3): the wire types.
//!
//! Written from `docs/HRANA_3_SPEC.md` in tursodatabase/libsql. Integers travel as strings
//! (64-bit safe), blobs as base64; unknown fields are ignored for forward compatibility.
//! The types serve both the client and the test suite's in-process server.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `POST /v{2,3}/pipeline` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRequest {
    /// `None` opens a new stream; otherwise the baton the previous response returned.
    pub baton: Option<String>,
    pub requests: Vec<StreamRequest>,
}

/// `POST /v{2,3}/pipeline` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineResponse {
    /// The stream's next baton; `None` once the stream is closed.
    pub baton: Option<String>,
    /// Where further requests on this stream must go, if not the same URL.
    #[serde(default)]
    pub base_url: Option<String>,
    pub results: Vec<StreamResult>,
}

/// One request on a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamRequest {
    Close,
    Execute {
        stmt: Stmt,
    },
    Batch {
        batch: Batch,
    },
    Sequence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql_id: Option<i32>,
    },
    Describe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit,
}

/// The outcome of one stream request: the server runs every request of a pipeline, even
/// after one fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResult {
    Ok { response: StreamResponse },
    Error { error: HranaError },
}

/// A successful response, matching its request's type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResponse {
    Close,
    Execute { result: StmtResult },
    Batch { result: BatchResult },
    Sequence,
    Describe { result: serde_json::Value },
    StoreSql,
    CloseSql,
    GetAutocommit { is_autocommit: bool },
}

/// An error as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HranaError {
    pub message: String,
    #[serde(default)]
    pub code: Option<String>,
}

/// One SQL statement with its arguments.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stmt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_id: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_args: Vec<NamedArg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub want_rows: Option<bool>,
}

impl Stmt {
    /// A statement with positional arguments.
    pub fn new(sql: impl Into<String>, args: impl IntoIterator<Item = Value>) -> Self {
        Stmt {
            sql: Some(sql.into()),
            args: args.into_iter().collect(),
            ..Stmt::default()
        }
    }

    /// Adds a named argument (`:name`, `@name` or `$name`).
    pub fn named(mut self, name: impl Into<String>, value: Value) -> Self {
        self.named_args.push(NamedArg {
            name: name.into(),
            value,
        });
        self
    }

    /// Asks the server not to return rows.
    pub fn without_rows(mut self) -> Self {
        self.want_rows = Some(false);
        self
    }
}

/// A named statement argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedArg {
    pub name: String,
    pub value: Value,
}

/// A SQLite value on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Value {
    Null,
    Integer {
        #[serde(with = "integer_text")]
        value: i64,
    },
    Float {
        value: f64,
    },
    Text {
        value: String,
    },
    Blob {
        #[serde(rename = "base64", with = "blob_base64")]
        value: Vec<u8>,
    },
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Integer { value }
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Float { value }
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Text {
            value: value.to_string(),
        }
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Text { value }
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Self {
        Value::Blob { value }
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer { value } => Some(*value),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text { value } => Some(value),
            _ => None,
        }
    }
}

impl From<rusqlite::types::Value> for Value {
    fn from(value: rusqlite::types::Value) -> Self {
        use rusqlite::types::Value as Sql;
        match value {
            Sql::Null => Value::Null,
            Sql::Integer(value) => Value::Integer { value },
            Sql::Real(value) => Value::Float { value },
            Sql::Text(value) => Value::Text { value },
            Sql::Blob(value) => Value::Blob { value },
        }
    }
}

impl From<Value> for rusqlite::types::Value {
    fn from(value: Value) -> Self {
        use rusqlite::types::Value as Sql;
        match value {
            Value::Null => Sql::Null,
            Value::Integer { value } => Sql::Integer(value),
            Value::Float { value } => Sql::Real(value),
            Value::Text { value } => Sql::Text(value),
            Value::Blob { value } => Sql::Blob(value),
        }
    }
}

mod integer_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Text(String),
            Number(i64),
        }
        match Wire::deserialize(deserializer)? {
            Wire::Text(text) => text.parse().map_err(D::Error::custom),
            Wire::Number(number) => Ok(number),
        }
    }
}

mod blob_base64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let trimmed = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .map_err(D::Error::custom)
    }
}

/// Encodes bytes as the spec's base64 (for servers building blob values by hand).
pub fn encode_blob(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// A statement's result.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StmtResult {
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<Value>>,
    pub affected_row_count: u64,
    #[serde(default, with = "optional_integer_text")]
    pub last_insert_rowid: Option<i64>,
}

mod optional_integer_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(value),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<i64>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| text.parse().map_err(D::Error::custom))
            .transpose()
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Col {
    pub name: Option<String>,
    #[serde(default)]
    pub decltype: Option<String>,
}

/// Statements run in order, each optionally guarded by a condition on earlier steps: a
/// non-interactive transaction in one round trip.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Batch {
    pub steps: Vec<BatchStep>,
}

/// One step of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<BatchCond>,
    pub stmt: Stmt,
}

/// When a batch step runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchCond {
    Ok { step: u32 },
    Error { step: u32 },
    Not { cond: Box<BatchCond> },
    And { conds: Vec<BatchCond> },
    Or { conds: Vec<BatchCond> },
    IsAutocommit,
}

/// Per-step outcomes; a skipped step has neither a result nor an error.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchResult {
    pub step_results: Vec<Option<StmtResult>>,
    pub step_errors: Vec<Option<HranaError>>,
}

impl Batch {
    /// `BEGIN; stmts…; COMMIT`, each step running only if the previous succeeded, and a
    /// `ROLLBACK` if the commit did not happen: all of `stmts` or none.
    pub fn transaction(stmts: impl IntoIterator<Item = Stmt>) -> Self {
        let mut steps = vec![BatchStep {
            condition: None,
            stmt: Stmt::new("BEGIN", []),
        }];
        for stmt in stmts {
            let previous = steps.len() as u32 - 1;
            steps.push(BatchStep {
                condition: Some(BatchCond::Ok { step: previous }),
                stmt,
            });
        }
        let last = steps.len() as u32 - 1;
        steps.push(BatchStep {
            condition: Some(BatchCond::Ok { step: last }),
            stmt: Stmt::new("COMMIT", []),
        });
        let commit = steps.len() as u32 - 1;
        steps.push(BatchStep {
            condition: Some(BatchCond::Not {
                cond: Box::new(BatchCond::Ok { step: commit }),
            }),
            stmt: Stmt::new("ROLLBACK", []),
        });
        Batch { steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_use_the_spec_encoding() {
        let values = vec![
            Value::Null,
            Value::from(i64::MAX),
            Value::from(1.5),
            Value::from("héllo"),
            Value::from(vec![0u8, 1, 2, 255]),
        ];
        let json = serde_json::to_string(&values).unwrap();
        assert_eq!(
            json,
            r#"[{"type":"null"},{"type":"integer","value":"9223372036854775807"},{"type":"float","value":1.5},{"type":"text","value":"héllo"},{"type":"blob","base64":"AAEC/w"}]"#
        );
        let back: Vec<Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, values);
        // Padded base64 and numeric integers from lenient servers are accepted too.
        let lenient: Vec<Value> = serde_json::from_str(
            r#"[{"type":"blob","base64":"AAEC/w=="},{"type":"integer","value":7}]"#,
        )
        .unwrap();
        assert_eq!(
            lenient,
            vec![Value::from(vec![0u8, 1, 2, 255]), Value::from(7)]
        );
    }

    #[test]
    fn a_transaction_batch_commits_only_if_every_step_succeeded() {
        let batch = Batch::transaction([Stmt::new("INSERT 1", []), Stmt::new("INSERT 2", [])]);
        let json = serde_json::to_value(&batch).unwrap();
        assert_eq!(json["steps"].as_array().unwrap().len(), 5);
        assert_eq!(
            json["steps"][2]["condition"],
            serde_json::json!({"type": "ok", "step": 1})
        );
        assert_eq!(
            json["steps"][4]["condition"],
            serde_json::json!({"type": "not", "cond": {"type": "ok", "step": 3}})
        );
    }
}
