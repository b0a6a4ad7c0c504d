//! The search page at `/`: one self-contained HTML file (inline CSS and JS, no framework) that
//! calls `/search?format=v2` and pages with `nextOffset`.

/// The page, compiled into the Worker.
pub const HTML: &str = include_str!("page.html");
