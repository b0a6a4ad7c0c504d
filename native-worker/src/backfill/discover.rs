//! Discovery: the relay's `com.atproto.sync.listReposByCollection`, a page of DIDs at a time.

use serde::Deserialize;
use url::Url;

use super::http::{Http, RequestError};

#[derive(Deserialize)]
struct ListedRepos {
    #[serde(default)]
    repos: Vec<ListedRepo>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct ListedRepo {
    did: String,
}

/// One page of the relay's listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct RepoPage {
    pub dids: Vec<String>,
    /// Where the next page starts; `None` after the last.
    pub cursor: Option<String>,
}

/// Lists up to `limit` repos holding `collection`, after `cursor`. Entries that are not DIDs
/// are dropped (they could not be resolved anyway).
pub(super) async fn list_repos(
    http: &Http,
    relay: &Url,
    collection: &str,
    cursor: Option<&str>,
    limit: u32,
) -> Result<RepoPage, RequestError> {
    let mut url = relay
        .join("xrpc/com.atproto.sync.listReposByCollection")
        .expect("valid path");
    url.query_pairs_mut()
        .append_pair("collection", collection)
        .append_pair("limit", &limit.to_string());
    if let Some(cursor) = cursor {
        url.query_pairs_mut().append_pair("cursor", cursor);
    }
    let listed: ListedRepos = http.get_json(&url).await?;
    let empty = listed.repos.is_empty();
    let dids = listed
        .repos
        .into_iter()
        .map(|repo| repo.did)
        .filter(|did| did.starts_with("did:") && did.len() <= MAX_DID_LENGTH)
        .collect();
    // An empty page ends the listing whatever its cursor says, and a relay that hands back the
    // cursor it was given would have us loop forever.
    let cursor = listed
        .cursor
        .filter(|next| !empty && Some(next.as_str()) != cursor);
    Ok(RepoPage { dids, cursor })
}

/// The longest DID atproto allows.
const MAX_DID_LENGTH: usize = 2048;
