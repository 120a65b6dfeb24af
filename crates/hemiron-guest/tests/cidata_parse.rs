//! Runs the guest's cloud-init seed reader (`/etc/hemiron/cloudinit/parse` and its awk
//! programs, taken from the built initramfs) on the build host with the image's own busybox:
//! seeds exactly as Proxmox VE writes them, YAML variations, and hostile content, which must
//! be validated away and never executed. No VM needed.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shipped reader with busybox and a link for each applet, as in the guest.
struct Reader {
    dir: tempfile::TempDir,
}

impl Reader {
    fn new() -> Reader {
        let image = common::image(true);
        let initrd = common::read_initramfs(&image.dir.join(hemiron_guest::INITRD_FILE));
        let dir = tempfile::tempdir().unwrap();
        common::unpack(&initrd, dir.path(), |p| {
            p == "bin/busybox" || p.starts_with("etc/hemiron/cloudinit/")
        });
        let busybox = dir.path().join("bin/busybox");
        let list = Command::new(&busybox).arg("--list").output().unwrap();
        let applets = dir.path().join("applets");
        std::fs::create_dir(&applets).unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink(&busybox, applets.join(applet)).unwrap();
            }
        }
        Reader { dir }
    }

    /// Runs the reader on a seed of (file name, contents) and returns every file it wrote,
    /// by path relative to its output directory.
    fn read(&self, seed: &[(&str, &str)]) -> BTreeMap<String, String> {
        let work = tempfile::tempdir().unwrap();
        let seed_dir = work.path().join("seed");
        std::fs::create_dir(&seed_dir).unwrap();
        for (name, contents) in seed {
            std::fs::write(seed_dir.join(name), contents).unwrap();
        }
        let out_dir = work.path().join("out");
        let out = Command::new(self.dir.path().join("applets/sh"))
            .arg(self.dir.path().join("etc/hemiron/cloudinit/parse"))
            .arg(&seed_dir)
            .arg(&out_dir)
            .env_clear()
            .env("PATH", self.dir.path().join("applets"))
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "parse failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "parse complained: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files = BTreeMap::new();
        collect(&out_dir, &out_dir, &mut files);
        // Whatever the seed said, nothing was created outside the output directory.
        let mut stray: Vec<PathBuf> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        stray.retain(|p| p != &seed_dir && p != &out_dir);
        assert!(stray.is_empty(), "the seed made files: {stray:?}");
        files
    }

    fn busybox(&self) -> PathBuf {
        self.dir.path().join("bin/busybox")
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            files.insert(rel, std::fs::read_to_string(&path).unwrap());
        }
    }
}

const PROXMOX_USER_DATA: &str = "#cloud-config
hostname: web1
manage_etc_hosts: true
fqdn: web1.example.com
user: alice
password: $6$rounds=5000$abcdefgh$R2mXq6dN/1b1pJwBXm0x9v1Lh1p6EV0x5wH2j3sZx3Q6vS4nE5zdF1uX3hJr2Y6pK7m8n9o0q1r2s3t4u5v6w.
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk alice@laptop
  - ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC bob
chpasswd:
  expire: False
users:
  - default
package_upgrade: true
";

const PROXMOX_NETWORK_CONFIG: &str = "version: 1
config:
    - type: physical
      name: eth0
      mac_address: 'bc:24:11:aa:bb:cc'
      subnets:
      - type: static
        address: '10.0.2.15'
        netmask: '255.255.255.0'
        gateway: '10.0.2.2'
    - type: physical
      name: eth1
      mac_address: 'bc:24:11:aa:bb:cd'
      subnets:
      - type: dhcp4
    - type: nameserver
      address:
      - '10.0.2.3'
      search:
      - 'example.com'
";

const INSTANCE: &str = "instance-id: 5b0c4f3f0e8a7d6c5b4a39281706f5e4d3c2b1a0\n";

