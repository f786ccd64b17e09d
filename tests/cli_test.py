#!/usr/bin/env python3
"""The nucleus-checkpoint command as an operator uses it, with the real CRIU: check, dump,
inspect, verify, restore, keygen, --json, and clear failures with exit codes by status on bad
input (missing folder, unsigned or tampered checkpoint, wrong PID, not root, bad usage).
Usage: cli_test.py NUCLEUS_CHECKPOINT COUNTER TMPDIR"""
import ctypes
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import time

cli, counter, tmp_root = sys.argv[1:4]
os.makedirs(tmp_root, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="cli-", dir=tmp_root)
os.makedirs(os.path.join(tmp, "keys"), mode=0o700)
env = dict(os.environ, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "keys", "key"))
# A child subreaper reaps the dumped tree at once (a zombie's PID cannot be restored).
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

checks = failures = 0


def check(ok, what, detail=""):
    global checks, failures
    checks += 1
    if not ok:
        failures += 1
        print(f"FAILED: {what}\n{detail}", file=sys.stderr)


def run(*args, user=None):
    cmd = [cli, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def count(name):
    try:
        with open(os.path.join(tmp, "counter", name)) as f:
            return int(f.read())
    except (OSError, ValueError):
        return -1


def wait_for(pred, seconds=10):
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


os.makedirs(os.path.join(tmp, "counter"))
tree = subprocess.Popen([counter, os.path.join(tmp, "counter")])
wait_for(lambda: count("parent") >= 3)
ckpt = os.path.join(tmp, "ckpt")

r = run("check")
check(r.returncode == 0 and "criu check:" in r.stdout, "check says the machine is ready", r.stdout + r.stderr)
r = run("keygen", "--json")
check(r.returncode == 0 and json.loads(r.stdout)["created"] is True, "keygen creates the key", r.stdout + r.stderr)
r = run("--json", "keygen")
check(r.returncode == 0 and json.loads(r.stdout)["created"] is False, "keygen again keeps the key", r.stdout)

r = run("dump", "--pid", str(tree.pid), "--dir", ckpt, "--id", "demo", "--json")
check(r.returncode == 0, "dump succeeds", r.stdout + r.stderr)
dumped = json.loads(r.stdout) if r.returncode == 0 else {}
check(dumped.get("status") == "NC_OK" and dumped.get("bytes", 0) > 0, "dump --json reports size", r.stdout)
check(dumped.get("format") == "chunked", "a dump is signed in the chunked format by default", r.stdout)
wait_for(lambda: (reap(), tree.poll() is not None)[1])
at_dump = count("parent")

r = run("inspect", "--dir", ckpt, "--json")
info = json.loads(r.stdout) if r.stdout else {}
check(r.returncode == 0 and info.get("signature") == "valid" and info["metadata"]["container_id"] == "demo"
      and info["metadata"]["original_pid"] == tree.pid, "inspect shows metadata and a valid signature", r.stdout + r.stderr)
r = run("inspect", "--dir", ckpt)
check(r.returncode == 0 and "container_id:" in r.stdout and "valid" in r.stdout, "inspect prints for a person", r.stdout)
r = run("verify", "--dir", ckpt)
check(r.returncode == 0 and r.stderr == "", "verify passes, no progress line when not a terminal", r.stdout + r.stderr)

# On a terminal, verify shows how far hashing has got.
master, slave = pty.openpty()
p = subprocess.run([cli, "verify", "--dir", ckpt], env=env, stdout=subprocess.PIPE, stderr=slave, timeout=60)
os.close(slave)
shown = os.read(master, 4096).decode(errors="replace")
os.close(master)
check(p.returncode == 0 and "hashed" in shown and "MB/s" in shown, "a progress line on a terminal", shown)

tampered = os.path.join(tmp, "tampered")
shutil.copytree(ckpt, tampered)
with open(os.path.join(tampered, "images", "pages-1.img"), "r+b") as f:
    f.seek(10)
    b = f.read(1)
    f.seek(10)
    f.write(bytes([b[0] ^ 1]))
r = run("verify", "--dir", tampered)
check(r.returncode == 6 and "NC_E_INTEGRITY" in r.stderr and "HMAC mismatch" in r.stderr, "tampered: exit 6", r.stderr)
r = run("restore", "--dir", tampered)
check(r.returncode == 6, "a tampered checkpoint is not restored", r.stdout + r.stderr)
r = run("inspect", "--dir", tampered)
check(r.returncode == 6 and "INVALID" in r.stdout, "inspect shows the broken signature", r.stdout + r.stderr)

r = run("restore", "--dir", ckpt, "--json")
restored = json.loads(r.stdout).get("pid", 0) if r.stdout else 0
check(r.returncode == 0 and restored == tree.pid, "restore returns the PID", r.stdout + r.stderr)
check(wait_for(lambda: count("parent") > at_dump + 5), "the restored tree runs on", f"{at_dump} -> {count('parent')}")
if restored > 0:
    os.killpg(restored, signal.SIGKILL)
    wait_for(lambda: (reap(), not os.path.exists(f"/proc/{restored}"))[1])

r = run("restore", "--dir", os.path.join(tmp, "missing"))
check(r.returncode == 3 and "does not exist" in r.stderr, "missing folder: exit 3", r.stderr)
unsigned = os.path.join(tmp, "unsigned")
shutil.copytree(ckpt, unsigned)
os.remove(os.path.join(unsigned, "checkpoint.hmac"))
r = run("restore", "--dir", unsigned)
check(r.returncode == 6 and "not signed" in r.stderr, "unsigned checkpoint: exit 6", r.stderr)
r = run("sign", "--dir", unsigned)
check(r.returncode == 0 and "signature format:  seed" in r.stdout, "sign an unsigned folder (seed format)",
      r.stdout + r.stderr)
r = run("verify", "--dir", unsigned)
check(r.returncode == 0, "it verifies once signed", r.stderr)
r = run("sign", "--dir", unsigned, "--format", "chunked", "--json")
check(r.returncode == 0 and json.loads(r.stdout).get("format") == "chunked", "sign --format chunked", r.stdout + r.stderr)
r = run("verify", "--dir", unsigned, "--json")
check(r.returncode == 0 and json.loads(r.stdout).get("format") == "chunked", "verify recognises the chunked format",
      r.stdout + r.stderr)
r = run("sign", "--dir", unsigned, "--format", "sha1")
check(r.returncode == 64, "an unknown format is a usage error", r.stderr)
r = run("dump", "--pid", "4194304", "--dir", os.path.join(tmp, "nopid"))
check(r.returncode == 3 and "does not exist" in r.stderr, "wrong PID: exit 3", r.stderr)
r = run("dump", "--pid", str(os.getpid()), "--dir", os.path.join(tmp, "notroot"), user=65534)
check(r.returncode == 2 and "requires root" in r.stderr, "not root: exit 2", r.stderr)
r = run("dump", "--dir", os.path.join(tmp, "x"))
check(r.returncode == 64 and "--pid is required" in r.stderr, "usage error: exit 64", r.stderr)
for sub in ["check", "dump", "restore", "sign", "verify", "inspect", "keygen"]:
    r = run(sub, "--help")
    check(r.returncode == 0 and "Usage:" in r.stdout, f"{sub} --help", r.stdout + r.stderr)

shutil.rmtree(tmp, ignore_errors=True)
print(f"cli: {checks} checks, {failures} failed")
sys.exit(1 if failures else 0)
