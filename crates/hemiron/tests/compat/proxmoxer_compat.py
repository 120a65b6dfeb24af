"""Drives a Hemiron node with proxmoxer, as a Python user of Proxmox VE would.

Run by the Rust test `vm_proxmoxer_compat`, which starts the agent (HTTPS, self-signed) and
passes its address and credentials in the environment.
"""

import os
import sys
import time

import urllib3
from proxmoxer import ProxmoxAPI, AuthenticationError
from proxmoxer.core import ResourceException
from proxmoxer.tools import Tasks

urllib3.disable_warnings()

HOST = os.environ["HEMIRON_HOST"]
PORT = int(os.environ["HEMIRON_PORT"])
NODE = os.environ["HEMIRON_NODE"]
IMAGE = os.environ["HEMIRON_IMAGE"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def wait(prox, upid, what):
    st = Tasks.blocking_status(prox, upid, timeout=300, polling_interval=0.5)
    check(st is not None and st["status"] == "stopped", f"{what}: task stopped")
    check(st["exitstatus"] == "OK", f"{what}: task OK ({st['exitstatus']})")
    return st


def expect_error(fn, status, what):
    try:
        fn()
    except ResourceException as e:
        check(e.status_code == status, f"{what}: HTTP {e.status_code} == {status} ({e.content})")
        return e
    check(False, f"{what}: expected HTTP {status}")


# Password login (ticket + CSRF), and a token.
pw = ProxmoxAPI(HOST, port=PORT, user="alice@pve", password=os.environ["HEMIRON_PASSWORD"],
                verify_ssl=False, timeout=120)
tok = ProxmoxAPI(HOST, port=PORT, user="root@pam", token_name=os.environ["HEMIRON_TOKEN_NAME"],
                 token_value=os.environ["HEMIRON_TOKEN_VALUE"], verify_ssl=False, timeout=120)
try:
    ProxmoxAPI(HOST, port=PORT, user="alice@pve", password="wrong", verify_ssl=False)
    check(False, "wrong password refused")
except AuthenticationError:
    check(True, "wrong password refused")

for prox, who in ((pw, "ticket"), (tok, "token")):
    v = prox.version.get()
    check(v["version"].startswith("9.1."), f"{who}: version {v['version']}")
    check(any(n["node"] == NODE for n in prox.nodes.get()), f"{who}: node listed")

vmid = int(pw.cluster.nextid.get())
check(vmid >= 100, f"nextid {vmid}")

# Create with a disk imported from the guest image, with the ticket session (POST + CSRF).
upid = pw.nodes(NODE).qemu.post(vmid=vmid, name="compat", memory=192, cores=1,
                                  scsi0=f"local:0,import-from={IMAGE}",
                                  net0="virtio,bridge=vmbr0", ostype="l26")
check(len(upid.split(":")) == 9 and upid.endswith(":"), f"UPID has 9 fields: {upid}")
check(Tasks.decode_upid(upid)["type"] == "qmcreate", "UPID decodes as qmcreate")
wait(pw, upid, "create")
res = [r for r in tok.cluster.resources.get(type="vm") if r["vmid"] == vmid]
check(len(res) == 1 and res[0]["name"] == "compat" and res[0]["type"] == "qemu",
      "cluster/resources lists the VM with an integer vmid")
conf = tok.nodes(NODE).qemu(vmid).config.get()
check(conf["net0"].startswith("virtio=") and "," in conf["net0"], f"net0 in Proxmox form: {conf['net0']}")
check(conf["scsi0"].startswith(f"local:{vmid}/vm-{vmid}-disk-0.qcow2"), f"scsi0: {conf['scsi0']}")

# Start with the token, wait, status.
wait(tok, tok.nodes(NODE).qemu(vmid).status.start.post(), "start")
st = tok.nodes(NODE).qemu(vmid).status.current.get()
check(st["status"] == "running" and st["qmpstatus"] == "running", "status running")
fw = st["hemiron-forwards"]["80"]
import urllib.request
deadline = time.time() + 120
page = None
while time.time() < deadline:
    try:
        page = urllib.request.urlopen(f"http://{fw}/", timeout=2).read().decode()
        break
    except Exception:
        time.sleep(0.2)
check(page is not None and "hemiron-guest" in page, "guest answers through hemiron-forwards")

# Config change (PUT returns None as Proxmox), with a digest, and a stale digest refused.
digest = tok.nodes(NODE).qemu(vmid).config.get()["digest"]
check(tok.nodes(NODE).qemu(vmid).config.put(description="set by proxmoxer", digest=digest) is None,
      "PUT config returns null")
e = expect_error(lambda: tok.nodes(NODE).qemu(vmid).config.put(name="x", digest=digest), 500, "stale digest")
check("checksum mismatch" in e.content, "stale digest message as reason")
check(tok.nodes(NODE).qemu(vmid).config.get()["description"] == "set by proxmoxer", "description kept")
# POST config is a task.
wait(tok, tok.nodes(NODE).qemu(vmid).config.post(onboot=True, tags="compat"), "POST config")
check(tok.nodes(NODE).qemu(vmid).config.get()["onboot"] == 1, "boolean sent as Python True")

# Errors.
e = expect_error(lambda: tok.nodes(NODE).qemu(vmid).config.put(memory="lots"), 400, "bad memory")
check("memory" in (e.errors or {}), f"errors name the parameter: {e.errors}")
e = expect_error(lambda: tok.nodes(NODE).qemu(vmid).config.put(nonsense=1), 400, "unknown parameter")
check("nonsense" in (e.errors or {}), "unknown parameter named")
expect_error(lambda: tok.nodes(NODE).qemu(99999).status.current.get(), 500, "missing VM")
up = tok.nodes(NODE).qemu(vmid).status.start.post()
st = Tasks.blocking_status(tok, up, timeout=60, polling_interval=0.5)
check(st["exitstatus"] != "OK" and "already running" in st["exitstatus"], f"start of a running VM fails: {st['exitstatus']}")
log = Tasks.decode_log(tok.nodes(NODE).tasks(up).log.get())
check("already running" in log, "task log readable")

# Stop, delete.
wait(tok, tok.nodes(NODE).qemu(vmid).status.stop.post(), "stop")
check(tok.nodes(NODE).qemu(vmid).status.current.get()["status"] == "stopped", "stopped")
wait(pw, pw.nodes(NODE).qemu(vmid).delete(purge=1), "delete")
check(all(r["vmid"] != vmid for r in tok.cluster.resources.get(type="vm")), "VM gone")
tasks = tok.nodes(NODE).tasks.get(vmid=vmid, limit=100)
check({t["type"] for t in tasks} >= {"qmcreate", "qmstart", "qmstop", "qmdestroy"}, "task history")
# Cloud-init settings, template, linked clone, snapshots — as Ansible's modules drive them.
import urllib.parse
tid = int(tok.cluster.nextid.get())
key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhlbWlyb24tY29tcGF0LXRlc3Qta2V5LW9ubHk compat@test"
wait(tok, tok.nodes(NODE).qemu.post(vmid=tid, name="compat-tmpl", memory=128,
                                     scsi0=f"local:0,import-from={IMAGE}",
                                     net0="virtio,bridge=vmbr0", ide2="local:cloudinit",
                                     ciuser="deploy", cipassword="s3cret",
                                     sshkeys=urllib.parse.quote(key + "\n", safe=""),
                                     ipconfig0="ip=dhcp", searchdomain="example.com"),
     "create with cloud-init")
conf = tok.nodes(NODE).qemu(tid).config.get()
check(conf["ciuser"] == "deploy" and conf["cipassword"] == "**********", "cloud-init settings stored")
user = tok.nodes(NODE).qemu(tid).cloudinit.dump.get(type="user")
check("user: deploy" in user and key in user and "fqdn: compat-tmpl.example.com" in user,
      "cloud-init user-data")
wait(tok, tok.nodes(NODE).qemu(tid).template.post(), "template")
check(tok.nodes(NODE).qemu(tid).config.get()["template"] == 1, "template flag")
cid = tid + 1
wait(tok, tok.nodes(NODE).qemu(tid).clone.post(newid=cid, name="compat-clone"), "linked clone")
cconf = tok.nodes(NODE).qemu(cid).config.get()
check(cconf["name"] == "compat-clone" and "base-" in cconf["scsi0"], f"linked clone disk {cconf['scsi0']}")
check(cconf["net0"] != conf["net0"], "clone has a new MAC")
snaps = tok.nodes(NODE).qemu(cid).snapshot
wait(tok, snaps.post(snapname="before", description="compat snapshot"), "snapshot")
names = [s["name"] for s in snaps.get()[:-1]]
check(names == ["before"] and snaps.get()[-1]["name"] == "current", "snapshot list ends with current")
check(snaps("before").config.get()["description"] == "compat snapshot", "snapshot config")
snaps("before").config.put(description="renamed")
wait(tok, snaps("before").rollback.post(), "rollback")
wait(tok, snaps("before").delete(), "snapshot delete")
check([s["name"] for s in snaps.get()] == ["current"], "snapshot gone")
try:
    tok.nodes(NODE).qemu(tid).delete()
    check(False, "template with linked clone refused")
except ResourceException as e:
    check(e.status_code == 500 and str(cid) in e.content, f"template delete refused: {e.content}")
wait(tok, tok.nodes(NODE).qemu(cid).delete(purge=1), "delete clone")
wait(tok, tok.nodes(NODE).qemu(tid).delete(purge=1), "delete template")
print("proxmoxer compatibility: all checks passed")
