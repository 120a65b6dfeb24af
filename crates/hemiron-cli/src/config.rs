//! Where the CLI finds the server and its credential: flags, then `HEMIRON_SERVER` /
//! `HEMIRON_TOKEN`, then the file `hemiron login` writes (`$XDG_CONFIG_HOME/hemiron/cli.json`,
//! mode 0600, written atomically).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::CliError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// An API token secret.
    pub token: String,
}

/// The config file's path.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("HEMIRON_CLI_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hemiron").join("cli.json")
}

pub fn load() -> Option<Saved> {
    let text = std::fs::read_to_string(path()).ok()?;
    serde_json::from_str(&text).ok()
}

/// Saves the server and token, readable by the user only.
pub fn save(saved: &Saved) -> Result<PathBuf, CliError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let path = path();
    let dir = path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let fail =
        |e: std::io::Error| CliError::Config(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    let text = serde_json::to_string_pretty(saved).unwrap_or_default();
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(&path).map_err(|e| fail(e.error))?;
    Ok(path)
}
