#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The command-line client against a real server: login keeps a token, tables and JSON,
//! and exit codes scripts can use.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::control::{Backend, Server, ADMIN_PASSWORD};

fn cli(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(common::hemiron())
        .args(args)
        .env("HEMIRON_CLI_CONFIG", config)
        .env_remove("HEMIRON_SERVER")
        .env_remove("HEMIRON_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn login_tables_json_and_exit_codes() {
    let server = Server::start(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.json");

    // Without a login there is no server to talk to: 7.
    let o = cli(&config, &["vps", "list"], None);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // A wrong password: 3.
    let o = cli(
        &config,
        &["login", "--server", &server.url, "--username", "admin"],
        Some("wrong\n"),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = cli(
        &config,
        &["login", "--server", &server.url, "--username", "admin"],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", text(&o));
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("hmt_"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let o = cli(
        &config,
        &[
            "tenant",
            "create",
            "acme",
            "--vcpus",
            "4",
            "--memory-mib",
            "4096",
            "--disk-gib",
            "20",
            "--vms",
            "2",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&config, &["tenant", "list"], None);
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.starts_with("ID") && table.contains("acme") && table.contains("0/2"),
        "{table}"
    );
    let o = cli(&config, &["tenant", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"][0]["name"], "acme");

    // A user made with its password on stdin, then a duplicate: refused, 5.
    let o = cli(
        &config,
        &[
            "user", "create", "bob", "--role", "member", "--tenant", "acme",
        ],
        Some("bob-password-12\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(
        &config,
        &[
            "user", "create", "bob", "--role", "member", "--tenant", "acme",
        ],
        Some("bob-password-12\n"),
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    // Not found: 4.
    let o = cli(&config, &["vps", "show", "nope"], None);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // A scoped token, then revoked: the revoked token is refused, 3.
    let o = cli(
        &config,
        &["token", "create", "ro", "--scopes", "read:vps"],
        None,
    );
    let secret = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(secret.starts_with("hmt_"), "{}", text(&o));
    let o = cli(
        &config,
        &[
            "--token",
            &secret,
            "--server",
            &server.url,
            "tenant",
            "create",
            "x",
            "--vcpus",
            "1",
            "--memory-mib",
            "1",
            "--disk-gib",
            "1",
            "--vms",
            "1",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = cli(&config, &["token", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ro")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = cli(&config, &["token", "revoke", &id], None);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(
        &config,
        &["--token", &secret, "--server", &server.url, "vps", "list"],
        None,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}
