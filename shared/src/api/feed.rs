//! `/feed`: a search as an Atom feed (RFC 4287), so a reader can follow a topic in any feed
//! reader. It takes `/search`'s parameters and filters; its entries are the most relevant
//! matches (up to [`search::MAX_LIMIT`], recency already counting in their rank), listed newest
//! first. A new post on the topic ranks high, so it appears at the top of the feed.

use crate::search::{self, RequestError, SearchPage, SearchRequest, escape_html};
use crate::timestamp::Timestamp;

use super::{Answer, CACHE_CONTROL, query_string};

/// A validated feed request: a search whose page size defaults to the most a page holds.
#[derive(Debug)]
pub struct FeedRequest {
    pub(super) search: SearchRequest,
    /// The parameters that shape the answer, in a fixed order, for the feed's links and id.
    query: Vec<(String, String)>,
}

/// The parameters that change what a feed lists (paging and format don't apply).
const FILTERS: [&str; 6] = ["q", "platform", "tag", "since", "author", "type"];

/// Validates `/feed`'s parameters as `/search` does.
pub fn request(params: Vec<(String, String)>) -> Result<FeedRequest, RequestError> {
    let query = FILTERS
        .iter()
        .filter_map(|name| {
            let value = params.iter().rev().find(|(key, _)| key == name)?;
            Some(((*name).to_owned(), value.1.clone()))
        })
        .filter(|(_, value)| !value.trim().is_empty())
        .collect();
    let mut with_default = vec![("limit".to_owned(), search::MAX_LIMIT.to_string())];
    with_default.extend(params);
    Ok(FeedRequest {
        search: SearchRequest::from_params(with_default)?,
        query,
    })
}

/// The feed for `page`, the answer to `request`. `now` stands in for `updated` when nothing
/// matched.
pub fn render(origin: &str, request: &FeedRequest, page: &SearchPage, now: Timestamp) -> Answer {
    let mut results: Vec<_> = page.results.iter().collect();
    // Newest first; undated entries last, in rank order.
    results.sort_by_key(|result| std::cmp::Reverse(result.created_at));
    let updated = results
        .iter()
        .find_map(|result| result.created_at)
        .unwrap_or(now);
    let pairs = || request.query.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let query = query_string(pairs());
    let named = |name| {
        pairs()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    };
    // A feed of words is named by them; an author's feed, by the author.
    let q = named("q").or_else(|| named("author")).unwrap_or("");
    let self_link = escape_html(&format!("{origin}/feed?{query}"));
    let page_link = escape_html(&format!("{origin}/?{query}"));
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <title>pubsearch: {title}</title>\n\
         <id>{self_link}</id>\n\
         <updated>{updated}</updated>\n\
         <link rel=\"self\" type=\"application/atom+xml\" href=\"{self_link}\"/>\n\
         <link rel=\"alternate\" type=\"text/html\" href=\"{page_link}\"/>\n\
         <generator>pubsearch</generator>\n",
        title = escape_html(q),
    );
    for result in results {
        let title = if result.title.is_empty() {
            "(untitled)"
        } else {
            &result.title
        };
        let link = result
            .url
            .as_deref()
            .map(|url| format!("<link href=\"{}\"/>\n", escape_html(url)))
            .unwrap_or_default();
        xml.push_str(&format!(
            "<entry>\n<title>{title}</title>\n<id>{id}</id>\n{link}<updated>{updated}</updated>\n\
             <author><name>{author}</name></author>\n\
             <category term=\"{platform}\"/>\n\
             <summary type=\"html\">{summary}</summary>\n</entry>\n",
            title = escape_html(title),
            id = escape_html(&result.uri),
            updated = result.created_at.unwrap_or(updated),
            author = escape_html(result.handle.as_deref().unwrap_or(&result.did)),
            platform = result.platform.as_str(),
            // The snippet is HTML already; as Atom `html` content it is escaped once more.
            summary = escape_html(&result.snippet),
        ));
    }
    xml.push_str("</feed>\n");
    // Characters XML 1.0 forbids (C0 controls but tab and newlines, U+FFFE and U+FFFF) would
    // make a reader refuse the whole feed over one post.
    xml.retain(|c| {
        !matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
    });
    Answer {
        content_type: "application/atom+xml; charset=utf-8",
        cache_control: CACHE_CONTROL,
        body: xml,
    }
}

#[cfg(test)]
mod tests {
    use crate::search::{ResultKind, SearchPage, SearchResult};
    use crate::{Platform, Timestamp};

    #[test]
    fn characters_xml_forbids_are_dropped_not_sent() {
        let feed = super::request(vec![("q".into(), "x".into())]).unwrap();
        let result = SearchResult {
            kind: ResultKind::Looseleaf,
            uri: "at://did:plc:a/x/y".into(),
            did: "did:plc:a".into(),
            handle: None,
            title: "bell\u{7} and <b>".into(),
            snippet: "form\u{c}feed".into(),
            created_at: None,
            rkey: "y".into(),
            base_path: None,
            platform: Platform::Other,
            path: None,
            cover_image: None,
            url: None,
        };
        let page = SearchPage {
            results: vec![result],
            has_more: false,
            next_offset: None,
        };
        let now = Timestamp::from_unix_millis(0).unwrap();
        let xml = super::render("https://example.com", &feed, &page, now).body;
        assert!(xml.contains("<title>bell and &lt;b&gt;</title>"), "{xml}");
        assert!(xml.contains("formfeed"), "{xml}");
        assert!(
            !xml.chars()
                .any(|c| c < ' ' && !matches!(c, '\t' | '\n' | '\r'))
        );
    }
}
