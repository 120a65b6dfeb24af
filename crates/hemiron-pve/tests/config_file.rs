//! The qemu-server config file format.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hemiron_pve::config::{self, ParseConfigErrorKind, VmConfig, WriteConfigError};

const SAMPLE: &str = "\
#Web server%3A production
#
#second paragraph
agent: 1
boot: order=scsi0;net0
cores: 2
ide2: local-lvm:vm-100-cloudinit,media=cdrom
memory: 2048
name: web-1
net0: virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1
parent: before-upgrade
scsi0: local-lvm:vm-100-disk-0,iothread=1,size=32G
scsihw: virtio-scsi-single
sshkeys: ssh-ed25519%20AAAA%20me%40host
vmgenid: 7b3d8f2a-1c4e-4b6a-9f2d-3e5c7a9b1d0f

[PENDING]
delete: !net1,tags
memory: 4096

[special:cloudinit]
ipconfig0: ip=dhcp
name: web-1

[before-upgrade]
#snapshot before the upgrade
memory: 2048
snapstate: prepare
snaptime: 1700000000
vmstate: local-lvm:vm-100-state-before-upgrade
";

#[test]
fn parses_all_sections() {
    let conf = config::parse(SAMPLE).expect("parse");
    assert_eq!(
        conf.main.description.as_deref(),
        Some("Web server: production\n\nsecond paragraph")
    );
    assert_eq!(conf.get("memory"), Some("2048"));
    assert_eq!(conf.parent(), Some("before-upgrade"));
    let pending = conf.pending.as_ref().expect("pending");
    assert_eq!(pending.section.props["memory"], "4096");
    assert_eq!(pending.delete.get("net1"), Some(&true));
    assert_eq!(pending.delete.get("tags"), Some(&false));
    assert_eq!(conf.special["cloudinit"].props["ipconfig0"], "ip=dhcp");
    let snap = &conf.snapshots["before-upgrade"];
    assert_eq!(
        snap.description.as_deref(),
        Some("snapshot before the upgrade")
    );
    assert_eq!(snap.props["snapstate"], "prepare");
}

#[test]
fn print_reproduces_pve_output() {
    let conf = config::parse(SAMPLE).expect("parse");
    assert_eq!(config::print(&conf), SAMPLE);
    assert_eq!(config::write(&conf).expect("write"), SAMPLE);
    assert_eq!(config::digest(SAMPLE.as_bytes()).len(), 40);
}

#[test]
fn normalises_like_check_type() {
    let conf =
        config::parse("onboot: yes\ncores: 004\nname: \"quoted\"\ncdrom: none,media=cdrom\n")
            .expect_err("name has a format");
    assert!(matches!(conf.kind, ParseConfigErrorKind::CheckValue { ref key, .. } if key == "name"));
    let conf = config::parse(
        "onboot: yes\ncores: 004\nsearchdomain: \"example.com\"\ncdrom: none,media=cdrom\n",
    )
    .expect("parse");
    assert_eq!(conf.get("onboot"), Some("1"));
    assert_eq!(conf.get("cores"), Some("4"));
    assert_eq!(conf.get("searchdomain"), Some("example.com"));
    assert_eq!(conf.get("ide2"), Some("none,media=cdrom"));
    assert_eq!(
        config::print(&conf),
        "cores: 4\nide2: none,media=cdrom\nonboot: 1\nsearchdomain: example.com\n"
    );
}

#[test]
fn errors_carry_line_numbers() {
    let err = config::parse("memory: 512\n\nbogus line\n").unwrap_err();
    assert_eq!(err.line, 3);
    assert_eq!(
        err.to_string(),
        "line 3: unable to parse config: bogus line"
    );
    let err = config::parse("memory: 512\ndelete: net0\n").unwrap_err();
    assert_eq!(err.kind, ParseConfigErrorKind::DeleteOutsidePending);
    let err = config::parse("cores: many\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1: unable to parse value of 'cores' - type check ('integer') failed - got 'many'\n"
    );
    let err = config::parse("foo: bar\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1: unable to parse value of 'foo' - unknown setting 'foo'\n"
    );
    let err = config::parse("[snap1]\n[snap1]\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert_eq!(
        err.kind,
        ParseConfigErrorKind::DuplicateSnapshot("snap1".into())
    );
}

#[test]
fn lenient_mode_skips_like_pve() {
    let (conf, errors) = config::parse_lenient(
        "memory: 512\ncores: x\n[weird section!]\nname: skipped\n[snap]\nmemory: 256\n",
    );
    assert_eq!(errors.len(), 2);
    assert_eq!(conf.get("memory"), Some("512"));
    assert_eq!(conf.get("cores"), None);
    assert_eq!(conf.snapshots["snap"].props["memory"], "256");
    assert!(!conf.main.props.contains_key("name"));
}

#[test]
fn description_quirks() {
    // An empty pending description is written as a bare `#`.
    let conf = config::parse("memory: 512\n\n[PENDING]\n#\ncores: 2\n").expect("parse");
    let pending = conf.pending.as_ref().expect("pending");
    assert_eq!(pending.section.description.as_deref(), Some(""));
    assert_eq!(
        config::print(&conf),
        "memory: 512\n\n[PENDING]\n#\ncores: 2\n"
    );
    // `description:` lines are read too; PVE writes comments.
    let conf = config::parse("description: a%3Ab\nmemory: 512\n").expect("parse");
    assert_eq!(conf.main.description.as_deref(), Some("a:b"));
    assert_eq!(config::print(&conf), "#a%3Ab\nmemory: 512\n");
    // PVE does not escape '%', so `%41` reads back as `A`.
    let mut conf = VmConfig::default();
    conf.main.description = Some("100%41".into());
    assert_eq!(config::print(&conf), "#100%41\n");
    assert_eq!(
        config::parse(&config::print(&conf))
            .expect("parse")
            .main
            .description
            .as_deref(),
        Some("100A")
    );
}

#[test]
fn write_applies_write_vm_config_rules() {
    let mut conf = VmConfig::default();
    let props = &mut conf.main.props;
    props.insert("smp".into(), "4".into());
    props.insert("cores".into(), "2".into());
    props.insert("onboot".into(), "true".into());
    props.insert(
        "scsi0".into(),
        "local:100/vm-100-disk-1.qcow2,size=8G".into(),
    );
    props.insert("unused0".into(), "local:100/vm-100-disk-1.qcow2".into());
    props.insert("unused1".into(), "local:100/vm-100-disk-2.qcow2".into());
    props.insert("snapstate".into(), "delete".into());
    assert_eq!(
        config::write(&conf).expect("write"),
        "onboot: 1\nscsi0: local:100/vm-100-disk-1.qcow2,size=8G\nsockets: 4\nunused1: local:100/vm-100-disk-2.qcow2\n"
    );
    conf.main
        .props
        .insert("cdrom".into(), "none,media=cdrom".into());
    conf.main
        .props
        .insert("ide2".into(), "none,media=cdrom".into());
    assert_eq!(config::write(&conf), Err(WriteConfigError::MergeCdrom));
}

#[test]
fn cloudinit_section_needs_a_cloudinit_drive() {
    let conf = config::parse("memory: 512\n\n[special:cloudinit]\nname: x\n").expect("parse");
    assert_eq!(config::print(&conf), "memory: 512\n");
}
