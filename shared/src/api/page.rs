//! The search page at `/`: one self-contained HTML file (inline CSS and JS, no framework). The
//! search lives in the URL (`/?q=…&platform=…&tag=…&since=…&author=…&offset=…`), and the server
//! renders its first page of results into the HTML, so a search can be linked and read without
//! JavaScript; the page's script takes over from there, drawing the same markup from
//! `/search?format=v2`.

use crate::search::{ResultKind, SearchPage, SearchRequest, SearchResult, escape_html};

use super::{Answer, CACHE_CONTROL, query_string};

/// The page template: `@name` markers are replaced by [`render`].
const TEMPLATE: &str = include_str!("page.html");
/// Results per page (the script's `PAGE`).
pub const PAGE_SIZE: u32 = 10;
/// The page's fields, in the order links carry them: the form's, `similar` (the URI of a post
/// whose related posts are shown instead of a search) and `mode`.
const FIELDS: [&str; 7] = ["q", "platform", "tag", "since", "author", "similar", "mode"];
/// The search mode's choices (`mode`), with their labels: words is the default.
const MODES: [(&str, &str); 3] = [("", "Words"), ("semantic", "Meaning"), ("hybrid", "Both")];
/// The platform filter's choices.
const PLATFORMS: [&str; 6] = [
    "leaflet",
    "pckt",
    "offprint",
    "greengale",
    "whitewind",
    "other",
];

/// What `/` was asked for: the form's values as given, and the search they make.
#[derive(Debug)]
pub struct PageRequest {
    /// Each of [`FIELDS`], trimmed (empty when absent).
    fields: [String; 7],
    offset: u32,
    /// `None` without a query; `Err` with the reason a query was refused.
    search: Option<Result<SearchRequest, String>>,
}

impl PageRequest {
    /// Reads the page's parameters; a search they make that is invalid is kept as its reason,
    /// shown on the page (a person reads it, so it is not an error response).
    pub fn from_params(params: &[(String, String)]) -> Self {
        let value = |name: &str| {
            params
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.trim().to_owned())
                .unwrap_or_default()
        };
        let fields = FIELDS.map(value);
        let offset = value("offset").parse().unwrap_or(0);
        let related = !fields[5].is_empty();
        // Words search; an author alone lists their posts; `similar` shows related posts.
        let search = (related || !fields[0].is_empty() || !fields[4].is_empty()).then(|| {
            let mut search: Vec<(&str, String)> = FIELDS
                .iter()
                .zip(&fields)
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| (*name, value.clone()))
                .collect();
            if related {
                // The query is the post's terms, put in when answering.
                search.push(("q", "related".into()));
            }
            search.push(("limit", PAGE_SIZE.to_string()));
            search.push(("offset", offset.to_string()));
            SearchRequest::from_params(search).map_err(|e| e.to_string())
        });
        PageRequest {
            fields,
            offset,
            search,
        }
    }

    /// Whether the page shows results (a valid query was given).
    pub fn searches(&self) -> bool {
        matches!(self.search, Some(Ok(_)))
    }

    pub(super) fn search(&self) -> Option<&Result<SearchRequest, String>> {
        self.search.as_ref()
    }

    /// The post whose related posts the page shows, if it shows those.
    pub(super) fn similar(&self) -> Option<&str> {
        Some(self.field("similar")).filter(|uri| !uri.is_empty())
    }

    fn field(&self, name: &str) -> &str {
        FIELDS
            .iter()
            .position(|field| *field == name)
            .map_or("", |at| &self.fields[at])
    }

    /// `/?…` for this search at `offset`, with `overrides` in place of the form's values.
    fn link(&self, offset: u32, overrides: &[(&str, &str)]) -> String {
        let mut pairs: Vec<(&str, &str)> = FIELDS
            .iter()
            .map(|name| {
                let value = overrides
                    .iter()
                    .find(|(key, _)| key == name)
                    .map_or(self.field(name), |(_, value)| value);
                (*name, value)
            })
            .filter(|(_, value)| !value.is_empty())
            .collect();
        let offset = offset.to_string();
        if offset != "0" {
            pairs.push(("offset", &offset));
        }
        format!("/?{}", query_string(pairs))
    }
}

