//! Document text at rest in a snapshot: LZ4-compressed, decompressed only when a query reads it.
//!
//! Text is most of a snapshot (38 of 67 MB on the bench's 7.5k documents), and the edge holds the
//! whole snapshot in an isolate's 128 MB, so its size is the edge's capacity. LZ4 halves the text
//! and shrinks that snapshot by 28%, so the edge holds about 40% more documents. A search reads
//! text only for the snippets of the page it returns, and a lookup for its excerpts, so the cost
//! is per result, not per match: measured side by side, 0.7% of the Worker's query time and 5% of
//! the native one's (phrases matching long documents: 9% and 24%). Deflate stored text in a
//! third, but cost 15% natively, 55% on those phrases.
//!
//! A stored text is its length in bytes (4, little-endian), then the LZ4 block. Readers never
//! touch it: they read `pubsearch_text(content)`, installed by [`install`], which decompresses a
//! stored BLOB and passes text through unchanged. Snapshots before schema 3 store plain text, so
//! the same SQL reads every layout this build speaks. The FTS index reads text through the
//! `document_text` view ([`crate::schema::DDL`]), so FTS5's own reads (a rebuild, our snippets)
//! see text too.

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Error};

/// The SQL name of the function that reads stored text.
pub const FUNCTION: &str = "pubsearch_text";

/// Longest document text a snapshot holds, in characters: the native worker's extraction cuts
/// longer text on a character boundary.
pub const MAX_CONTENT_CHARS: usize = 200_000;

/// Most bytes a stored text may hold: [`MAX_CONTENT_CHARS`] at 4 bytes a character. A longer
/// stored length is not ours.
const MAX_TEXT_BYTES: usize = 4 * MAX_CONTENT_CHARS;

/// Why stored text could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("stored text is {0} bytes, too short for its length")]
    Truncated(usize),
    #[error("stored text claims {0} bytes, more than any document holds")]
    TooLong(usize),
    #[error("stored text does not decompress: {0}")]
    Corrupt(String),
    #[error("stored text decompresses to invalid UTF-8")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// The bytes a snapshot stores for `text`.
pub fn compress(text: &str) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(text.as_bytes())
}

/// The text `stored` holds.
pub fn decompress(stored: &[u8]) -> Result<String, ContentError> {
    let Some((length, block)) = stored.split_first_chunk::<4>() else {
        return Err(ContentError::Truncated(stored.len()));
    };
    let length = u32::from_le_bytes(*length) as usize;
    if length > MAX_TEXT_BYTES {
        return Err(ContentError::TooLong(length));
    }
    let mut bytes = vec![0; length];
    match lz4_flex::block::decompress_into(block, &mut bytes) {
        Ok(written) if written == length => Ok(String::from_utf8(bytes)?),
        Ok(written) => Err(ContentError::Corrupt(format!(
            "{written} bytes, {length} expected"
        ))),
        Err(error) => Err(ContentError::Corrupt(error.to_string())),
    }
}

/// Registers [`FUNCTION`] on a connection: a stored BLOB reads as its text, anything else
/// (plain text from an older schema, NULL) as itself. Every connection that reads a snapshot's
/// text, or rebuilds its FTS index, needs it.
pub fn install(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        FUNCTION,
        1,
        FunctionFlags::SQLITE_UTF8
            | FunctionFlags::SQLITE_DETERMINISTIC
            | FunctionFlags::SQLITE_INNOCUOUS,
        read_stored,
    )
}

fn read_stored(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    match ctx.get_raw(0) {
        ValueRef::Blob(stored) => decompress(stored)
            .map(Value::Text)
            .map_err(|error| Error::UserFunctionError(Box::new(error))),
        ValueRef::Text(text) => Ok(Value::Text(String::from_utf8_lossy(text).into_owned())),
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Integer(n) => Ok(Value::Integer(n)),
        ValueRef::Real(x) => Ok(Value::Real(x)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_shrinks() {
        let text = "Réunion des écrivains. ".repeat(200) + "日本語のテキスト";
        let stored = compress(&text);
        assert!(
            stored.len() * 4 < text.len(),
            "{} of {}",
            stored.len(),
            text.len()
        );
        assert_eq!(decompress(&stored).unwrap(), text);
        assert_eq!(decompress(&compress("")).unwrap(), "");
    }

    #[test]
    fn the_sql_function_reads_every_layout_and_refuses_damage() {
        let conn = Connection::open_in_memory().unwrap();
        install(&conn).unwrap();
        let read = |value: Value| {
            conn.query_row(&format!("SELECT {FUNCTION}(?1)"), [value], |row| {
                row.get::<_, Option<String>>(0)
            })
        };
        let refused = |value: Vec<u8>| read(Value::Blob(value)).unwrap_err().to_string();
        assert_eq!(
            read(Value::Blob(compress("stored"))).unwrap().as_deref(),
            Some("stored")
        );
        assert_eq!(
            read(Value::Text("plain".into())).unwrap().as_deref(),
            Some("plain")
        );
        assert_eq!(read(Value::Null).unwrap(), None);

        let stored = compress(&"some text, and more of it. ".repeat(50));
        assert!(refused(stored[..2].to_vec()).contains("too short"));
        assert!(refused(stored[..stored.len() / 2].to_vec()).contains("does not decompress"));
        let mut longer = stored.clone();
        longer[0] = longer[0].wrapping_add(1);
        assert!(refused(longer).contains("does not decompress"));
        let mut huge = stored.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(refused(huge).contains("more than any document"));
        assert!(refused(lz4_flex::block::compress_prepend_size(&[0xff, 0xfe])).contains("UTF-8"));
    }
}
