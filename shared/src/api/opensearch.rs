//! `/opensearch.xml`: an OpenSearch 1.1 description, which the page links to, so browsers offer
//! the site as a search engine (its results page and its feed).

use crate::search::escape_html;

use super::Answer;

/// The description for a server at `origin`.
pub fn render(origin: &str) -> Answer {
    let origin = escape_html(origin);
    Answer {
        content_type: "application/opensearchdescription+xml; charset=utf-8",
        // The same for every visitor and rarely changed.
        cache_control: "public, max-age=86400",
        body: format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
             <OpenSearchDescription xmlns=\"http://a9.com/-/spec/opensearch/1.1/\">\n\
             <ShortName>pubsearch</ShortName>\n\
             <Description>Search long-form ATProto writing: leaflet, pckt, offprint, greengale, \
             whitewind and more</Description>\n\
             <InputEncoding>UTF-8</InputEncoding>\n\
             <Url type=\"text/html\" method=\"get\" template=\"{origin}/?q={{searchTerms}}\"/>\n\
             <Url type=\"application/atom+xml\" method=\"get\" \
             template=\"{origin}/feed?q={{searchTerms}}\"/>\n\
             <Url type=\"application/opensearchdescription+xml\" rel=\"self\" \
             template=\"{origin}/opensearch.xml\"/>\n\
             </OpenSearchDescription>\n"
        ),
    }
}
