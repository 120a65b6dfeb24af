//! Users and API tokens of a node, stored as hashes in `DATA/auth/users.json`.
//!
//! Passwords are argon2id hashes; token secrets are 128-bit random UUIDs, so a SHA-256 of the
//! secret is enough (no dictionary to guard against) and keeps token checks cheap. The file is
//! written by the CLI (`hemiron node user add`, `hemiron node token add`) under an exclusive
//! lock and read by the agent, which notices changes by the file's metadata, so a token added
//! while the agent runs is accepted at once.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;

/// Failure to read or change the credential store.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("invalid user id '{0}': expected NAME@REALM with realm pam or pve")]
    InvalidUserId(String),
    #[error("invalid token id '{0}': expected USER@REALM!TOKENNAME")]
    InvalidTokenId(String),
    #[error("user '{0}' does not exist")]
    UnknownUser(String),
    #[error("token '{0}' already exists")]
    TokenExists(String),
    #[error("password must not be empty")]
    EmptyPassword,
    #[error("failed to hash password")]
    HashPassword,
    #[error("failed to read credential file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credential file {path} is corrupt")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to write credential file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to lock credential file {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A user of the node. Every user is an administrator of the node (there are no ACLs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserEntry {
    /// argon2id PHC string; absent for a user that can only use API tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default = "default_true")]
    pub enable: bool,
    /// Unix time after which the account is disabled; 0 = never.
    #[serde(default)]
    pub expire: i64,
}

fn default_true() -> bool {
    true
}

/// An API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Unix time after which the token is refused; 0 = never.
    #[serde(default)]
    pub expire: i64,
    #[serde(default)]
    pub comment: String,
    /// Proxmox's privilege separation flag, kept for compatibility of listings.
    #[serde(default)]
    pub privsep: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenEntry>,
}

/// The built-in administrator. It exists without a password (no host PAM, no default
/// password): it can use tokens at once, and password logins once `user add` sets one.
pub const ROOT_USER: &str = "root@pam";

/// Checks `name@realm` (realm pam or pve), as Proxmox's userid format.
pub fn check_userid(userid: &str) -> Result<(), CredentialError> {
    let bad = || CredentialError::InvalidUserId(userid.to_string());
    let (name, realm) = userid.rsplit_once('@').ok_or_else(bad)?;
    let name_ok = !name.is_empty()
        && name.len() <= 60
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, ':' | '/' | '@' | '!' | ' '));
    if !name_ok || !matches!(realm, "pam" | "pve") {
        return Err(bad());
    }
    Ok(())
}

/// Splits `user@realm!tokenname` and checks both parts.
pub fn split_tokenid(tokenid: &str) -> Result<(&str, &str), CredentialError> {
    let bad = || CredentialError::InvalidTokenId(tokenid.to_string());
    let (user, name) = tokenid.split_once('!').ok_or_else(bad)?;
    check_userid(user).map_err(|_| bad())?;
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok =
        name.len() >= 2 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !first_ok || !rest_ok {
        return Err(bad());
    }
    Ok((user, name))
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, CredentialError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CredentialError::HashPassword)
}

