#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Proxmox API client against a real `hemiron node` over HTTPS with a pinned certificate.

mod common;

use std::time::Duration;

use common::Agent;
use hemiron_pve_client::{ClientConfig, Credentials, PveClient, PveError};

fn client(agent: &Agent, credentials: Credentials, fingerprint: Option<String>) -> PveClient {
    let endpoint = agent.url.trim_end_matches("/api2/json").to_string();
    PveClient::new(ClientConfig {
        endpoint,
        credentials,
        fingerprint,
        timeout: Duration::from_secs(30),
    })
    .unwrap()
}

fn token(agent: &Agent) -> Credentials {
    Credentials::Token {
        tokenid: "root@pam!test".into(),
        secret: agent.token.clone(),
    }
}

#[test]
fn client_against_a_real_node() {
    let agent = Agent::start_with(false, &[]);
    agent.add_user("ops@pve", "ops-password");
    let fp = agent.api().get("/nodes", &[]).ok()[0]["ssl_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(exercise(&agent, fp));
}

async fn exercise(agent: &Agent, fp: String) {
    let c = client(agent, token(agent), Some(fp.clone()));
    let v = c.version().await.unwrap();
    assert!(v.version.starts_with("9.1.") && v.hemiron.is_some());
    assert_eq!(c.nodes().await.unwrap()[0].node, "n1");
    let st = c.node_status("n1").await.unwrap();
    assert_eq!(st.accel.as_deref(), Some("tcg"));
    assert!(st.memory.unwrap().total.unwrap() > 0);
    let vmid = c.next_id().await.unwrap();
    assert_eq!(vmid, 100);

    // A task: create, then wait.
    let upid = c
        .create_vm(
            "n1",
            &[
                ("vmid", vmid.to_string()),
                ("memory", "64".into()),
                ("name", "cl".into()),
            ],
        )
        .await
        .unwrap();
    let done = c.wait_task(&upid, Duration::from_secs(60)).await.unwrap();
    assert!(done.succeeded() && done.task_type == "qmcreate");
    let conf = c.vm_config("n1", vmid).await.unwrap();
    assert_eq!(conf["name"], "cl");
    c.set_config("n1", vmid, &[("description", "from the client".into())])
        .await
        .unwrap();
    let resources = c.resources(Some("vm")).await.unwrap();
    assert_eq!(resources[0].vmid, Some(u64::from(vmid)));
    let vms = c.vms("n1").await.unwrap();
    assert_eq!(vms[0].status, "stopped");

    // Errors keep Proxmox's detail.
    let err = c
        .set_config("n1", vmid, &[("memory", "lots".into())])
        .await
        .unwrap_err();
    match &err {
        PveError::Api { status, errors, .. } => {
            assert_eq!(*status, 400);
            assert!(errors.contains_key("memory"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = c.vm_status("n1", 999).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    // A failing task is an error carrying its exit status.
    let upid = c.vm_power("n1", 4242, "start", &[]).await;
    assert!(upid.is_err());
    let template = c.make_template("n1", vmid).await.unwrap();
    c.wait_task(&template, Duration::from_secs(30))
        .await
        .unwrap();
    let start = c.vm_power("n1", vmid, "start", &[]).await.unwrap();
    match c.wait_task(&start, Duration::from_secs(30)).await {
        Err(PveError::TaskFailed { exitstatus, .. }) => {
            assert_eq!(exitstatus, "you can't start a vm if it's a template")
        }
        other => panic!("unexpected {other:?}"),
    }

    // Password login with a ticket; writes carry the CSRF token.
    let pw = client(
        agent,
        Credentials::Password {
            username: "ops@pve".into(),
            password: "ops-password".into(),
        },
        Some(fp.clone()),
    );
    let upid = pw
        .delete_vm("n1", vmid, &[("purge", "1".into())])
        .await
        .unwrap();
    pw.wait_task(&upid, Duration::from_secs(30)).await.unwrap();
    let bad = client(
        agent,
        Credentials::Password {
            username: "ops@pve".into(),
            password: "wrong".into(),
        },
        Some(fp.clone()),
    );
    assert!(matches!(bad.version().await, Err(PveError::Login(_))));

    // A different certificate is refused.
    let wrong_fp = fp.replace(&fp[0..2], if &fp[0..2] == "00" { "11" } else { "00" });
    let pinned_wrong = client(agent, token(agent), Some(wrong_fp));
    let err = pinned_wrong.version().await.unwrap_err();
    assert!(matches!(err, PveError::Transport { .. }), "{err:?}");
    // And without a pin, the self-signed certificate is not trusted.
    let unpinned = client(agent, token(agent), None);
    assert!(unpinned.version().await.is_err());
}
