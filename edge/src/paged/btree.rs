//! Reading ahead of SQLite: the pages that hold given rows, found by walking their tables'
//! B-trees over cached pages, fetched a tree level at a time.
//!
//! SQLite reads a page of results row by row, and each row's B-tree descent waits on the page
//! before it: a cold page of 20 results scattered through the snapshot cost about 2.5 dependent
//! round trips a result. Told the rows first ([`search::Prefetch`]), this walks every row's descent
//! in step, so the whole page costs one round trip per tree level plus one for the rows' overflow
//! pages, and SQLite then finds every page it reads in the chunk cache. It reads SQLite's file
//! format (sqlite.org/fileformat2.html, "B-tree Pages"), only to choose what to fetch: a page it
//! cannot parse is skipped, and SQLite's own reads stay the source of truth.

use std::collections::BTreeMap;
use std::rc::Rc;

use pubsearch_shared::{search, varint};
use rusqlite::Connection;

use super::{CACHE, RemoteArtifact, fetch};

/// Deeper than any B-tree a snapshot has (a table of a billion rows is about 5 levels).
const MAX_DEPTH: usize = 8;
/// Overflow pages prefetched per row at most: 256 KiB of text with 4 KiB pages.
const MAX_OVERFLOW_PAGES: u32 = 64;
/// The tables a document result reads by rowid.
const DOCUMENT_TABLES: [&str; 2] = ["documents", "document_bodies"];

/// A paged build's read-ahead for [`search::search_with`].
pub struct RowPrefetch {
    artifact: Rc<RemoteArtifact>,
}

impl RowPrefetch {
    pub fn new(artifact: Rc<RemoteArtifact>) -> Self {
        Self { artifact }
    }

    /// `page`'s bytes, if its chunk is cached.
    fn page(&self, page: u32) -> Option<Vec<u8>> {
        let size = u64::from(self.artifact.page_size);
        let offset = u64::from(page.checked_sub(1)?) * size;
        let chunk_bytes = u64::from(self.artifact.chunk_bytes);
        let index = (offset / chunk_bytes) as u32;
        let start = (offset % chunk_bytes) as usize;
        CACHE.with(|cache| {
            cache
                .borrow_mut()
                .with((self.artifact.id, index), |bytes| {
                    bytes.get(start..start + size as usize).map(<[u8]>::to_vec)
                })
                .flatten()
        })
    }

    /// Fetches the chunks holding `pages` that are not cached, in one round trip.
    fn ensure(&self, pages: impl IntoIterator<Item = u32>) -> Result<(), super::Failure> {
        let size = u64::from(self.artifact.page_size);
        let chunk_bytes = u64::from(self.artifact.chunk_bytes);
        let mut chunks: Vec<u32> = pages
            .into_iter()
            .filter(|&page| page >= 1 && u64::from(page - 1) * size < self.artifact.byte_size)
            .map(|page| (u64::from(page - 1) * size / chunk_bytes) as u32)
            .collect();
        chunks.sort_unstable();
        chunks.dedup();
        fetch::ensure(&self.artifact, &chunks)
    }

    /// Walks the trees rooted at `roots` down to the leaves holding `ids` (sorted), fetching each
    /// level's pages together, then the overflow pages of those rows.
    fn walk(&self, roots: &[u32], ids: &[i64]) -> Result<(), super::Failure> {
        let mut level: Vec<(u32, Vec<i64>)> =
            roots.iter().map(|&root| (root, ids.to_vec())).collect();
        let mut overflow = Vec::new();
        for _ in 0..MAX_DEPTH {
            if level.is_empty() {
                break;
            }
            self.ensure(level.iter().map(|(page, _)| *page))?;
            let step = descend(&level, |page| self.page(page));
            overflow.extend(step.overflow);
            level = step.next;
        }
        self.ensure(overflow)
    }
}

/// One level of a walk: the pages the next level must read, each with its rows, and the
/// overflow pages of the rows found on leaves.
#[derive(Debug, Default, PartialEq)]
struct Step {
    next: Vec<(u32, Vec<i64>)>,
    overflow: Vec<u32>,
}

/// Routes each page's rows (sorted) one level down, reading pages through `page`; a page it
/// cannot read or parse is skipped.
fn descend(level: &[(u32, Vec<i64>)], page: impl Fn(u32) -> Option<Vec<u8>>) -> Step {
    let mut next: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    let mut step = Step::default();
    for (number, ids) in level {
        let Some(bytes) = page(*number) else {
            continue;
        };
        let Some(node) = Node::parse(&bytes, *number == 1) else {
            continue;
        };
        match node.kind {
            INTERIOR_TABLE => {
                for &id in ids {
                    if let Some(child) = node.child_for(id) {
                        next.entry(child).or_default().push(id);
                    }
                }
            }
            LEAF_TABLE => step.overflow.extend(node.overflow_pages(ids)),
            _ => {}
        }
    }
    step.next = next.into_iter().collect();
    step
}