/// Verifies a password against an argon2 PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hex SHA-256 of a token secret.
pub fn hash_token_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The credential file of one data dir.
#[derive(Debug)]
pub struct CredentialStore {
    path: PathBuf,
    lock_path: PathBuf,
    cache: Mutex<Option<(FileStamp, Credentials)>>,
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl CredentialStore {
    pub fn new(auth_dir: &Path) -> Self {
        Self {
            path: auth_dir.join("users.json"),
            lock_path: auth_dir.join("users.lock"),
            cache: Mutex::new(None),
        }
    }

    fn stamp(&self) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&self.path).ok()?;
        Some(FileStamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified().ok(),
        })
    }

    fn read_file(&self) -> Result<Credentials, CredentialError> {
        match fs::read(&self.path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|source| CredentialError::Parse {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(source) => Err(CredentialError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The current credentials, re-read only when the file changed since the last call.
    pub fn load(&self) -> Result<Credentials, CredentialError> {
        let stamp = self.stamp();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let (Some(stamp), Some((cached_stamp, creds))) = (&stamp, cache.as_ref()) {
            if stamp == cached_stamp {
                return Ok(creds.clone());
            }
        }
        let creds = self.read_file()?;
        *cache = stamp.map(|s| (s, creds.clone()));
        Ok(creds)
    }

    /// Applies `change` to the stored credentials under an exclusive file lock.
    fn modify<T>(
        &self,
        change: impl FnOnce(&mut Credentials) -> Result<T, CredentialError>,
    ) -> Result<T, CredentialError> {
        use fs4::fs_std::FileExt;
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|source| CredentialError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|source| CredentialError::Lock {
                path: self.lock_path.clone(),
                source,
            })?;
        lock.lock_exclusive()
            .map_err(|source| CredentialError::Lock {
                path: self.lock_path.clone(),
                source,
            })?;
        let mut creds = self.read_file()?;
        let out = change(&mut creds)?;
        let json = serde_json::to_vec_pretty(&creds).map_err(|source| CredentialError::Parse {
            path: self.path.clone(),
            source,
        })?;
        fsutil::write_atomic(&self.path, &json, 0o600).map_err(|source| {
            CredentialError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(out)
    }

    /// Creates or updates a user with a password.
    pub fn set_user_password(&self, userid: &str, password: &str) -> Result<(), CredentialError> {
        check_userid(userid)?;
        if password.is_empty() {
            return Err(CredentialError::EmptyPassword);
        }
        let hash = hash_password(password)?;
        self.modify(|creds| {
            let entry = creds.users.entry(userid.to_string()).or_default();
            entry.password_hash = Some(hash);
            entry.enable = true;
            Ok(())
        })
    }

    /// Creates an API token and returns its secret, which is stored only as a hash.
    pub fn add_token(&self, tokenid: &str, comment: &str) -> Result<String, CredentialError> {
        let (user, _) = split_tokenid(tokenid)?;
        let secret = uuid::Uuid::new_v4().to_string();
        let secret_sha256 = hash_token_secret(&secret);
        self.modify(|creds| {
            if user != ROOT_USER && !creds.users.contains_key(user) {
                return Err(CredentialError::UnknownUser(user.to_string()));
            }
            if creds.tokens.contains_key(tokenid) {
                return Err(CredentialError::TokenExists(tokenid.to_string()));
            }
            creds.tokens.insert(
                tokenid.to_string(),
                TokenEntry {
                    secret_sha256,
                    expire: 0,
                    comment: comment.to_string(),
                    privsep: false,
                },
            );
            Ok(())
        })?;
        Ok(secret)
    }

    /// Removes an API token; returns whether it existed.
    pub fn remove_token(&self, tokenid: &str) -> Result<bool, CredentialError> {
        split_tokenid(tokenid)?;
        self.modify(|creds| Ok(creds.tokens.remove(tokenid).is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userid_and_tokenid_formats() {
        assert!(check_userid("root@pam").is_ok());
        assert!(check_userid("alice@pve").is_ok());
        assert!(check_userid("alice").is_err());
        assert!(check_userid("alice@ldap").is_err());
        assert!(check_userid("@pam").is_err());
        assert_eq!(split_tokenid("root@pam!ci").unwrap(), ("root@pam", "ci"));
        assert!(split_tokenid("root@pam!").is_err());
        assert!(split_tokenid("root@pam!1x").is_err());
        assert!(split_tokenid("root@pam").is_err());
    }

    #[test]
    fn tokens_and_passwords_roundtrip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path());
        let secret = store.add_token("root@pam!ci", "").unwrap();
        let creds = store.load().unwrap();
        let entry = &creds.tokens["root@pam!ci"];
        assert_eq!(entry.secret_sha256, hash_token_secret(&secret));
        assert!(!fs::read_to_string(dir.path().join("users.json"))
            .unwrap()
            .contains(&secret));
        assert!(matches!(
            store.add_token("root@pam!ci", ""),
            Err(CredentialError::TokenExists(_))
        ));
        assert!(matches!(
            store.add_token("bob@pve!x1", ""),
            Err(CredentialError::UnknownUser(_))
        ));

        store.set_user_password("bob@pve", "s3cret").unwrap();
        let creds = store.load().unwrap();
        let hash = creds.users["bob@pve"].password_hash.clone().unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &hash));
        assert!(!verify_password("wrong", &hash));
    }

    #[test]
    fn load_notices_changes_by_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let reader = CredentialStore::new(dir.path());
        assert!(reader.load().unwrap().tokens.is_empty());
        let writer = CredentialStore::new(dir.path());
        writer.add_token("root@pam!t1", "").unwrap();
        assert!(reader.load().unwrap().tokens.contains_key("root@pam!t1"));
    }
}
