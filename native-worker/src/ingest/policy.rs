//! Ingest policy: whose records are never stored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot read banned-DID list {path}: {source}")]
pub struct PolicyError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// DIDs whose records are dropped at ingest and excluded from snapshots.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    banned: HashSet<String>,
}

impl Policy {
    /// Loads a banned-DID list: one DID per line; blank lines and `#` comments are ignored.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_dids(
            text.lines()
                .map(|line| line.split('#').next().unwrap_or_default().trim())
                .filter(|line| !line.is_empty())
                .map(str::to_owned),
        ))
    }

    /// A policy banning exactly `dids`.
    pub fn from_dids(dids: impl IntoIterator<Item = String>) -> Self {
        Self {
            banned: dids.into_iter().collect(),
        }
    }

    /// Whether records from `did` are refused.
    pub fn is_banned(&self, did: &str) -> bool {
        self.banned.contains(did)
    }

    /// The banned DIDs, sorted, for mirroring into the store.
    pub fn banned_dids(&self) -> Vec<String> {
        let mut dids: Vec<String> = self.banned.iter().cloned().collect();
        dids.sort();
        dids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_with_comments_and_blanks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banned.txt");
        std::fs::write(
            &path,
            "# spam\ndid:plc:bad  # reason\n\n  did:web:worse.example\n",
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        assert!(policy.is_banned("did:plc:bad") && policy.is_banned("did:web:worse.example"));
        assert!(!policy.is_banned("did:plc:good"));
        assert!(
            Policy::load(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }
}
