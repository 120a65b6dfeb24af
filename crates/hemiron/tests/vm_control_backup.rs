#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Backups through the control plane, on a real node agent and a real VM: a backup, a
//! change, a restore that brings the data back; the plan's number of backups; deletion; and
//! schedules on a clock running thousands of times fast (`HEMIRON_TEST_CLOCK`), whose
//! retention keeps what Proxmox's rule keeps in the schedule's zone, and whose runs missed
//! while the server was down run once when it starts. Named `vm_*` so nextest runs them alone.

mod common;

use std::time::Duration;

use common::control::{Backend, Client, Server};
use common::{create_vm, wait_for, wait_guest, Agent};
use serde_json::{json, Value};

/// Where the marker goes on the guest's disk, in sectors of 512 bytes: the last MiB of the
/// 1 GiB disk, past the boot partition (which the restored VM boots from again).
const SECTOR: u32 = 2_097_152 - 2048;
/// The VPS's disk (`scsi0`, as the template has it).
const DISK: &str = "/dev/sda";

fn wait_job(client: &Client, job: &Value) -> Value {
    let id = job["id"].as_str().unwrap().to_string();
    wait_for("job to finish", Duration::from_secs(300), || {
        let j = client.get(&format!("/jobs/{id}")).expect(200);
        matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(j)
    })
}

