//! Finding a repo's PDS from its DID document: the PLC directory for `did:plc`, the host's
//! `/.well-known/did.json` for `did:web`. (The document's `alsoKnownAs` handle is only a claim
//! until the handle resolves back to the DID, so it is not taken from here.)

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::RepoError;
use super::http::Http;

#[derive(Deserialize)]
struct DidDocument {
    #[serde(default)]
    service: Vec<DidService>,
}

#[derive(Deserialize)]
struct DidService {
    id: String,
    #[serde(rename = "serviceEndpoint")]
    endpoint: Value,
}

/// The PDS named by `did`'s document.
pub(super) async fn resolve_pds(http: &Http, did: &str) -> Result<Url, RepoError> {
    let fail = |reason: String| RepoError::Resolve {
        did: did.to_owned(),
        reason,
    };
    let document_url = if did.starts_with("did:plc:") {
        // "./" keeps `did:plc:…` from parsing as a URL with scheme `did`.
        http.config()
            .plc_url
            .join(&format!("./{did}"))
            .map_err(|e| fail(e.to_string()))?
    } else if let Some(identifier) = did.strip_prefix("did:web:") {
        did_web_document_url(identifier).map_err(fail)?
    } else {
        return Err(fail("only did:plc and did:web are supported".into()));
    };
    let document: DidDocument = http.get_json(&document_url).await?;
    document
        .service
        .iter()
        .find(|service| service.id.ends_with("#atproto_pds"))
        .and_then(|service| service.endpoint.as_str())
        .and_then(|endpoint| Url::parse(&format!("{}/", endpoint.trim_end_matches('/'))).ok())
        .ok_or_else(|| fail("its DID document names no #atproto_pds service".into()))
}

/// Where a `did:web` DID's document lives. The method-specific identifier is a host with its
/// port's colon percent-encoded (`localhost%3A8080`); more `:`-separated segments would be a
/// path, which atproto does not allow for `did:web`.
fn did_web_document_url(identifier: &str) -> Result<Url, String> {
    if identifier.contains(':') {
        return Err("path-based did:web is not supported by atproto".into());
    }
    let host = identifier.replace("%3A", ":").replace("%3a", ":");
    let url = Url::parse(&format!("https://{host}/.well-known/did.json"))
        .map_err(|error| format!("{host:?} is not a host: {error}"))?;
    match url.path() {
        "/.well-known/did.json" => Ok(url),
        _ => Err(format!("{host:?} is not a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::did_web_document_url;

    #[test]
    fn did_web_names_a_host_and_maybe_a_port() {
        let url = |id: &str| did_web_document_url(id).map(|url| url.to_string());
        assert_eq!(
            url("example.com").unwrap(),
            "https://example.com/.well-known/did.json"
        );
        assert_eq!(
            url("localhost%3A8080").unwrap(),
            "https://localhost:8080/.well-known/did.json"
        );
        assert!(
            url("example.com:user:alice")
                .unwrap_err()
                .contains("path-based")
        );
        assert!(url("example.com%2Fevil").is_err());
        assert!(url("exa mple.com").is_err());
    }
}
