//! The tables the store shares with Turso, and whole-row images of them.
//!
//! Replication ships rows, not events: after a batch commits locally, the rows it changed are
//! captured as [`RowImage`]s (in the same transaction, into `upstream_queue`) and upserted into
//! Turso; rows other writers put in Turso come back down the same way. Every upsert keeps the
//! newest revision, so replays, redeliveries and echoes of our own writes change nothing.
//!
//! The watermark column (`indexed_at`, or `updated_at` for accounts) is stamped by whoever
//! applies the row: Turso's clock upstream — so rows drained late after an outage still sort
//! after every earlier sync — and the local writer's clock locally, so snapshot watermarks keep
//! cutting cleanly between local commits. The watermark is never a version: which copy is
//! newer is the record's `rev`, or for accounts the `version` of the event that set the row.

use std::sync::LazyLock;

use pubsearch_shared::Timestamp;
use rusqlite::Connection;
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use crate::extract::{Document, Publication};

/// A replicated table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Documents,
    Publications,
    Accounts,
}

const DOCUMENT_COLUMNS: &[&str] = &[
    "uri",
    "did",
    "rkey",
    "collection",
    "rev",
    "deleted",
    "title",
    "content",
    "description",
    "tags",
    "created_at",
    "updated_at",
    "publication_uri",
    "site_url",
    "path",
    "cover_image",
    "platform",
    "searchable",
    "content_hash",
    "indexed_at",
];

const PUBLICATION_COLUMNS: &[&str] = &[
    "uri",
    "did",
    "rkey",
    "collection",
    "rev",
    "deleted",
    "name",
    "description",
    "base_path",
    "platform",
    "discoverable",
    "created_at",
    "indexed_at",
];

const ACCOUNT_COLUMNS: &[&str] = &["did", "handle", "active", "status", "version", "updated_at"];

/// Where an account row being applied comes from, which decides how it compares across kinds
/// of source (see [`account_supersedes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountOrigin {
    /// This store's own firehose: an event applied locally, or its row going up to Turso.
    Event,
    /// A copy of some row Turso holds, coming down.
    Copy,
}

/// SQL: whether an account row at version `new` replaces one at version `old` (two SQL
/// expressions). Versions are their source's order ([`crate::firehose::Event::order`]), so
/// they compare only within one kind of source: there a higher `time_us` or tap id wins, and a
/// replay or redelivery never undoes a later change. Across kinds neither is older. A store's
/// own events win then: that is a store switched from Jetstream to tap (or back), whose
/// accounts would otherwise stay frozen at the old kind's versions, takedowns included. A copy
/// from Turso does not: it is an echo of the store's writes before the switch, or the row of a
/// worker fed by the other kind, which this store's own source also reports. (Workers of both
/// kinds sharing one Turso database therefore each follow their own source.) Rows from before
/// versions (0: migration 5, Turso tables of an earlier build) keep their old rule among
/// themselves, the last applied wins, and lose to any versioned row.
pub fn account_supersedes(new: &str, old: &str, origin: AccountOrigin) -> String {
    let floor = crate::firehose::FIRST_TIME_VERSION;
    let same_kind = format!("(({new} >= {floor}) = ({old} >= {floor}))");
    let newer = match origin {
        AccountOrigin::Event => format!("{new} > {old} OR NOT {same_kind}"),
        AccountOrigin::Copy => format!("({new} > {old} AND {same_kind}) OR {old} = 0"),
    };
    format!("({new} = 0 AND {old} = 0) OR ({new} <> 0 AND ({newer}))")
}