/// An agent with template `guest`, a server (with `env`) that knows it, tenant `acme` and
/// plan `tiny` keeping `backups` backups per VPS.
fn setup(env: &[(&str, &str)], backups: u32) -> (Agent, Server, String) {
    let agent = Agent::start_named("n1", false, &[]);
    let api = agent.api();
    create_vm(&api, "n1", 9000, &[("name", "guest")]);
    api.task_ok("n1", "POST", "/nodes/n1/qemu/9000/template", &[]);
    let server = Server::start_in_env(
        tempfile::tempdir().unwrap(),
        None,
        Backend::Sqlite,
        &[],
        env,
    );
    let admin = server.admin();
    let fp = api.get("/nodes", &[]).ok()[0]["ssl_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    admin
        .post(
            "/clusters",
            &json!({"name": "c1", "endpoint": agent.url.trim(), "token_id": "root@pam!test",
                    "token_secret": agent.token, "fingerprint": fp}),
        )
        .expect(201);
    let tenant = admin
        .post("/tenants", &json!({"name": "acme", "quota": {"vcpus": 4, "memory_mib": 1024, "disk_gib": 10, "vms": 2}}))
        .expect(201);
    admin
        .post(
            "/plans",
            &json!({"name": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "backups": backups}),
        )
        .expect(201);
    (agent, server, tenant["id"].as_str().unwrap().to_string())
}

/// VPS `name`, running, with its guest answering; returns it.
fn running_vps(server: &Server, admin: &Client, tid: &str, name: &str) -> Value {
    let made = admin
        .post(
            "/vps",
            &json!({"name": name, "plan": "tiny", "template": "guest", "tenant_id": tid,
                    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBackBackBackBackBackBackBackBack t"]}),
        )
        .expect(201);
    let job = wait_job(admin, &made["job"]);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", server.output());
    let vps = admin
        .get(&format!("/vps/{}", made["id"].as_str().unwrap()))
        .expect(200);
    wait_guest(vps["web_address"].as_str().unwrap());
    vps
}

fn hemiron_cli(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(common::hemiron())
        .args(["--server", &server.url, "--token", token])
        .args(args)
        .env("HEMIRON_CLI_CONFIG", "/nonexistent/cli.json")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn cli(server: &Server, token: &str, args: &[&str]) -> String {
    let (ok, text) = hemiron_cli(server, token, args);
    assert!(ok, "{args:?}: {text}\n{}", server.output());
    text
}

fn cli_fails(server: &Server, token: &str, args: &[&str]) -> String {
    let (ok, text) = hemiron_cli(server, token, args);
    assert!(!ok, "{args:?} should fail: {text}");
    text
}

/// The node's backup archives of `vmid`.
fn archives(agent: &Agent, vmid: u64) -> Vec<String> {
    agent
        .api()
        .get(
            "/nodes/n1/storage/local/content",
            &[("content", "backup"), ("vmid", &vmid.to_string())],
        )
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["volid"].as_str().unwrap().to_string())
        .collect()
}

fn backups(client: &Client, id: &str) -> Vec<Value> {
    client
        .get(&format!("/vps/{id}/backups"))
        .expect(200)
        .as_array()
        .unwrap()
        .clone()
}

/// Backs the VPS up and waits; returns the backup.
fn backup_now(server: &Server, client: &Client, id: &str) -> Value {
    let r = client
        .post(&format!("/vps/{id}/backups"), &json!({"notes": "by hand"}))
        .expect(202);
    assert_eq!(r["backup"]["state"], "creating", "{r}");
    let job = wait_job(client, &r["job"]);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", server.output());
    let b = client
        .get(&format!(
            "/vps/{id}/backups/{}",
            r["backup"]["id"].as_str().unwrap()
        ))
        .expect(200);
    assert_eq!(b["state"], "available", "{b}");
    b
}

/// Restarts the server with `HEMIRON_TEST_CRASH_AT=point`, starts a job with `start`, waits
/// for the server to die there, starts it again without the hook and waits for the job to
/// succeed; returns a client of the new server.
fn crash_at(server: &mut Server, point: &str, start: impl FnOnce(&Client) -> Value) -> Client {
    server.kill9();
    server.env = vec![("HEMIRON_TEST_CRASH_AT".into(), point.into())];
    server.launch();
    let job = start(&server.admin());
    server.wait_exit();
    server.env.clear();
    server.launch();
    let admin = server.admin();
    let j = wait_job(&admin, &job);
    assert_eq!(j["state"], "succeeded", "{point}: {j}\n{}", server.output());
    admin
}

#[test]
fn vm_vps_backup_restore_delete_within_the_plan() {
    let (agent, mut server, tid) = setup(&[], 2);
    let mut admin = server.admin();
    let vps = running_vps(&server, &admin, &tid, "web1");
    let id = vps["id"].as_str().unwrap().to_string();
    let vmid = vps["vmid"].as_u64().unwrap();
    let web = vps["web_address"].as_str().unwrap().to_string();

    common::write_disk_marker_on(&web, DISK, SECTOR, "BEFORE");
    let started = std::time::Instant::now();
    let first = backup_now(&server, &admin, &id);
    eprintln!("a backup of a running 1 GiB VPS: {:?}", started.elapsed());
    let volid = first["volid"].as_str().unwrap();
    assert!(
        volid.starts_with(&format!("local:backup/vzdump-qemu-{vmid}-")),
        "{first}"
    );
    assert!(first["size_bytes"].as_i64().unwrap() > 0, "{first}");
    assert_eq!(first["mode"], "snapshot");
    assert!(first.get("schedule_id").is_none(), "{first}");
    assert_eq!(archives(&agent, vmid), [volid.to_string()]);

    common::write_disk_marker_on(&web, DISK, SECTOR, "AFTER");
    let second = backup_now(&server, &admin, &id);
    // The plan keeps two: a third is refused, and nothing is queued.
    admin
        .post(&format!("/vps/{id}/backups"), &json!({}))
        .problem(409, "quota-exceeded");
    admin
        .post(&format!("/vps/{id}/backups"), &json!({"mode": "sideways"}))
        .problem(422, "invalid-request");
    assert_eq!(backups(&admin, &id).len(), 2);

    // Restore the first: the data of its instant, the VPS running again, same VM.
    let job = admin
        .post(
            &format!(
                "/vps/{id}/backups/{}/restore",
                first["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .expect(202);
    let j = wait_job(&admin, &job);
    assert_eq!(j["state"], "succeeded", "{j}\n{}", server.output());
    let after = admin.get(&format!("/vps/{id}")).expect(200);
    assert_eq!(
        (after["state"].as_str(), after["vmid"].as_u64()),
        (Some("running"), Some(vmid)),
        "{after}"
    );
    let web = after["web_address"].as_str().unwrap().to_string();
    wait_guest(&web);
    assert_eq!(common::read_disk_marker_on(&web, DISK, SECTOR), "BEFORE");
    let cfg = agent
        .api()
        .get(&format!("/nodes/n1/qemu/{vmid}/config"), &[])
        .ok();
    assert_eq!(cfg["memory"].to_string().trim_matches('"'), "128", "{cfg}");

    // Delete the second (If-Match: its ETag): its archive goes, and there is room again.
    let path = format!("/vps/{id}/backups/{}", second["id"].as_str().unwrap());
    let etag = admin.get(&path).etag();
    admin.delete(&path, "\"999\"").problem(412, "stale-version");
    let job = admin.delete(&path, &etag).expect(202);
    assert_eq!(wait_job(&admin, &job)["state"], "succeeded");
    admin.get(&path).problem(404, "not-found");
    assert_eq!(archives(&agent, vmid), [volid.to_string()]);

    // The server killed while vzdump runs, then while a restore runs: started again, each
    // job finishes, with one archive made and the restored data.
    admin = crash_at(&mut server, "vps.backup:dumping", |admin| {
        admin
            .post(&format!("/vps/{id}/backups"), &json!({}))
            .expect(202)["job"]
            .clone()
    });
    assert_eq!(backups(&admin, &id).len(), 2);
    assert_eq!(archives(&agent, vmid).len(), 2, "one archive per backup");
    common::write_disk_marker_on(&web, DISK, SECTOR, "LATER");
    admin = crash_at(&mut server, "vps.restore:restoring", |admin| {
        admin
            .post(
                &format!(
                    "/vps/{id}/backups/{}/restore",
                    first["id"].as_str().unwrap()
                ),
                &json!({}),
            )
            .expect(202)
    });
    let web = admin.get(&format!("/vps/{id}")).expect(200)["web_address"]
        .as_str()
        .unwrap()
        .to_string();
    wait_guest(&web);
    assert_eq!(common::read_disk_marker_on(&web, DISK, SECTOR), "BEFORE");

    // The command line: the list, the plan's refusal, a deletion, a backup, schedules.
    let token = admin.bearer.clone().unwrap();
    let list = cli(&server, &token, &["vps", "backups", "web1"]);
    assert!(
        list.contains("manual") && list.contains("available"),
        "{list}"
    );
    assert_eq!(list.lines().count(), 3, "a header and two backups: {list}");
    let refused = cli_fails(&server, &token, &["vps", "backup", "web1"]);
    assert!(refused.contains("keeps at most 2 backups"), "{refused}");
    let oldest = backups(&admin, &id).last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cli(&server, &token, &["vps", "delete-backup", "web1", &oldest]);
    let made = cli(
        &server,
        &token,
        &[
            "vps",
            "backup",
            "web1",
            "--mode",
            "suspend",
            "--notes",
            "before the upgrade",
        ],
    );
    assert!(
        made.contains("available") && made.contains("before the upgrade"),
        "{made}"
    );
    assert_eq!(backups(&admin, &id).len(), 2);
    let added = cli(
        &server,
        &token,
        &[
            "vps",
            "schedule",
            "add",
            "web1",
            "--cron",
            "30 4 * * 1-5",
            "--timezone",
            "Europe/Berlin",
            "--keep-daily",
            "2",
        ],
    );
    assert!(
        added.contains("04:30") && added.contains("daily=2"),
        "{added}"
    );
    let sid = admin
        .get(&format!("/vps/{id}/backup-schedules"))
        .expect(200)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let paused = cli(&server, &token, &["vps", "schedule", "pause", "web1", &sid]);
    assert!(paused.contains("paused"), "{paused}");
    let three = cli_fails(
        &server,
        &token,
        &[
            "vps",
            "schedule",
            "add",
            "web1",
            "--cron",
            "@daily",
            "--keep-last",
            "1",
        ],
    );
    assert!(three.contains("plan allows 2"), "{three}");
    cli(
        &server,
        &token,
        &["vps", "schedule", "delete", "web1", &sid],
    );
    assert_eq!(
        cli(&server, &token, &["vps", "schedule", "list", "web1"])
            .lines()
            .count(),
        1
    );

    // Deleting the VPS deletes its backups.
    let etag = admin.get(&format!("/vps/{id}")).etag();
    let job = admin.delete(&format!("/vps/{id}"), &etag).expect(202);
    assert_eq!(
        wait_job(&admin, &job)["state"],
        "succeeded",
        "{}",
        server.output()
    );
    assert!(archives(&agent, vmid).is_empty());
}

/// The eve of Monday 2027-03-01, at 8 s a day: 10,800 times fast (the first run, at 03:00
/// in Paris, comes 2 s after the start).
const CLOCK_RATE: i64 = 10_800;
const START: &str = "2027-02-28T20:00:00Z";

/// The simulated time `ms` as `YYYY-MM-DD` in Paris (UTC+1 before 2027-03-28).
fn paris_day(rfc3339: &str) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
    (t + chrono::Duration::hours(1))
        .format("%Y-%m-%d")
        .to_string()
}

#[test]
fn vm_backup_schedules_keep_what_retention_says_and_run_a_missed_run_once() {
    let (agent, mut server, tid) = setup(&[], 7);
    let admin = server.admin();
    let vps = running_vps(&server, &admin, &tid, "db1");
    let id = vps["id"].as_str().unwrap().to_string();
    let vmid = vps["vmid"].as_u64().unwrap();
    // The server again, on the fast clock.
    server.kill9();
    server.env = vec![("HEMIRON_TEST_CLOCK".into(), format!("{START}*{CLOCK_RATE}"))];
    server.launch();
    let admin = server.admin();

    // Bad schedules say what is wrong, field by field.
    let bad = admin.post(
        &format!("/vps/{id}/backup-schedules"),
        &json!({"cron": "0 25 * * *", "timezone": "Mars/Olympus", "keep_daily": 3}),
    );
    bad.problem(422, "invalid-request");
    let fields = &bad.body["errors"];
    assert!(
        fields["cron"].is_string() && fields["timezone"].is_string(),
        "{}",
        bad.body
    );
    // The plan keeps 7: a schedule may not promise 8.
    let r = admin.post(
        &format!("/vps/{id}/backup-schedules"),
        &json!({"cron": "0 3 * * *", "keep_daily": 5, "keep_weekly": 3}),
    );
    r.problem(422, "invalid-request");
    assert!(
        r.body["errors"]["keep_last"]
            .as_str()
            .unwrap()
            .contains("plan allows 7"),
        "{}",
        r.body
    );

    // Every day at 03:00 in Paris; three days and two weeks kept.
    let s = admin
        .post(
            &format!("/vps/{id}/backup-schedules"),
            &json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "keep_daily": 3, "keep_weekly": 2}),
        )
        .expect(201);
    assert_eq!(s["next_run_at"], "2027-03-01T02:00:00.000Z", "{s}");
    assert!(s["description"].as_str().unwrap().contains("03:00"), "{s}");
    let sid = s["id"].as_str().unwrap().to_string();

    // Runs on Mar 1 … Mar 10 (a Wednesday): wait for the tenth backup.
    let made = |admin: &Client| -> Vec<String> {
        admin
            .get(&format!("/vps/{id}/events"))
            .expect(200)
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "backup.created")
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .collect()
    };
    wait_for("ten scheduled backups", Duration::from_secs(240), || {
        (made(&admin).len() >= 10).then_some(())
    });
    let events = admin.get(&format!("/vps/{id}/events")).expect(200);
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "backup.skipped"),
        "no run skipped: {events}"
    );
    // Each kept backup is the schedule's, one a day.
    let kept = |admin: &Client| -> Vec<String> {
        let mut days: Vec<String> = backups(admin, &id)
            .iter()
            .filter(|b| b["state"] == "available")
            .map(|b| {
                assert_eq!(b["schedule_id"], sid.as_str(), "{b}");
                paris_day(b["taken_at"].as_str().unwrap())
            })
            .collect();
        days.sort();
        days
    };
    // Stopped, then started on the same clock (back at Mar 1, so no run is due): a run
    // caught by the stop finishes, and nothing moves while the figures are read.
    server.kill9();
    server.launch();
    let admin = server.admin();
    wait_for("no backup being made", Duration::from_secs(120), || {
        backups(&admin, &id)
            .iter()
            .all(|b| b["state"] != "creating")
            .then_some(())
    });
    // The tenth run (Wednesday Mar 10): Mar 8–10 are the three days; the two weeks before
    // theirs are Mar 1–7 (newest: Mar 7) and Feb 22–28, which has none.
    let k = kept(&admin);
    let ten = made(&admin).len();
    let expected: Vec<String> = if ten == 10 {
        vec!["2027-03-07", "2027-03-08", "2027-03-09", "2027-03-10"]
    } else {
        // The stop came just after an eleventh run: Mar 9–11, then Mar 7 (Mar 8 is in the
        // week the days cover).
        vec!["2027-03-07", "2027-03-09", "2027-03-10", "2027-03-11"]
    }
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(k, expected, "{ten} made: {:?}", made(&admin));
    assert_eq!(
        archives(&agent, vmid).len(),
        k.len(),
        "pruned archives are gone"
    );

    // Down for ten days: started again, the missed runs are one run, at once. (A slower
    // clock from here: a day is 24 s, so the next run stays ahead while this is checked.)
    server.kill9();
    server.env = vec![(
        "HEMIRON_TEST_CLOCK".into(),
        "2027-03-20T12:00:00Z*3600".into(),
    )];
    server.launch();
    let admin = server.admin();
    let before = made(&admin).len();
    wait_for("the missed run", Duration::from_secs(60), || {
        (made(&admin).len() > before).then_some(())
    });
    let events = admin.get(&format!("/vps/{id}/events")).expect(200);
    let once = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "backup.scheduled")
        .unwrap();
    assert!(
        once["detail"].as_str().unwrap().contains("runs missed"),
        "{once}"
    );
    let s = admin
        .get(&format!("/vps/{id}/backup-schedules/{sid}"))
        .expect(200);
    // The next run is the next 03:00 after the restart (Mar 21), not one of the missed.
    assert_eq!(s["next_run_at"], "2027-03-21T02:00:00.000Z", "{s}");
    wait_for("the missed run's backup", Duration::from_secs(120), || {
        backups(&admin, &id)
            .iter()
            .all(|b| b["state"] != "creating")
            .then_some(())
    });
    // Mar 20, then the two newest days before it, then Mar 7 (the week before those).
    let k = kept(&admin);
    assert_eq!(k.len(), 4, "{k:?}");
    assert_eq!(k.last().unwrap(), "2027-03-20", "{k:?}");
    assert_eq!(k[0], "2027-03-07", "{k:?}");
    server.kill9();
}
