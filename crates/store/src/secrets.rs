//! Connection secrets at rest: ChaCha20-Poly1305 with a 256-bit key that never enters the
//! store. The key comes from a [`KeySource`]: the key itself (`STEVEDORE_SECRET_KEY`,
//! base64) or a key file (`secret_key_file`, else a default path), which the first
//! `connections add` creates with owner-only permissions. Reading the settings is the
//! command line's job: this module reads no environment.

use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct SecretKey([u8; 32]);

/// Where the key comes from: the key itself (base64), else the key file. `Debug` never
/// shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySource {
    pub key: Option<String>,
    pub file: PathBuf,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("file", &self.file)
            .finish()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey, String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness for a key: {e}"))?;
        Ok(SecretKey(key))
    }

    pub fn from_base64(text: &str) -> Result<SecretKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "the secret key is not base64".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the secret key must be 32 bytes (44 base64 characters)".to_owned())?;
        Ok(SecretKey(key))
    }

    /// A key for another use, derived from this one (HMAC-SHA256 of `purpose`): the
    /// sealing key itself never leaves this module.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut inner = Sha256::new();
        inner.update(block.map(|b| b ^ 0x36));
        inner.update(purpose.as_bytes());
        let mut outer = Sha256::new();
        outer.update(block.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The key `source` names; with `create`, a missing key file is made.
    pub fn load(source: &KeySource, create: bool) -> Result<SecretKey, String> {
        if let Some(text) = &source.key {
            return SecretKey::from_base64(text).map_err(|e| format!("STEVEDORE_SECRET_KEY: {e}"));
        }
        let path = &source.file;
        match std::fs::read_to_string(path) {
            Ok(text) => SecretKey::from_base64(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
                let key = SecretKey::generate()?;
                write_private(path, &key.to_base64())
                    .map_err(|e| format!("cannot create the key file {}: {e}", path.display()))?;
                Ok(key)
            }
            Err(error) => Err(format!(
                "no secret key: set STEVEDORE_SECRET_KEY or STEVEDORE_SECRET_KEY_FILE ({}: {error})",
                path.display()
            )),
        }
    }

    /// `nonce || ciphertext` of `plaintext`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for a nonce: {e}"))?;
        let cipher = ChaCha20Poly1305::new(&Key::from(self.0));
        let sealed = cipher
            .encrypt(&Nonce::from(nonce), plaintext)
            .map_err(|_| "encryption failed".to_owned())?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < NONCE_LEN {
            return Err("the sealed value is too short".to_owned());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| "the sealed value is too short".to_owned())?;
        ChaCha20Poly1305::new(&Key::from(self.0))
            .decrypt(&Nonce::from(nonce), ciphertext)
            .map_err(|_| {
                "cannot decrypt: the secret key is not the one the value was sealed with".to_owned()
            })
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_same_key_only() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal(b"{\"TOKEN\":\"s3cr3t\"}").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(key.open(&sealed).unwrap(), b"{\"TOKEN\":\"s3cr3t\"}");
        let other = SecretKey::generate().unwrap();
        assert!(other.open(&sealed).unwrap_err().contains("not the one"));
        // The same value sealed twice differs (fresh nonce).
        assert_ne!(key.seal(b"x").unwrap(), key.seal(b"x").unwrap());
    }

    #[test]
    fn keys_round_trip_through_base64_and_reject_bad_ones() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(again.0, key.0);
        assert!(SecretKey::from_base64("c2hvcnQ=")
            .unwrap_err()
            .contains("32 bytes"));
        assert!(SecretKey::from_base64("not base64!").is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(…)");
    }
}
