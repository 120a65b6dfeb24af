//! The host's OpenSSH client (Debian package openssh-client) against a test VM's forwarded
//! SSH port: key pairs, logins, host keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An ed25519 key pair made by `ssh-keygen` in `dir`; returns (private key path, public key).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs (apt-get install openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

const OPTIONS: &[&str] = &[
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "LogLevel=ERROR",
];

/// `ssh -p PORT -i KEY USER@127.0.0.1 COMMAND`, key authentication only.
pub fn run_with_key(port: u16, key: &Path, user: &str, command: &str) -> Output {
    Command::new("ssh")
        .args(OPTIONS)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .expect("ssh runs (apt-get install openssh-client)")
}

/// `ssh` with password authentication only, the password handed over by an askpass
/// program (`SSH_ASKPASS_REQUIRE=force`, OpenSSH ≥ 8.4), so no terminal nor sshpass is needed.
pub fn run_with_password(
    port: u16,
    dir: &Path,
    user: &str,
    password: &str,
    command: &str,
) -> Output {
    let askpass = dir.join("askpass");
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\nprintf '%s\\n' '{}'\n",
            password.replace('\'', "'\\''")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    Command::new("ssh")
        .args(OPTIONS)
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
        ])
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::null())
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .expect("ssh runs (apt-get install openssh-client)")
}

/// Whether an ssh run failed because the server refused the credentials (as opposed to the
/// server not being up yet).
pub fn refused(out: &Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied")
}

/// The server's host keys of `types` (e.g. `ed25519`, `ecdsa`) as `ssh-keyscan` prints them,
/// without the host part, sorted; a type the server did not answer for is left out. One
/// scan per type: keyscan's parallel connections can outrun a slow guest.
pub fn host_keys(port: u16, types: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for t in types {
        let out = Command::new("ssh-keyscan")
            .args(["-T", "10", "-t", t, "-p"])
            .arg(port.to_string())
            .arg("127.0.0.1")
            .output()
            .expect("ssh-keyscan runs (apt-get install openssh-client)");
        keys.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(' ').map(|(_, key)| key.to_string())),
        );
    }
    keys.sort();
    keys
}
