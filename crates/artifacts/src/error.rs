//! What can go wrong with the artifact store, each saying what and where.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactError {
    /// The store's settings are wrong (a bad URL, a bucket missing from it).
    Config(String),
    /// The store cannot be reached or refused the call; the try may be tried again later.
    Unreachable(String),
    /// The blob is not in the store.
    Missing { sha256: String },
    /// The bytes the store gave back are not the blob's.
    Corrupt {
        sha256: String,
        size: u64,
        expected_size: u64,
    },
    /// The file is over the limit (nothing of it is kept).
    TooLarge { limit: u64, size: u64 },
    /// Reading the file to store, or writing the one read back, failed.
    Source(String),
}

impl fmt::Display for ArtifactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactError::Config(message)
            | ArtifactError::Unreachable(message)
            | ArtifactError::Source(message) => f.write_str(message),
            ArtifactError::Missing { sha256 } => {
                write!(f, "the artifact store has no blob sha256:{sha256}")
            }
            ArtifactError::Corrupt {
                sha256,
                size,
                expected_size,
            } => write!(
                f,
                "the artifact store's blob sha256:{sha256} is corrupt: {size} bytes read where {expected_size} were stored, or their sha256 differs"
            ),
            ArtifactError::TooLarge { limit, size } => write!(
                f,
                "over max_artifact_size: more than {limit} bytes (at least {size})"
            ),
        }
    }
}

impl std::error::Error for ArtifactError {}
