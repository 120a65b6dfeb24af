//! Request validation against the endpoint specs, with PVE's messages.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hemiron_pve::schema::Value;
use hemiron_pve::{endpoint, ParamErrors, ValidatedParams};

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create(pairs: &[(&str, &str)]) -> Result<ValidatedParams, ParamErrors> {
    let mut all = vec![("node", "pve1")];
    all.extend_from_slice(pairs);
    endpoint("POST", "/nodes/{node}/qemu")
        .expect("create endpoint")
        .validate(&params(&all))
}

fn errors(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    create(pairs).expect_err("should fail").errors
}

#[test]
fn typical_ansible_create_passes() {
    let v = create(&[
        ("vmid", "100"),
        ("name", "web-1"),
        ("memory", "2048"),
        ("cores", "2"),
        ("sockets", "1"),
        ("cpu", "x86-64-v2-AES"),
        ("net0", "virtio,bridge=vmbr0,firewall=1"),
        ("scsi0", "local-lvm:32,discard=on,iothread=1"),
        ("scsihw", "virtio-scsi-single"),
        ("ide2", "local-lvm:cloudinit"),
        ("ipconfig0", "ip=10.0.0.5/24,gw=10.0.0.1"),
        (
            "sshkeys",
            "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIB%20me%40host",
        ),
        ("ciuser", "admin"),
        ("boot", "order=scsi0;net0"),
        ("agent", "1"),
        ("onboot", "True"),
        ("start", "False"),
        ("efidisk0", "local-lvm:1,efitype=4m,pre-enrolled-keys=1"),
        ("tpmstate0", "local-lvm:1,version=v2.0"),
        ("tags", "web;prod"),
    ])
    .expect("valid");
    assert_eq!(v.get("vmid"), Some(&Value::Int(100)));
    assert_eq!(v.bool("onboot"), Some(true));
    assert_eq!(v.bool("start"), Some(false));
    assert_eq!(v.str("net0"), Some("virtio,bridge=vmbr0,firewall=1"));
    assert_eq!(v.int("cores"), Some(2));
}

#[test]
fn reports_every_problem_with_pve_messages() {
    let e = errors(&[
        ("vmid", "abc"),
        ("cores", "0"),
        ("cpulimit", "129"),
        ("ostype", "dos"),
        ("name", "not_a_dns_name"),
        ("bogus", "1"),
        ("onboot", "maybe"),
        ("startdate", "yesterday"),
        ("net0", "virtio,tag=abc"),
        ("force", "1"),
        ("net32", "virtio"),
        ("net01", "virtio"),
    ]);
    let expect = [
        ("vmid", "type check ('integer') failed - got 'abc'"),
        ("cores", "value must have a minimum value of 1"),
        ("cpulimit", "value must have a maximum value of 128"),
        (
            "ostype",
            "value 'dos' does not have a value in the enumeration 'other, wxp, w2k, w2k3, w2k8, wvista, win7, win8, win10, win11, l24, l26, solaris'",
        ),
        ("name", "invalid format - value does not look like a valid DNS name\n"),
        (
            "bogus",
            "property is not defined in schema and the schema does not allow additional properties",
        ),
        ("onboot", "type check ('boolean') failed - got 'maybe'"),
        ("startdate", "value does not match the regex pattern"),
        (
            "net0",
            "invalid format - format error\nnet0.tag: type check ('integer') failed - got 'abc'\n",
        ),
        ("archive", "missing property - 'force' requires this property"),
        (
            "net32",
            "property is not defined in schema and the schema does not allow additional properties",
        ),
        (
            "net01",
            "property is not defined in schema and the schema does not allow additional properties",
        ),
    ];
    for (k, msg) in expect {
        assert_eq!(e.get(k).map(String::as_str), Some(msg), "{k}");
    }
    assert_eq!(e.len(), expect.len(), "{e:#?}");
}

#[test]
fn missing_required_and_vmid_format() {
    let e = errors(&[]);
    assert_eq!(e["vmid"], "property is missing and it is not optional");
    let e = errors(&[("vmid", "99")]);
    assert_eq!(
        e["vmid"],
        "invalid format - value does not look like a valid VM ID\n"
    );
    let e = errors(&[("vmid", "1000000000")]);
    assert_eq!(
        e["vmid"],
        "invalid format - value does not look like a valid VM ID\n"
    );
}

#[test]
fn property_string_errors() {
    let e = errors(&[("vmid", "100"), ("net0", "bridge=vmbr0,foo=1")]);
    assert_eq!(
        e["net0"],
        "invalid format - invalid key in comma-separated list property: foo\n"
    );
    let e = errors(&[("vmid", "100"), ("scsi0", "local-lvm:32,cache=fast")]);
    assert_eq!(
        e["scsi0"],
        "invalid format - format error\nscsi0.cache: value 'fast' does not have a value in the enumeration 'none, writethrough, writeback, unsafe, directsync'\n"
    );
    let e = errors(&[("vmid", "100"), ("boot", "order=scsi0;floppy0")]);
    assert_eq!(
        e["boot"],
        "invalid format - format error\nboot.order: invalid format - invalid boot device 'floppy0'\n\n"
    );
    let e = errors(&[("vmid", "100"), ("ipconfig0", "gw=10.0.0.1")]);
    assert_eq!(
        e["ipconfig0"],
        "invalid format - format error\nipconfig0.ip: missing property - 'ipconfig0.gw' requires this property\n"
    );
    let e = errors(&[("vmid", "100"), ("cpu", "Skylake")]);
    assert_eq!(
        e["cpu"],
        "invalid format - Built-in cputype 'Skylake' is not defined (missing 'custom-' prefix?)\n"
    );
}