#[test]
fn reads_a_seed_as_proxmox_writes_it() {
    let files = Reader::new().read(&[
        ("user-data", PROXMOX_USER_DATA),
        ("meta-data", INSTANCE),
        ("network-config", PROXMOX_NETWORK_CONFIG),
        ("vendor-data", ""),
    ]);
    let expected: BTreeMap<String, String> = [
        ("instance-id", "5b0c4f3f0e8a7d6c5b4a39281706f5e4d3c2b1a0\n"),
        ("hostname", "web1\n"),
        ("fqdn", "web1.example.com\n"),
        ("user", "alice\n"),
        (
            "password",
            "$6$rounds=5000$abcdefgh$R2mXq6dN/1b1pJwBXm0x9v1Lh1p6EV0x5wH2j3sZx3Q6vS4nE5zdF1uX3hJr2Y6pK7m8n9o0q1r2s3t4u5v6w.\n",
        ),
        (
            "authorized_keys",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk alice@laptop\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC bob\n",
        ),
        ("net/bc:24:11:aa:bb:cc", "static 10.0.2.15/24 10.0.2.2\n"),
        ("net/bc:24:11:aa:bb:cd", "dhcp4\n"),
        ("resolv.conf", "search example.com\nnameserver 10.0.2.3\n"),
        ("log", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(files, expected);
}

#[test]
fn defaults_when_the_seed_says_little() {
    // No user, password, keys or network-config: the default user, locked, no keys, and
    // every interface keeps DHCP. The hostname may come from meta-data alone.
    let files = Reader::new().read(&[
        ("user-data", "#cloud-config\nchpasswd:\n  expire: False\n"),
        (
            "meta-data",
            "instance-id: iid-local01\nlocal-hostname: db7\n",
        ),
    ]);
    assert_eq!(files["instance-id"], "iid-local01\n");
    assert_eq!(files["hostname"], "db7\n");
    assert_eq!(files["user"], "hemiron\n");
    assert_eq!(files["authorized_keys"], "");
    assert_eq!(files["log"], "");
    for absent in ["password", "fqdn", "resolv.conf"] {
        assert!(!files.contains_key(absent), "{absent}: {files:?}");
    }
    assert!(!files.keys().any(|k| k.starts_with("net/")), "{files:?}");
}

#[test]
fn a_plain_text_password_is_stored_hashed() {
    let reader = Reader::new();
    let files = reader.read(&[
        (
            "user-data",
            "#cloud-config\nuser: bob\npassword: 'pa ss:word'\n",
        ),
        ("meta-data", INSTANCE),
    ]);
    let hash = files["password"].trim().to_string();
    assert!(hash.starts_with("$6$"), "{hash}");
    let salt = hash.split('$').nth(2).unwrap();
    let again = Command::new(reader.busybox())
        .args(["mkpasswd", "-m", "sha512", "-S", salt, "pa ss:word"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), hash);
}

#[test]
fn yaml_variations_of_the_same_settings() {
    // CRLF line endings, comments, a document marker, other quoting and indentation, a
    // prefix length instead of a netmask, upper-case MACs, `dhcp` for `dhcp4`, IPv6, DNS on
    // a subnet, a block scalar whose lines look like keys, and a repeated key (the last wins).
    let user_data = "#cloud-config\r\n---\r\nhostname: first # replaced below\r\nuser: \"carol\"\r\nssh_authorized_keys:\r\n- 'ssh-ed25519 AAAAkey1 it''s carol'\r\n-   \"ssh-ed25519 AAAAkey2 q\\\"uote\"\r\nwrite_files:\r\n  - path: /etc/x\r\n    content: |\r\n      hostname: evil\r\n      user: mallory\r\nruncmd: [ ls ]\r\nhostname: web3\r\n";
    let network = "version: 1\nconfig:\n  - type: physical\n    name: ens18\n    mac_address: BC:24:11:00:00:0A\n    subnets:\n      - type: static\n        address: 192.168.7.9/25\n        gateway: 192.168.7.1\n        dns_nameservers:\n          - 192.168.7.1\n      - type: static6\n        address: fd00:1::9/64\n        gateway: fd00:1::1\n  - type: physical\n    name: ens19\n    mac_address: \"bc:24:11:00:00:0b\"\n    subnets:\n      - type: dhcp\n      - type: ipv6_slaac\n  - type: nameserver\n    address: ['9.9.9.9']\n    search:\n      - lan\n";
    let files = Reader::new().read(&[
        ("user-data", user_data),
        ("meta-data", "instance-id: 'iid-3'\r\n"),
        ("network-config", network),
    ]);
    assert_eq!(files["instance-id"], "iid-3\n");
    assert_eq!(files["hostname"], "web3\n");
    assert_eq!(files["user"], "carol\n");
    assert_eq!(
        files["authorized_keys"],
        "ssh-ed25519 AAAAkey1 it's carol\nssh-ed25519 AAAAkey2 q\"uote\n"
    );
    assert_eq!(
        files["net/bc:24:11:00:00:0a"],
        "static 192.168.7.9/25 192.168.7.1\nstatic6 fd00:1::9/64 fd00:1::1\n"
    );
    assert_eq!(files["net/bc:24:11:00:00:0b"], "dhcp4\nslaac\n");
    // The flow sequence `['9.9.9.9']` is outside the subset: left out, not misread.
    assert_eq!(files["resolv.conf"], "search lan\nnameserver 192.168.7.1\n");
}

#[test]
fn hostile_or_broken_values_are_dropped_and_never_run() {
    let user_data = "#cloud-config\nhostname: $(touch pwned-hostname)\nfqdn: '`touch pwned-fqdn`'\nuser: \"root; touch pwned-user\"\npassword: \"$6$x$y:0:0::/:/bin/sh\"\nssh_authorized_keys:\n  - ssh-ed25519 AAAA $(touch pwned-key)\n";
    let network = "version: 1\nconfig:\n    - type: physical\n      mac_address: '$(touch pwned-mac)'\n      subnets:\n      - type: static\n        address: '10.0.2.15; touch pwned-addr'\n        netmask: '255.255.255.0'\n    - type: physical\n      mac_address: 'bc:24:11:aa:bb:cc'\n      subnets:\n      - type: static\n        address: '10.0.2.300'\n        netmask: '255.0.255.0'\n      - type: static\n        address: '10.0.2.16'\n        netmask: '255.255.0.255'\n      - type: static\n        address: '10.0.2.17'\n        netmask: '255.255.255.0'\n        gateway: '$(reboot)'\n      - type: manual\n    - type: bond\n      name: bond0\n    - type: nameserver\n      address:\n      - '1.1.1.1; touch pwned-ns'\n      search:\n      - '$(touch pwned-search)'\n";
    let files = Reader::new().read(&[
        ("user-data", user_data),
        ("meta-data", "instance-id: ../../etc/passwd\n"),
        ("network-config", network),
    ]);
    assert!(!files.contains_key("hostname"));
    assert!(!files.contains_key("fqdn"));
    assert_eq!(files["user"], "hemiron\n", "an invalid user name");
    assert!(
        !files.contains_key("password"),
        "a colon would forge shadow fields"
    );
    // A key line is only ever written to a file, verbatim.
    assert_eq!(
        files["authorized_keys"],
        "ssh-ed25519 AAAA $(touch pwned-key)\n"
    );
    // An odd instance-id is replaced by a digest of the seed.
    assert!(files["instance-id"].starts_with("seed-"), "{files:?}");
    assert_eq!(files["instance-id"].trim().len(), 5 + 40);
    // Only the valid address and the interface with a valid MAC remain.
    let nets: Vec<&String> = files.keys().filter(|k| k.starts_with("net/")).collect();
    assert_eq!(nets, ["net/bc:24:11:aa:bb:cc"]);
    assert_eq!(files["net/bc:24:11:aa:bb:cc"], "static 10.0.2.17/24\n");
    assert!(!files.contains_key("resolv.conf"));
    let log = &files["log"];
    for expected in [
        "invalid hostname",
        "invalid fqdn",
        "invalid user name",
        "password hash has invalid characters",
        "instance-id",
        "without a valid mac_address",
        "invalid static address 10.0.2.300",
        "invalid static address 10.0.2.16",
        "invalid gateway",
        "subnet type manual is not supported",
        "interface type bond is not supported",
        "invalid nameserver",
        "invalid search domain",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
}

#[test]
fn network_config_version_2_is_reported_not_applied() {
    let files = Reader::new().read(&[
        ("user-data", "#cloud-config\nhostname: v2\n"),
        ("meta-data", INSTANCE),
        (
            "network-config",
            "version: 2\nethernets:\n    net0:\n        match:\n            macaddress: \"bc:24:11:aa:bb:cc\"\n        dhcp4: true\n",
        ),
    ]);
    assert!(!files.keys().any(|k| k.starts_with("net/")));
    assert!(
        files["log"].contains("version 2 is not supported"),
        "{files:?}"
    );
}
