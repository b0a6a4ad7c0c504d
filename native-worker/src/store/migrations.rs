//! Versioned schema migrations for the ingest store, tracked in `PRAGMA user_version`.
//!
//! Append a migration to change the schema; never edit one that has shipped. Each runs in its own
//! transaction with the version bump, so a crash mid-migration leaves the previous version intact.

use rusqlite::Connection;

/// Migrations in order; the store's `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: documents, publications, accounts, the source cursor and the banned-DID policy.
    r#"
    CREATE TABLE documents (
        id              INTEGER PRIMARY KEY,
        uri             TEXT NOT NULL UNIQUE,
        did             TEXT NOT NULL,
        rkey            TEXT NOT NULL,
        collection      TEXT NOT NULL,
        rev             TEXT NOT NULL,
        deleted         INTEGER NOT NULL DEFAULT 0,
        title           TEXT NOT NULL DEFAULT '',
        content         TEXT NOT NULL DEFAULT '',
        description     TEXT,
        tags            TEXT NOT NULL DEFAULT '[]',
        created_at      TEXT,
        updated_at      TEXT,
        publication_uri TEXT,
        site_url        TEXT,
        path            TEXT,
        cover_image     TEXT,
        platform        TEXT,
        searchable      INTEGER NOT NULL DEFAULT 1,
        content_hash    TEXT,
        indexed_at      INTEGER NOT NULL
    );
    CREATE INDEX documents_did ON documents(did);
    CREATE INDEX documents_indexed_at ON documents(indexed_at);
    CREATE INDEX documents_publication_uri ON documents(publication_uri);
    CREATE INDEX documents_content_hash ON documents(content_hash);

    CREATE VIRTUAL TABLE documents_fts USING fts5(
        title, content, content = 'documents', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    -- Only live documents are indexed; tombstones keep their row (and rev) but leave the index.
    CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents WHEN new.deleted = 0 BEGIN
        INSERT INTO documents_fts(rowid, title, content) VALUES (new.id, new.title, new.content);
    END;
    CREATE TRIGGER documents_fts_delete AFTER DELETE ON documents WHEN old.deleted = 0 BEGIN
        INSERT INTO documents_fts(documents_fts, rowid, title, content) VALUES ('delete', old.id, old.title, old.content);
    END;
    CREATE TRIGGER documents_fts_update AFTER UPDATE OF title, content, deleted ON documents BEGIN
        INSERT INTO documents_fts(documents_fts, rowid, title, content)
            SELECT 'delete', old.id, old.title, old.content WHERE old.deleted = 0;
        INSERT INTO documents_fts(rowid, title, content)
            SELECT new.id, new.title, new.content WHERE new.deleted = 0;
    END;

    CREATE TABLE publications (
        id           INTEGER PRIMARY KEY,
        uri          TEXT NOT NULL UNIQUE,
        did          TEXT NOT NULL,
        rkey         TEXT NOT NULL,
        collection   TEXT NOT NULL,
        rev          TEXT NOT NULL,
        deleted      INTEGER NOT NULL DEFAULT 0,
        name         TEXT NOT NULL DEFAULT '',
        description  TEXT NOT NULL DEFAULT '',
        base_path    TEXT,
        platform     TEXT,
        discoverable INTEGER NOT NULL DEFAULT 1,
        created_at   TEXT,
        indexed_at   INTEGER NOT NULL
    );
    CREATE INDEX publications_did ON publications(did);
    CREATE INDEX publications_indexed_at ON publications(indexed_at);

    CREATE TABLE accounts (
        did        TEXT PRIMARY KEY,
        handle     TEXT,
        active     INTEGER NOT NULL DEFAULT 1,
        status     TEXT,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE cursors (
        source   TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE banned_dids (
        did TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    "#,
    // 2: resumable backfill progress, one row per repo and collection.
    r#"
    CREATE TABLE backfill_progress (
        did        TEXT NOT NULL,
        collection TEXT NOT NULL,
        cursor     TEXT,
        done       INTEGER NOT NULL DEFAULT 0,
        records    INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (did, collection)
    ) WITHOUT ROWID;
    "#,
    // 3: write-through to Turso: row images of each committed batch, queued in its transaction
    // and deleted once Turso has them.
    r#"
    CREATE TABLE upstream_queue (
        id          INTEGER PRIMARY KEY,
        rows        TEXT NOT NULL,
        row_count   INTEGER NOT NULL,
        enqueued_at INTEGER NOT NULL
    );
    "#,
    // 4: the full-text index is maintained per batch by the writer (store::fts), not by row
    // triggers, and buffers up to 64 MiB of pending terms so a batch writes one segment.
    r#"
    DROP TRIGGER documents_fts_insert;
    DROP TRIGGER documents_fts_delete;
    DROP TRIGGER documents_fts_update;
    INSERT INTO documents_fts (documents_fts, rank) VALUES ('hashsize', 67108864);
    "#,
    // 5: accounts carry the source order of the event that set them (`version`), so an older
    // copy never overwrites a newer one. Earlier rows are version 0, older than any event, and
    // account images already queued for Turso gain the column as version 0 too.
    r#"
    ALTER TABLE accounts ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    UPDATE upstream_queue SET rows = (
        SELECT json_group_array(
            CASE WHEN image.value ->> '$.table' = 'accounts'
                      AND json_array_length(image.value -> '$.values') = 5
                 THEN json_object('table', 'accounts', 'values', json_array(
                          image.value -> '$.values[0]', image.value -> '$.values[1]',
                          image.value -> '$.values[2]', image.value -> '$.values[3]',
                          json_object('type', 'integer', 'value', '0'),
                          image.value -> '$.values[4]'))
                 ELSE json(image.value) END)
        FROM json_each(upstream_queue.rows) AS image)
    WHERE rows LIKE '%"accounts"%';
    "#,
    // 6: what a snapshot reflects besides documents and publications, stamped like them so a
    // change to it can be found and published: account changes (by their stamp) and the ban
    // list's last change.
    r#"
    CREATE INDEX accounts_updated_at ON accounts(updated_at);
    CREATE TABLE policy_changes (
        policy     TEXT PRIMARY KEY,
        changed_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 7: the store keeps no full-text index. Snapshots build their own, nothing read this one,
    // and maintaining it was about 88% of ingest's cost (ARCHITECTURE.md, "Stages").
    r#"
    DROP TABLE IF EXISTS documents_fts;
    "#,
    // 8: queued row images hold the store's own values as plain JSON (`store::replica`), not
    // the Hrana wire protocol's tagged ones (`{"type": "integer", "value": "5"}`): the store no
    // longer knows Turso's protocol. No replicated column holds a blob.
    r#"
    UPDATE upstream_queue SET rows = (
        SELECT json_group_array(json_object(
            'table', image.value ->> '$.table',
            'values', json((
                SELECT json_group_array(
                    CASE cell.value ->> '$.type'
                        WHEN 'integer' THEN CAST(cell.value ->> '$.value' AS INTEGER)
                        WHEN 'float' THEN cell.value ->> '$.value'
                        WHEN 'text' THEN cell.value ->> '$.value'
                    END)
                FROM json_each(image.value -> '$.values') AS cell))))
        FROM json_each(upstream_queue.rows) AS image);
    "#,
    // 9: documents' vectors for semantic search, kept by the embedder beside ingest
    // (ARCHITECTURE.md, "Embeddings"): derived from the row they name as it was at
    // `source_stamp` (its `indexed_at`), by `model`; recomputable, so never replicated.
    r#"
    CREATE TABLE IF NOT EXISTS document_vectors (
        document_id  INTEGER PRIMARY KEY,
        model        TEXT NOT NULL,
        source_stamp INTEGER NOT NULL,
        vector       BLOB NOT NULL
    );
    "#,
];

/// The schema version this build writes.
pub const CURRENT_VERSION: usize = MIGRATIONS.len();

/// Why the store's schema cannot be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "store schema version {found} is newer than this build knows ({CURRENT_VERSION}); upgrade native-worker"
    )]
    TooNew { found: usize },
    #[error("migration {version} failed: {source}")]
    Failed {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
}

/// Applies every migration the store has not seen yet.
pub fn migrate(conn: &mut Connection) -> Result<usize, MigrationError> {
    let fail = |version| move |source| MigrationError::Failed { version, source };
    let found = conn
        .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        .map_err(fail(0))? as usize;
    if found > CURRENT_VERSION {
        return Err(MigrationError::TooNew { found });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found) {
        let version = index + 1;
        let tx = conn.transaction().map_err(fail(version))?;
        tx.execute_batch(sql).map_err(fail(version))?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(fail(version))?;
        tx.commit().map_err(fail(version))?;
    }
    Ok(CURRENT_VERSION)
}