#[test]
fn config_update_lists_and_repeats() {
    let ep = endpoint("PUT", "/nodes/{node}/qemu/{vmid}/config").expect("endpoint");
    let base = [("node", "pve1"), ("vmid", "100")];
    let ok = |extra: &[(&str, &str)]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        ep.validate(&params(&all))
    };
    assert!(ok(&[("delete", "net1,ide2; tags")]).is_ok());
    // repeated form fields are joined with NUL, which -list formats split on
    assert!(ok(&[("delete", "net1"), ("delete", "ide2")]).is_ok());
    let e = ok(&[("delete", "net1,2bad")]).unwrap_err().errors;
    assert_eq!(
        e["delete"],
        "invalid format - invalid configuration ID '2bad'\n"
    );
    let e = ok(&[("cores", "1"), ("cores", "2")]).unwrap_err().errors;
    assert_eq!(e["cores"], "type check ('integer') failed - got '1\u{0}2'");
    let e = ok(&[("force", "1")]).unwrap_err().errors;
    assert_eq!(
        e["delete"],
        "missing property - 'force' requires this property"
    );
    let e = ok(&[("sshkeys", "ssh-rsa AAAA")]).unwrap_err().errors;
    assert_eq!(
        e["sshkeys"],
        "invalid format - invalid urlencoded string: ssh-rsa AAAA\n"
    );
    let e = ok(&[("digest", &"a".repeat(41))]).unwrap_err().errors;
    assert_eq!(e["digest"], "value may only be 40 characters long");
}

#[test]
fn other_endpoints() {
    let resize = endpoint("PUT", "/nodes/{node}/qemu/{vmid}/resize").expect("resize");
    let v = resize
        .validate(&params(&[
            ("node", "n"),
            ("vmid", "100"),
            ("disk", "scsi0"),
            ("size", "+10G"),
        ]))
        .expect("valid");
    assert_eq!(v.str("size"), Some("+10G"));
    let e = resize
        .validate(&params(&[
            ("node", "n"),
            ("vmid", "100"),
            ("disk", "scsi31"),
            ("size", "-1G"),
        ]))
        .unwrap_err()
        .errors;
    assert!(e["disk"]
        .starts_with("value 'scsi31' does not have a value in the enumeration 'ide0, ide1"));
    assert_eq!(e["size"], "value does not match the regex pattern");

    // Ansible sends `timeout` to suspend, which PVE's schema does not have.
    let suspend = endpoint("POST", "/nodes/{node}/qemu/{vmid}/status/suspend").expect("suspend");
    let e = suspend
        .validate(&params(&[
            ("node", "n"),
            ("vmid", "100"),
            ("todisk", "0"),
            ("timeout", "30"),
        ]))
        .unwrap_err()
        .errors;
    assert!(e.contains_key("timeout"));

    let ticket = endpoint("POST", "/access/ticket").expect("ticket");
    assert!(ticket
        .validate(&params(&[("username", "root@pam"), ("password", "secret")]))
        .is_ok());
    let tasks = endpoint("GET", "/nodes/{node}/tasks").expect("tasks");
    assert!(tasks
        .validate(&params(&[
            ("node", "n"),
            ("statusfilter", "ok,error"),
            ("source", "all")
        ]))
        .is_ok());
    let status = endpoint("GET", "/nodes/{node}/tasks/{upid}/status").expect("status");
    assert!(status
        .validate(&params(&[
            ("node", "n"),
            (
                "upid",
                "UPID:n:00000001:00000002:00000003:qmstart:100:root@pam:"
            )
        ]))
        .is_ok());
}

#[test]
fn errors_serialize_in_pve_shape() {
    let e = create(&[("vmid", "x")]).unwrap_err();
    let json = serde_json::to_value(&e).expect("json");
    assert_eq!(json["vmid"], "type check ('integer') failed - got 'x'");
    assert_eq!(e.to_string(), "Parameter verification failed.");
}

#[test]
fn validate_takes_flat_or_grouped_specs() {
    use hemiron_pve::schema::ParamSpec;
    let flat = [ParamSpec::integer("n").min(1)];
    let e = hemiron_pve::validate(&flat[..], &params(&[("n", "0")])).unwrap_err();
    let msgs: Vec<(String, String)> = e.into_iter().collect();
    assert_eq!(
        msgs,
        [(
            "n".to_string(),
            "value must have a minimum value of 1".to_string()
        )]
    );
    let ep = endpoint("GET", "/nodes/{node}/status").expect("status");
    assert!(hemiron_pve::validate(ep.params, &params(&[("node", "pve1")])).is_ok());
}
