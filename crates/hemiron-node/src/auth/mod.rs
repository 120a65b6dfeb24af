//! Who is calling: password logins, tickets with CSRF tokens, and API tokens, as Proxmox
//! VE's `pveproxy` accepts them.

pub mod store;
pub mod ticket;

use std::path::Path;

pub use store::{CredentialError, CredentialStore, ROOT_USER};
pub use ticket::{TicketKeyError, TicketSigner};

/// Why a request or login was refused. Messages follow Proxmox's.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failure")]
    LoginFailed,
    #[error("no ticket")]
    NoCredentials,
    #[error("invalid PVE ticket")]
    BadTicket,
    #[error("invalid token value!")]
    BadToken,
    #[error("Permission denied - invalid csrf token")]
    BadCsrf,
    #[error("credential store unavailable")]
    Store(#[from] CredentialError),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `user@realm`.
    pub userid: String,
    /// `user@realm!name` when the call uses an API token.
    pub tokenid: Option<String>,
}

impl Principal {
    /// The name tasks and logs record: the token id for token calls, as Proxmox does.
    pub fn display_name(&self) -> &str {
        self.tokenid.as_deref().unwrap_or(&self.userid)
    }
}

/// The result of a successful `POST /access/ticket`.
#[derive(Debug, Clone)]
pub struct Login {
    pub username: String,
    pub ticket: String,
    pub csrf_token: String,
}

/// Checks credentials against the node's store.
#[derive(Debug)]
pub struct Authenticator {
    store: CredentialStore,
    signer: TicketSigner,
    /// A real argon2 hash to verify against for unknown users, so that a login for a user
    /// that does not exist takes as long as one with a wrong password.
    dummy_hash: String,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Authenticator {
    pub fn open(auth_dir: &Path) -> Result<Self, AuthOpenError> {
        let signer = TicketSigner::load_or_create(auth_dir)?;
        let dummy_hash = store::hash_password("hemiron-timing-equaliser")?;
        Ok(Self {
            store: CredentialStore::new(auth_dir),
            signer,
            dummy_hash,
        })
    }

    /// `POST /access/ticket`: a password, or a still-valid ticket as the password (renewal).
    pub fn login(
        &self,
        username: &str,
        realm: Option<&str>,
        password: &str,
    ) -> Result<Login, AuthError> {
        let userid = match realm {
            Some(realm) if !username.contains('@') => format!("{username}@{realm}"),
            _ => username.to_string(),
        };
        let now = now();
        if password.starts_with("PVE:") {
            // Renewal: the ticket must be valid and belong to the same user.
            return match self.signer.verify_ticket(password, now) {
                Some(owner) if owner == userid && self.user_enabled(&userid)? => {
                    Ok(self.issue(&userid, now))
                }
                _ => Err(AuthError::LoginFailed),
            };
        }
        let creds = self.store.load()?;
        let hash = creds
            .users
            .get(&userid)
            .filter(|u| u.enable && (u.expire == 0 || u.expire > now))
            .and_then(|u| u.password_hash.clone());
        match hash {
            Some(hash) if store::verify_password(password, &hash) => Ok(self.issue(&userid, now)),
            Some(_) => Err(AuthError::LoginFailed),
            None => {
                let _ = store::verify_password(password, &self.dummy_hash);
                Err(AuthError::LoginFailed)
            }
        }
    }

    fn issue(&self, userid: &str, now: i64) -> Login {
        Login {
            username: userid.to_string(),
            ticket: self.signer.issue_ticket(userid, now),
            csrf_token: self.signer.issue_csrf(userid, now),
        }
    }

    fn user_enabled(&self, userid: &str) -> Result<bool, AuthError> {
        if userid == ROOT_USER {
            return Ok(true);
        }
        let creds = self.store.load()?;
        let now = now();
        Ok(creds
            .users
            .get(userid)
            .is_some_and(|u| u.enable && (u.expire == 0 || u.expire > now)))
    }

    /// Authenticates a request from its `Authorization` header and `PVEAuthCookie` cookie.
    /// `csrf` is the `CSRFPreventionToken` header, required with tickets on non-GET calls.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cookie_ticket: Option<&str>,
        csrf: Option<&str>,
        is_read: bool,
    ) -> Result<Principal, AuthError> {
        let now = now();
        if let Some(header) = authorization {
            if let Some(token) = header_value(header, "PVEAPIToken") {
                return self.check_token(&token, now);
            }
            if let Some(ticket) = header_value(header, "PVEAuthCookie") {
                return self.check_ticket(&ticket, csrf, is_read, now);
            }
        }
        match cookie_ticket {
            Some(ticket) => self.check_ticket(ticket, csrf, is_read, now),
            None => Err(AuthError::NoCredentials),
        }
    }