/// The page for `request`, with `results` when it searched (or the reason it could not).
pub fn render(request: &PageRequest, results: Option<&Result<SearchPage, String>>) -> Answer {
    let q = request.field("q");
    let (status, items, has_more) = match results {
        None => (String::new(), String::new(), false),
        Some(Err(reason)) => (escape_html(reason), String::new(), false),
        Some(Ok(page)) => {
            let what = match request.similar() {
                Some(_) => "Related posts",
                None => "Results",
            };
            let status = match page.results.len() {
                0 => "Nothing matched.".to_owned(),
                n => format!(
                    "{what} {}–{}",
                    request.offset.saturating_add(1),
                    request.offset as usize + n
                ),
            };
            let items = page
                .results
                .iter()
                .map(|result| result_item(request, result))
                .collect();
            (status, items, page.has_more)
        }
    };
    let next = request.offset.saturating_add(PAGE_SIZE);
    let hidden = |hide: bool| if hide { " hidden" } else { "" };
    let platform = request.field("platform");
    let platforms: String = std::iter::once(("", "All platforms"))
        .chain(PLATFORMS.iter().map(|name| (*name, *name)))
        .map(|(value, label)| {
            let selected = if value == platform { " selected" } else { "" };
            format!("    <option value=\"{value}\"{selected}>{label}</option>\n")
        })
        .collect();
    let mode = request.field("mode");
    let modes: String = MODES
        .iter()
        .map(|(value, label)| {
            let selected = if *value == mode { " selected" } else { "" };
            format!("    <option value=\"{value}\"{selected}>{label}</option>\n")
        })
        .collect();
    let (title, feed, feed_link) = if q.is_empty() {
        (
            "pubsearch — search long-form ATProto writing".to_owned(),
            String::new(),
            String::new(),
        )
    } else {
        let feed = escape_html(&format!("/feed{}", &request.link(0, &[])[1..]));
        (
            format!("{} — pubsearch", escape_html(q)),
            format!(
                "<link rel=\"alternate\" type=\"application/atom+xml\" href=\"{feed}\" \
                 title=\"pubsearch: {}\">",
                escape_html(q)
            ),
            format!("<a id=\"feed\" href=\"{feed}\">Follow this search (Atom)</a>"),
        )
    };
    let body = fill(
        TEMPLATE,
        &[
            ("@title", &title),
            ("@feed_link", &feed_link),
            ("@feed", &feed),
            ("@q", &escape_html(q)),
            ("@platforms", platforms.trim_end()),
            ("@modes", modes.trim_end()),
            ("@tag", &escape_html(request.field("tag"))),
            ("@since", &escape_html(request.field("since"))),
            ("@author", &escape_html(request.field("author"))),
            ("@status", &status),
            ("@results", &items),
            (
                "@prev_href",
                &escape_html(&request.link(request.offset.saturating_sub(PAGE_SIZE), &[])),
            ),
            (
                "@prev_hidden",
                hidden(request.offset == 0 || !request.searches()),
            ),
            ("@next_href", &escape_html(&request.link(next, &[]))),
            ("@next_hidden", hidden(!has_more)),
        ],
    );
    Answer {
        content_type: "text/html; charset=utf-8",
        cache_control: CACHE_CONTROL,
        body,
    }
}

