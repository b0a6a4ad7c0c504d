//! Publishing platforms and where their documents live on the web.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The platform a document was written on, from its collection and its publication's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Leaflet,
    Pckt,
    Offprint,
    Greengale,
    Whitewind,
    /// A `site.standard.*` writer on a host we do not recognise.
    Other,
}

/// A platform name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown platform {0:?}: expected one of leaflet, pckt, offprint, greengale, whitewind, other"
)]
pub struct UnknownPlatform(String);

impl Platform {
    /// Every platform, in a stable order.
    pub const ALL: [Platform; 6] = [
        Platform::Leaflet,
        Platform::Pckt,
        Platform::Offprint,
        Platform::Greengale,
        Platform::Whitewind,
        Platform::Other,
    ];

    /// The lowercase name stored in snapshots and accepted in queries.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Leaflet => "leaflet",
            Platform::Pckt => "pckt",
            Platform::Offprint => "offprint",
            Platform::Greengale => "greengale",
            Platform::Whitewind => "whitewind",
            Platform::Other => "other",
        }
    }

    /// The platform serving a publication at `host` (a bare host or a base path such as
    /// `leaflet.pub/some-blog` or `alice.pckt.blog`); unknown hosts are [`Platform::Other`].
    pub fn from_host(host: &str) -> Platform {
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split(['/', ':', '?', '#'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let on = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if on("leaflet.pub") {
            Platform::Leaflet
        } else if on("pckt.blog") {
            Platform::Pckt
        } else if on("offprint.app") {
            Platform::Offprint
        } else if on("greengale.app") {
            Platform::Greengale
        } else if on("whtwnd.com") {
            Platform::Whitewind
        } else {
            Platform::Other
        }
    }

    /// The public URL of a document, following each platform's routing; `None` when the
    /// document lacks what its platform needs to build one.
    pub fn document_url(
        self,
        did: &str,
        rkey: &str,
        base_path: Option<&str>,
        path: Option<&str>,
    ) -> Option<String> {
        let base = base_path
            .map(|base| {
                base.trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
            })
            .filter(|base| !base.is_empty());
        match self {
            Platform::Whitewind => Some(format!("https://whtwnd.com/{did}/{rkey}")),
            Platform::Leaflet => base.map(|base| format!("https://{base}/{rkey}")),
            Platform::Pckt | Platform::Offprint | Platform::Greengale | Platform::Other => {
                let base = base?;
                match path.filter(|path| !path.is_empty()) {
                    Some(path) if path.starts_with('/') => Some(format!("https://{base}{path}")),
                    Some(path) => Some(format!("https://{base}/{path}")),
                    None => Some(format!("https://{base}/{rkey}")),
                }
            }
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|platform| platform.as_str().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| UnknownPlatform(name.chars().take(64).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_map_to_platforms() {
        assert_eq!(Platform::from_host("leaflet.pub"), Platform::Leaflet);
        assert_eq!(
            Platform::from_host("https://alice.pckt.blog/"),
            Platform::Pckt
        );
        assert_eq!(
            Platform::from_host("blog.offprint.app/x"),
            Platform::Offprint
        );
        assert_eq!(Platform::from_host("GreenGale.app"), Platform::Greengale);
        assert_eq!(Platform::from_host("whtwnd.com"), Platform::Whitewind);
        assert_eq!(Platform::from_host("notleaflet.pub"), Platform::Other);
        assert_eq!(Platform::from_host("example.com"), Platform::Other);
    }

    #[test]
    fn names_round_trip() {
        for platform in Platform::ALL {
            assert_eq!(platform.as_str().parse::<Platform>().unwrap(), platform);
        }
        assert!("myspace".parse::<Platform>().is_err());
    }

    #[test]
    fn urls_follow_platform_routing() {
        let url = |p: Platform, base, path| p.document_url("did:plc:abc", "3k2", base, path);
        assert_eq!(
            url(Platform::Leaflet, Some("alice.leaflet.pub"), None).unwrap(),
            "https://alice.leaflet.pub/3k2"
        );
        assert_eq!(
            url(Platform::Pckt, Some("alice.pckt.blog"), Some("/hello")).unwrap(),
            "https://alice.pckt.blog/hello"
        );
        assert_eq!(
            url(Platform::Whitewind, None, None).unwrap(),
            "https://whtwnd.com/did:plc:abc/3k2"
        );
        assert_eq!(url(Platform::Leaflet, None, None), None);
    }
}
