#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Compatibility with a real Proxmox client: runs the proxmoxer script against an HTTPS agent.

mod common;

use std::process::Command;

use common::{guest_image, Agent};

#[test]
fn vm_proxmoxer_compat() {
    let agent = Agent::start_with(false, &[]);
    agent.add_user("alice@pve", "compat-password");
    let port = agent
        .url
        .trim_start_matches("https://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/proxmoxer_compat.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .env("HEMIRON_HOST", "127.0.0.1")
        .env("HEMIRON_PORT", &port)
        .env("HEMIRON_NODE", agent.node())
        .env("HEMIRON_IMAGE", guest_image())
        .env("HEMIRON_PASSWORD", "compat-password")
        .env("HEMIRON_TOKEN_NAME", "test")
        .env("HEMIRON_TOKEN_VALUE", &agent.token)
        .output()
        .expect("python3 (the test command installs proxmoxer)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "proxmoxer script failed:\n{stderr}");
    assert!(stdout.contains("all checks passed"));
}