impl search::Prefetch for RowPrefetch {
    fn documents(&self, conn: &Connection, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let Ok(roots) = table_roots(conn, &DOCUMENT_TABLES) else {
            return;
        };
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        // A failed fetch is recorded by `fetch`; SQLite's own read of the same page fails the
        // request as it would have without read-ahead.
        let _ = self.walk(&roots, &ids);
    }
}

/// The root pages of `tables`.
fn table_roots(conn: &Connection, tables: &[&str]) -> rusqlite::Result<Vec<u32>> {
    let mut statement = conn
        .prepare_cached("SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?1")?;
    tables
        .iter()
        .map(|table| statement.query_row([table], |row| row.get(0)))
        .collect()
}

const INTERIOR_TABLE: u8 = 0x05;
const LEAF_TABLE: u8 = 0x0d;

/// A B-tree page, parsed as far as finding rows needs.
struct Node<'a> {
    bytes: &'a [u8],
    kind: u8,
    /// Where each cell starts, in key order.
    cells: Vec<usize>,
    /// Interior pages: the child holding keys above every cell's.
    right_most: u32,
}

impl<'a> Node<'a> {
    /// `None` for a page that is not a well-formed B-tree page. Page 1's header follows the
    /// file's own 100 bytes.
    fn parse(bytes: &'a [u8], first_page: bool) -> Option<Self> {
        let header = if first_page { 100 } else { 0 };
        let kind = *bytes.get(header)?;
        let count = u16::from_be_bytes(bytes.get(header + 3..header + 5)?.try_into().ok()?);
        let (pointers, right_most) = match kind {
            INTERIOR_TABLE => (
                header + 12,
                u32::from_be_bytes(bytes.get(header + 8..header + 12)?.try_into().ok()?),
            ),
            LEAF_TABLE => (header + 8, 0),
            _ => return None,
        };
        let cells = (0..usize::from(count))
            .map(|i| {
                let at = pointers + 2 * i;
                let offset = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?);
                Some(usize::from(offset)).filter(|&offset| offset < bytes.len())
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            bytes,
            kind,
            cells,
            right_most,
        })
    }

    /// The child page whose subtree holds rowid `id`: that of the first cell whose key is not
    /// below it, else the right-most.
    fn child_for(&self, id: i64) -> Option<u32> {
        for &cell in &self.cells {
            let child = u32::from_be_bytes(self.bytes.get(cell..cell + 4)?.try_into().ok()?);
            let (key, _) = varint::read(self.bytes.get(cell + 4..)?)?;
            if id <= key as i64 {
                return Some(child);
            }
        }
        Some(self.right_most)
    }

    /// The overflow pages of the cells whose rowids are in `ids` (sorted), assuming each chain
    /// runs on consecutive pages, as a vacuumed file writes them; where it does not, SQLite
    /// fetches the rest itself.
    fn overflow_pages(&self, ids: &[i64]) -> Vec<u32> {
        let usable = self.bytes.len();
        let mut pages = Vec::new();
        for &cell in &self.cells {
            let Some(rest) = self.bytes.get(cell..) else {
                continue;
            };
            let Some((payload, size_len)) = varint::read(rest) else {
                continue;
            };
            let Some((rowid, rowid_len)) = varint::read(&rest[size_len..]) else {
                continue;
            };
            if ids.binary_search(&(rowid as i64)).is_err() {
                continue;
            }
            let Some((local, count)) = overflow(payload, usable) else {
                continue;
            };
            let at = size_len + rowid_len + local;
            let Some(first_page) = rest.get(at..at + 4) else {
                continue;
            };
            let first_page = u32::from_be_bytes(first_page.try_into().expect("4 bytes"));
            pages.extend((first_page..).take(count.min(MAX_OVERFLOW_PAGES) as usize));
        }
        pages
    }
}

/// For a table leaf cell with `payload` bytes on pages of `usable` bytes whose payload overflows:
/// the bytes kept on the leaf and the overflow pages; `None` if it all fits on the leaf.
fn overflow(payload: u64, usable: usize) -> Option<(usize, u32)> {
    let usable = usable as u64;
    let max_local = usable - 35;
    if payload <= max_local {
        return None;
    }
    let min_local = (usable - 12) * 32 / 255 - 23;
    let spread = min_local + (payload - min_local) % (usable - 4);
    let local = if spread <= max_local {
        spread
    } else {
        min_local
    };
    let pages = (payload - local).div_ceil(usable - 4);
    Some((local as usize, u32::try_from(pages).ok()?))
}