/// Who stamps the watermark column of an upserted row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// The database's own clock, in Unix µs (Turso).
    ServerClock,
    /// This value (the local writer's batch time).
    Local(i64),
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Publications, Table::Documents, Table::Accounts];

    pub fn name(self) -> &'static str {
        match self {
            Table::Documents => "documents",
            Table::Publications => "publications",
            Table::Accounts => "accounts",
        }
    }

    /// Replicated columns, in row-image order (the local rowid is not one of them).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Documents => DOCUMENT_COLUMNS,
            Table::Publications => PUBLICATION_COLUMNS,
            Table::Accounts => ACCOUNT_COLUMNS,
        }
    }

    /// The unique key; always the first column.
    pub fn key(self) -> &'static str {
        self.columns()[0]
    }

    /// The column incremental sync pages by; always the last column.
    pub fn watermark(self) -> &'static str {
        self.columns()[self.columns().len() - 1]
    }

    /// Which copy of a row is newer: the source's order of the event that wrote it, never the
    /// watermark (a stamp of when it was applied, which any late copy would win on).
    fn version(self) -> &'static str {
        match self {
            Table::Documents | Table::Publications => "rev",
            Table::Accounts => "version",
        }
    }

    /// When an upserted row (`excluded`) replaces the stored one: a higher version; for
    /// accounts, [`account_supersedes`], where rows going up to Turso (`stamp` is Turso's
    /// clock) are this store's own events and rows coming down are copies.
    fn newer_than_stored(self, stamp: Stamp) -> String {
        let (name, version) = (self.name(), self.version());
        let origin = match stamp {
            Stamp::ServerClock => AccountOrigin::Event,
            Stamp::Local(_) => AccountOrigin::Copy,
        };
        match self {
            Table::Documents | Table::Publications => {
                format!("excluded.{version} > {name}.{version}")
            }
            Table::Accounts => account_supersedes(
                &format!("excluded.{version}"),
                &format!("{name}.{version}"),
                origin,
            ),
        }
    }

    /// Definitions of the columns added after the table first shipped, `(column, definition)`:
    /// what an older copy (a Turso database created by an earlier build) gets with
    /// `ALTER TABLE … ADD COLUMN`. Each has a default, so existing rows stay readable.
    pub fn added_columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Table::Accounts => &[("version", "version INTEGER NOT NULL DEFAULT 0")],
            Table::Documents | Table::Publications => &[],
        }
    }

    /// The table as Turso holds it: the replicated columns, keyed, indexed by watermark.
    pub fn remote_ddl(self) -> String {
        let columns = self
            .columns()
            .iter()
            .map(|column| match *column {
                column if column == self.key() => format!("{column} TEXT PRIMARY KEY"),
                column if column == self.watermark() => format!("{column} INTEGER NOT NULL"),
                column => self
                    .added_columns()
                    .iter()
                    .find(|(added, _)| *added == column)
                    .map_or(column, |(_, definition)| definition)
                    .to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "CREATE TABLE IF NOT EXISTS {name} ({columns});
             CREATE INDEX IF NOT EXISTS {name}_by_{watermark} ON {name}({watermark}, {key})",
            name = self.name(),
            watermark = self.watermark(),
            key = self.key(),
        )
    }

    /// SQL upserting a whole row image, keeping the newer copy (`?` per column in order; with
    /// [`Stamp::ServerClock`], none for the watermark, which the server stamps). Built once.
    pub fn upsert_sql(self, stamp: Stamp) -> &'static str {
        static SQL: LazyLock<Vec<((Table, bool), String)>> = LazyLock::new(|| {
            Table::ALL
                .iter()
                .flat_map(|&table| [(table, true), (table, false)])
                .map(|(table, server)| ((table, server), table.build_upsert_sql(server)))
                .collect()
        });
        let key = (self, matches!(stamp, Stamp::ServerClock));
        SQL.iter()
            .find(|(of, _)| *of == key)
            .map(|(_, sql)| sql.as_str())
            .expect("every table has both upserts")
    }

    fn build_upsert_sql(self, server_clock: bool) -> String {
        let columns = self.columns();
        let placeholders: Vec<&str> = columns
            .iter()
            .map(|column| {
                if server_clock && *column == self.watermark() {
                    "CAST(unixepoch('subsec') * 1000000 AS INTEGER)"
                } else {
                    "?"
                }
            })
            .collect();
        let updates = columns[1..]
            .iter()
            .map(|column| format!("{column} = excluded.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let stamp = if server_clock {
            Stamp::ServerClock
        } else {
            Stamp::Local(0)
        };
        format!(
            "INSERT INTO {name} ({columns}) VALUES ({placeholders})
             ON CONFLICT({key}) DO UPDATE SET {updates}
             WHERE {newer}",
            name = self.name(),
            columns = columns.join(", "),
            placeholders = placeholders.join(", "),
            key = self.key(),
            newer = self.newer_than_stored(stamp),
        )
    }

    /// SQL selecting one row's image by key.
    pub fn select_sql(self) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} = ?1",
            self.columns().join(", "),
            self.name(),
            self.key()
        )
    }

    /// SQL paging rows after `(watermark, key)` in watermark order: `?1` watermark, `?2` key,
    /// `?3` page size.
    pub fn page_sql(self) -> String {
        format!(
            "SELECT {columns} FROM {name} WHERE ({watermark}, {key}) > (?1, ?2)
             ORDER BY {watermark}, {key} LIMIT ?3",
            columns = self.columns().join(", "),
            name = self.name(),
            watermark = self.watermark(),
            key = self.key(),
        )
    }
}

/// One replicated row: every column of [`Table::columns`], in order, as the store holds them
/// (SQLite's own values; `turso/` converts them to and from its wire protocol). Queued for
/// Turso as JSON, each value plain (see [`plain_values`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowImage {
    pub table: Table,
    #[serde(with = "plain_values")]
    pub values: Vec<Value>,
}

impl RowImage {
    /// The row's key value.
    pub fn key(&self) -> Option<&str> {
        match self.values.first() {
            Some(Value::Text(key)) => Some(key),
            _ => None,
        }
    }

    /// The row's watermark value.
    pub fn watermark(&self) -> Option<i64> {
        match self.values.last() {
            Some(Value::Integer(watermark)) => Some(*watermark),
            _ => None,
        }
    }