    fn check_ticket(
        &self,
        ticket: &str,
        csrf: Option<&str>,
        is_read: bool,
        now: i64,
    ) -> Result<Principal, AuthError> {
        let userid = self
            .signer
            .verify_ticket(ticket, now)
            .ok_or(AuthError::BadTicket)?;
        if !self.user_enabled(&userid)? {
            return Err(AuthError::BadTicket);
        }
        if !is_read {
            let ok = csrf.is_some_and(|c| self.signer.verify_csrf(c, &userid, now));
            if !ok {
                return Err(AuthError::BadCsrf);
            }
        }
        Ok(Principal {
            userid,
            tokenid: None,
        })
    }

    fn check_token(&self, value: &str, now: i64) -> Result<Principal, AuthError> {
        // `USER@REALM!TOKENID=SECRET`, split on the last '=' as Proxmox does.
        let (tokenid, secret) = value.rsplit_once('=').ok_or(AuthError::BadToken)?;
        let (userid, _) = store::split_tokenid(tokenid).map_err(|_| AuthError::BadToken)?;
        let creds = self.store.load()?;
        let entry = creds.tokens.get(tokenid).ok_or(AuthError::BadToken)?;
        let presented = store::hash_token_secret(secret);
        if !ticket::constant_time_eq(presented.as_bytes(), entry.secret_sha256.as_bytes()) {
            return Err(AuthError::BadToken);
        }
        if entry.expire != 0 && entry.expire <= now {
            return Err(AuthError::BadToken);
        }
        if !self.user_enabled(userid)? {
            return Err(AuthError::BadToken);
        }
        Ok(Principal {
            userid: userid.to_string(),
            tokenid: Some(tokenid.to_string()),
        })
    }
}

/// Failure to set up the authenticator at agent start.
#[derive(Debug, thiserror::Error)]
pub enum AuthOpenError {
    #[error("failed to load the ticket signing key")]
    Key(#[from] TicketKeyError),
    #[error("failed to prepare the credential check")]
    Credentials(#[from] CredentialError),
}

/// Extracts `KEY=value` or `KEY value` from an Authorization header, URI-unescaped, as
/// Proxmox's header parser (`(?:^|\s)KEY(?:=| )([^;]*)`) does.
fn header_value(header: &str, key: &str) -> Option<String> {
    let mut search = header;
    loop {
        let pos = search.find(key)?;
        let before_ok = pos == 0
            || search[..pos]
                .chars()
                .next_back()
                .is_some_and(char::is_whitespace);
        let after = &search[pos + key.len()..];
        if before_ok {
            if let Some(rest) = after.strip_prefix('=').or_else(|| after.strip_prefix(' ')) {
                let value = rest.split(';').next().unwrap_or_default();
                return Some(percent_decode(value));
            }
        }
        search = after;
    }
}

/// Decodes `%XX` escapes (and nothing else).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing_matches_proxmox() {
        assert_eq!(
            header_value("PVEAPIToken=root@pam!ci=abc-def", "PVEAPIToken").as_deref(),
            Some("root@pam!ci=abc-def")
        );
        assert_eq!(
            header_value("PVEAPIToken root@pam!ci=abc", "PVEAPIToken").as_deref(),
            Some("root@pam!ci=abc")
        );
        assert_eq!(
            header_value("PVEAPIToken=root%40pam!ci=x", "PVEAPIToken").as_deref(),
            Some("root@pam!ci=x")
        );
        assert_eq!(header_value("XPVEAPIToken=a", "PVEAPIToken"), None);
    }

    #[test]
    fn token_and_ticket_flow() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::open(dir.path()).unwrap();
        let store = CredentialStore::new(dir.path());
        let secret = store.add_token("root@pam!ci", "").unwrap();
        let header = format!("PVEAPIToken=root@pam!ci={secret}");
        let p = auth.authenticate(Some(&header), None, None, false).unwrap();
        assert_eq!(p.userid, "root@pam");
        assert_eq!(p.display_name(), "root@pam!ci");
        assert!(auth
            .authenticate(Some("PVEAPIToken=root@pam!ci=wrong"), None, None, true)
            .is_err());

        assert!(matches!(
            auth.login("root@pam", None, "anything"),
            Err(AuthError::LoginFailed)
        ));
        store.set_user_password("alice@pve", "pw").unwrap();
        let login = auth.login("alice", Some("pve"), "pw").unwrap();
        assert_eq!(login.username, "alice@pve");
        let p = auth
            .authenticate(None, Some(&login.ticket), None, true)
            .unwrap();
        assert_eq!(p.userid, "alice@pve");
        assert!(matches!(
            auth.authenticate(None, Some(&login.ticket), None, false),
            Err(AuthError::BadCsrf)
        ));
        assert!(auth
            .authenticate(None, Some(&login.ticket), Some(&login.csrf_token), false)
            .is_ok());
        let renewed = auth.login("alice@pve", None, &login.ticket).unwrap();
        assert!(renewed.ticket.starts_with("PVE:alice@pve:"));
        assert!(auth.login("bob@pve", None, &login.ticket).is_err());
    }
}