/// Replaces each marker once, in one pass over the template, so text put in never has markers
/// replaced inside it.
fn fill(template: &str, markers: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 8 * 1024);
    let mut rest = template;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match markers.iter().find(|(marker, _)| {
            rest.starts_with(marker)
                && !rest[marker.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        }) {
            Some((marker, value)) => {
                out.push_str(value);
                rest = &rest[marker.len()..];
            }
            None => {
                out.push('@');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One result, in the markup the page's script draws (`resultItem`).
fn result_item(request: &PageRequest, result: &SearchResult) -> String {
    let title = escape_html(if result.title.is_empty() {
        "(untitled)"
    } else {
        &result.title
    });
    let title = match &result.url {
        Some(url) => format!(
            "<a class=\"title\" href=\"{}\">{title}</a>",
            escape_html(url)
        ),
        None => format!("<span class=\"title\">{title}</span>"),
    };
    // The author by handle where the build knows it; their other posts by the same name.
    let (name, label) = match &result.handle {
        Some(handle) => (handle.as_str(), format!("@{handle}")),
        None => (result.did.as_str(), result.did.clone()),
    };
    let author = format!(
        "<a class=\"author\" href=\"{}\" title=\"{}\">{}</a>",
        escape_html(&request.link(0, &[("q", ""), ("author", name), ("similar", "")])),
        escape_html(&result.did),
        escape_html(&label)
    );
    let related = match result.kind {
        ResultKind::Publication => String::new(),
        _ => format!(
            " · <a class=\"related\" href=\"/?{}\">Related posts</a>",
            escape_html(&query_string([("similar", result.uri.as_str())]))
        ),
    };
    let time = result
        .created_at
        .map(|at| {
            let at = at.to_string();
            format!(" · <time datetime=\"{at}\">{}</time>", &at[..10])
        })
        .unwrap_or_default();
    format!(
        "<li class=\"result\">{title}<div class=\"snippet\">{snippet}</div>\
         <div class=\"meta\">{author}{time} · {platform} · {kind}{related}</div></li>",
        // Already HTML-escaped, with <mark> highlights.
        snippet = result.snippet,
        platform = result.platform.as_str(),
        kind = result.kind.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::{PageRequest, fill, render};

    fn request(pairs: &[(&str, &str)]) -> PageRequest {
        let params: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PageRequest::from_params(&params)
    }

    #[test]
    fn markers_are_replaced_once_and_values_never_rescanned() {
        let out = fill("<@a|@ab|@b|a@bc>", &[("@a", "@b"), ("@b", "x")]);
        assert_eq!(out, "<@b|@ab|x|a@bc>");
    }

    #[test]
    fn hostile_values_are_escaped_in_the_form_and_links() {
        let page = request(&[("q", "\"><script>alert(1)</script>"), ("tag", "<b>")]);
        let body = render(&page, Some(&Err("empty query".into()))).body;
        assert!(!body.contains("<script>alert"), "{body}");
        assert!(body.contains("value=\"&quot;&gt;&lt;script&gt;"));
        assert!(!body.contains("<b>"));
        assert!(body.contains("empty query"));
    }

    #[test]
    fn a_huge_offset_is_refused_on_the_page_not_overflowed() {
        let page = request(&[("q", "x"), ("offset", "4294967295")]);
        let Some(Err(reason)) = page.search() else {
            panic!("an offset past the deepest is refused");
        };
        // Rendering the refusal does no arithmetic that overflows.
        let body = render(&page, Some(&Err(reason.clone()))).body;
        assert!(body.contains("invalid offset"), "{body}");
    }

    #[test]
    fn an_author_alone_lists_their_posts() {
        let page = request(&[("q", ""), ("author", "alice.example.com")]);
        assert!(page.searches(), "{:?}", page.search());
        assert!(!request(&[("q", " "), ("tag", "x")]).searches());
    }

    #[test]
    fn the_form_keeps_the_filters_and_paging_links_carry_them() {
        let page = request(&[
            ("q", "rivers"),
            ("platform", "pckt"),
            ("since", "2024-01-01"),
            ("offset", "10"),
        ]);
        assert!(page.searches());
        let body = render(&page, None).body;
        assert!(body.contains("<option value=\"pckt\" selected>"));
        assert!(body.contains("value=\"2024-01-01\""));
        assert!(body.contains("href=\"/?q=rivers&amp;platform=pckt&amp;since=2024-01-01\""));
        assert!(body.contains("href=\"/feed?q=rivers&amp;platform=pckt&amp;since=2024-01-01\""));
    }

    #[test]
    fn the_mode_is_chosen_in_the_form_and_carried_by_links() {
        let body = render(&request(&[("q", "rivers"), ("mode", "hybrid")]), None).body;
        assert!(body.contains("<option value=\"hybrid\" selected>Both</option>"));
        assert!(
            body.contains("href=\"/feed?q=rivers&amp;mode=hybrid\""),
            "{body}"
        );
        let words = render(&request(&[("q", "rivers")]), None).body;
        assert!(words.contains("<option value=\"\" selected>Words</option>"));
    }
}