    /// Roughly how many bytes the row takes on the wire.
    pub fn approx_bytes(&self) -> usize {
        self.values
            .iter()
            .map(|value| {
                16 + match value {
                    Value::Text(text) => text.len(),
                    Value::Blob(bytes) => bytes.len() * 4 / 3,
                    _ => 8,
                }
            })
            .sum()
    }

    /// An upsert that keeps the newer copy, with its arguments: the watermark column is
    /// stamped per `stamp`.
    pub fn upsert(&self, stamp: Stamp) -> (&'static str, Vec<Value>) {
        let watermark = self.values.len() - 1;
        let mut args = self.values.clone();
        match stamp {
            Stamp::ServerClock => {
                args.truncate(watermark);
            }
            Stamp::Local(at) => args[watermark] = Value::Integer(at),
        }
        (self.table.upsert_sql(stamp), args)
    }

    /// A live document's image at revision `rev` (its watermark is stamped when applied).
    pub fn of_document(d: &Document, rev: &str) -> Self {
        let text = |value: &str| Value::Text(value.to_owned());
        let optional = |value: Option<&str>| value.map_or(Value::Null, text);
        let time = |value: Option<Timestamp>| optional(value.map(|t| t.to_rfc3339()).as_deref());
        RowImage {
            table: Table::Documents,
            values: vec![
                text(&d.uri),
                text(&d.did),
                text(&d.rkey),
                text(&d.collection),
                text(rev),
                Value::Integer(0),
                text(&d.title),
                text(&d.content),
                optional(d.description.as_deref()),
                Value::Text(serde_json::to_string(&d.tags).expect("tags serialise")),
                time(d.created_at),
                time(d.updated_at),
                optional(d.publication_uri.as_deref()),
                optional(d.site_url.as_deref()),
                optional(d.path.as_deref()),
                optional(d.cover_image.as_deref()),
                optional(d.platform.map(|p| p.as_str())),
                Value::Integer(i64::from(d.searchable)),
                optional(Some(d.content_hash.as_str()).filter(|hash| !hash.is_empty())),
                Value::Integer(0),
            ],
        }
    }

    /// A live publication's image at revision `rev` (its watermark is stamped when applied).
    pub fn of_publication(p: &Publication, rev: &str) -> Self {
        let text = |value: &str| Value::Text(value.to_owned());
        RowImage {
            table: Table::Publications,
            values: vec![
                text(&p.uri),
                text(&p.did),
                text(&p.rkey),
                text(&p.collection),
                text(rev),
                Value::Integer(0),
                text(&p.name),
                text(&p.description),
                p.base_path.as_deref().map_or(Value::Null, text),
                text(p.platform.as_str()),
                Value::Integer(i64::from(p.discoverable)),
                p.created_at
                    .map_or(Value::Null, |t| Value::Text(t.to_rfc3339())),
                Value::Integer(0),
            ],
        }
    }

    /// Reads the current image of `table`'s row `key` from a local connection.
    pub fn read(conn: &Connection, table: Table, key: &str) -> rusqlite::Result<Option<Self>> {
        use rusqlite::OptionalExtension;
        let mut statement = conn.prepare_cached(&table.select_sql())?;
        statement
            .query_row([key], |row| {
                let values = (0..table.columns().len())
                    .map(|index| row.get::<_, Value>(index))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(RowImage { table, values })
            })
            .optional()
    }

    /// Applies the image to a local connection (newest revision wins); returns whether it
    /// changed anything.
    pub fn apply(&self, conn: &Connection, stamp: Stamp) -> rusqlite::Result<bool> {
        let (sql, args) = self.upsert(stamp);
        Ok(conn
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?
            > 0)
    }
}

/// Row values as plain JSON in the upstream queue: `null`, integers, reals, strings, and a blob
/// as an array of bytes (no replicated column holds one). Migration 8 rewrote images queued in
/// the wire protocol's tagged form by earlier builds.
mod plain_values {
    use rusqlite::types::Value;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    #[serde(untagged)]
    enum Borrowed<'a> {
        Null,
        Integer(i64),
        Real(f64),
        Text(&'a str),
        Blob(&'a [u8]),
    }

    /// Integers are tried before reals, so a whole number stays an integer.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Owned {
        Null,
        Integer(i64),
        Real(f64),
        Text(String),
        Blob(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(values: &[Value], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|value| match value {
            Value::Null => Borrowed::Null,
            Value::Integer(integer) => Borrowed::Integer(*integer),
            Value::Real(real) => Borrowed::Real(*real),
            Value::Text(text) => Borrowed::Text(text),
            Value::Blob(bytes) => Borrowed::Blob(bytes),
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Value>, D::Error> {
        let values = Vec::<Owned>::deserialize(deserializer)?;
        Ok(values
            .into_iter()
            .map(|value| match value {
                Owned::Null => Value::Null,
                Owned::Integer(integer) => Value::Integer(integer),
                Owned::Real(real) => Value::Real(real),
                Owned::Text(text) => Value::Text(text),
                Owned::Blob(bytes) => Value::Blob(bytes),
            })
            .collect())
    }
}