/// Natively: the tests read SQLite files written to disk.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A vacuumed table of 3,000 rows with 4 KiB pages, every seventh row's text long enough
    /// to overflow, and the file's bytes.
    fn table() -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 4096;
             CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t SELECT i, CASE WHEN i % 7 = 0 THEN printf('%.*c', 9000 + i, 'x')
                                          ELSE printf('row %d', i) END FROM n;
             VACUUM;",
        )
        .unwrap();
        drop(conn);
        let bytes = std::fs::read(&path).unwrap();
        (dir, bytes)
    }

    fn root(bytes: &[u8]) -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.db");
        std::fs::write(&path, bytes).unwrap();
        Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 't'",
                [],
                |row| row.get(0),
            )
            .unwrap()
    }

    fn page_of(bytes: &[u8], number: u32) -> Option<Vec<u8>> {
        let start = (number as usize).checked_sub(1)? * PAGE;
        bytes.get(start..start + PAGE).map(<[u8]>::to_vec)
    }

    /// The rowids of a leaf page's cells.
    fn leaf_rowids(page: &[u8]) -> Vec<i64> {
        let node = Node::parse(page, false).unwrap();
        assert_eq!(node.kind, LEAF_TABLE);
        node.cells
            .iter()
            .map(|&cell| {
                let (_, used) = varint::read(&page[cell..]).unwrap();
                varint::read(&page[cell + used..]).unwrap().0 as i64
            })
            .collect()
    }

    #[test]
    fn the_walk_reaches_each_rows_leaf_and_its_whole_overflow_chain() {
        let (_dir, bytes) = table();
        // Sorted, as the walk takes them; 4,000 is past the table's end.
        let ids: Vec<i64> = vec![1, 2, 7, 500, 1_400, 2_999, 3_000, 4_000];
        let mut level = vec![(root(&bytes), ids)];
        let mut leaves: Vec<(u32, Vec<i64>)> = Vec::new();
        let mut predicted = Vec::new();
        for depth in 0.. {
            assert!(depth < MAX_DEPTH, "the walk must end at the leaves");
            let step = descend(&level, |page| page_of(&bytes, page));
            // Pages with no children below them were leaves.
            for (page, rows) in &level {
                if Node::parse(&page_of(&bytes, *page).unwrap(), *page == 1)
                    .unwrap()
                    .kind
                    == LEAF_TABLE
                {
                    leaves.push((*page, rows.clone()));
                }
            }
            predicted.extend(step.overflow);
            if step.next.is_empty() {
                break;
            }
            level = step.next;
        }
        assert!(level.len() > 1, "the rows span several leaves");
        let mut reached = Vec::new();
        for (page, rows) in &leaves {
            let held = leaf_rowids(&page_of(&bytes, *page).unwrap());
            for row in rows {
                if *row <= 3_000 {
                    assert!(held.contains(row), "row {row} is not on leaf {page}");
                    reached.push(*row);
                }
            }
        }
        reached.sort_unstable();
        assert_eq!(reached, [1, 2, 7, 500, 1_400, 2_999, 3_000]);
        // The overflow pages predicted are the chains SQLite wrote: 7 and 1,400 hold long text;
        // each chain, followed through its pages' next pointers, is the prediction.
        let mut chains = Vec::new();
        for (page, _) in &leaves {
            let page_bytes = page_of(&bytes, *page).unwrap();
            let node = Node::parse(&page_bytes, false).unwrap();
            for &cell in &node.cells {
                let (payload, a) = varint::read(&page_bytes[cell..]).unwrap();
                let (rowid, b) = varint::read(&page_bytes[cell + a..]).unwrap();
                if ![7, 1_400].contains(&(rowid as i64)) {
                    continue;
                }
                let (local, count) = overflow(payload, PAGE).unwrap();
                let at = cell + a + b + local;
                let mut next = u32::from_be_bytes(page_bytes[at..at + 4].try_into().unwrap());
                for _ in 0..count {
                    chains.push(next);
                    next =
                        u32::from_be_bytes(page_of(&bytes, next).unwrap()[..4].try_into().unwrap());
                }
                assert_eq!(next, 0, "the chain ends where the payload does");
            }
        }
        chains.sort_unstable();
        predicted.sort_unstable();
        assert_eq!(predicted, chains);
        assert!(chains.len() >= 4, "{chains:?}");
    }
}
