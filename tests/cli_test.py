#!/usr/bin/env python3
"""The nucleus-checkpoint command as an operator uses it, with the real CRIU: check (with the
tools CRIU runs for containers), dump, inspect, verify, restore (as a child, waited for), keygen,
--json, the container flags as CRIU gets them (through a fake criu), and clear failures with exit
codes by status on bad input (missing folder, unsigned or tampered checkpoint, wrong PID, closed
inherited descriptor, not root, bad usage); a folder someone else made (forged metadata, names
with escape sequences or not UTF-8) and CRIU's own output shown escaped, unverified metadata
marked so, and each error line the message of the call that failed.
Usage: cli_test.py NUCLEUS_CHECKPOINT COUNTER TMPDIR"""
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from test_support import become_subreaper, check, finish, reap, wait_for

cli, counter, tmp_root = sys.argv[1:4]
os.makedirs(tmp_root, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="cli-", dir=tmp_root)
os.makedirs(os.path.join(tmp, "keys"), mode=0o700)
env = dict(os.environ, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "keys", "key"))
become_subreaper()



def run(*args, user=None):
    cmd = [cli, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def count(name, folder="counter"):
    try:
        with open(os.path.join(tmp, folder, name)) as f:
            return int(f.read())
    except (OSError, ValueError):
        return -1


os.makedirs(os.path.join(tmp, "counter"))
tree = subprocess.Popen([counter, os.path.join(tmp, "counter")])
wait_for(lambda: count("parent") >= 3)
ckpt = os.path.join(tmp, "ckpt")

r = run("check")
check(r.returncode == 0 and "criu check:" in r.stdout and "ready:" in r.stdout, "check says the machine is ready",
      r.stdout + r.stderr)
for tool in ["iptables-restore", "ip6tables-restore", "nft", "ip", "tar"]:
    check(f"{tool}:" in r.stdout and "MISSING" not in r.stdout, f"check reports {tool}", r.stdout)
check("TCP/UDP sockets:   yes" in r.stdout, "check reports that CRIU can dump sockets here", r.stdout)
r = run("check", "--json")
report = json.loads(r.stdout) if r.stdout else {}
tools = report.get("tools", {})
check(r.returncode == 0 and report.get("ready") is True and report.get("missing_packages") == []
      and sorted(tools) == sorted(["iptables-restore", "ip6tables-restore", "nft", "ip", "tar"])
      and all(t["found"] and t["path"].startswith("/") and t["package"] for t in tools.values())
      and report.get("tcp_udp_sockets") is True and report.get("kernel") == os.uname().release,
      "check --json has the tools, the packages and the socket support", r.stdout + r.stderr)
# With nft hidden (in a mount namespace of its own), check says what to install and is not ready.
nft = shutil.which("nft", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
r = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind /dev/null {nft} && exec "$0" check --json', cli],
                   env=env, capture_output=True, text=True, timeout=120)
report = json.loads(r.stdout) if r.stdout.startswith("{") else {}
check(r.returncode == 5 and report.get("ready") is False and report.get("missing_packages") == ["nftables"]
      and report["tools"]["nft"]["found"] is False and "install the Debian package nftables" in report.get("error", ""),
      "check without nft: NC_E_CRIU, and what to install", r.stdout + r.stderr)
r = run("keygen", "--json")
check(r.returncode == 0 and json.loads(r.stdout)["created"] is True, "keygen creates the key", r.stdout + r.stderr)
r = run("--json", "keygen")
check(r.returncode == 0 and json.loads(r.stdout)["created"] is False, "keygen again keeps the key", r.stdout)

r = run("dump", "--pid", str(tree.pid), "--dir", ckpt, "--id", "demo", "--json")
check(r.returncode == 0, "dump succeeds", r.stdout + r.stderr)
dumped = json.loads(r.stdout) if r.returncode == 0 else {}
check(dumped.get("status") == "NC_OK" and dumped.get("bytes", 0) > 0, "dump --json reports size", r.stdout)
check(dumped.get("format") == "manifest", "a dump is signed in the manifest format by default", r.stdout)
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
# The manifest format names the changed chunk: bytes 0 and on of pages-1.img.
changed = "'images/pages-1.img' differs from what was signed in bytes 0"
check(r.returncode == 6 and "NC_E_INTEGRITY" in r.stderr and changed in r.stderr, "tampered: exit 6", r.stderr)
r = run("restore", "--dir", tampered)
check(r.returncode == 6, "a tampered checkpoint is not restored", r.stdout + r.stderr)
# Refused while CRIU read it: what CRIU had made was killed before it ran, and is reaped here (this
# test is the subreaper) before the original is restored under the same PIDs.
check(wait_for(lambda: (reap(), not os.path.exists(f"/proc/{tree.pid}"))[1]), "the refused restore leaves nothing")
r = run("inspect", "--dir", tampered)
check(r.returncode == 6 and "INVALID" in r.stdout, "inspect shows the broken signature", r.stdout + r.stderr)
# The error line is the failure's own message, not the empty one of a later call that succeeded.
check(changed in r.stderr, "inspect's error line says why", r.stderr)
r = run("inspect", "--dir", tampered, "--json")
check(changed in json.loads(r.stdout or "{}").get("error", ""), "inspect --json's error says why", r.stdout)
check(json.loads(r.stdout or "{}").get("metadata_verified") is False, "inspect --json: the metadata is not verified",
      r.stdout)
r = run("inspect", "--dir", ckpt, "--json")
check(json.loads(r.stdout or "{}").get("metadata_verified") is True, "inspect --json: the signed metadata is verified",
      r.stdout)
r = run("inspect", "--dir", ckpt)
check(r.returncode == 0 and "UNVERIFIED" not in r.stdout, "inspect: signed metadata is not marked", r.stdout)

# Transfer streams: export to a file and import it; export | import through a pipe, compressed;
# a stream changed on the way, or cut, refused with nothing left; no binary stream on a terminal.
xfer = os.path.join(tmp, "xfer")
os.makedirs(xfer, mode=0o700)
stream = os.path.join(xfer, "c.stream")
r = run("export", "--dir", ckpt, "--output", stream, "--json")
check(r.returncode == 0 and json.loads(r.stdout).get("compression") == "none" and os.path.getsize(stream) > 0,
      "export --output writes the stream", r.stdout + r.stderr)
r = run("export", "--dir", ckpt, "--output", stream)
check(r.returncode == 1 and "give a new name" in r.stderr, "export --output never overwrites a file", r.stderr)
r = run("import", "--dir", os.path.join(xfer, "from-file"), "--input", stream, "--json")
check(r.returncode == 0 and json.loads(r.stdout).get("format") == "manifest", "import --input", r.stdout + r.stderr)
r = run("verify", "--dir", os.path.join(xfer, "from-file"))
check(r.returncode == 0, "the imported checkpoint verifies", r.stdout + r.stderr)
p = subprocess.run(f'"{cli}" export --dir "{ckpt}" --zstd | "{cli}" import --dir "{xfer}/from-pipe"', shell=True,
                   env=env, capture_output=True, text=True, timeout=120)
check(p.returncode == 0 and "compression:       zstd" in p.stderr, "export --zstd | import", p.stdout + p.stderr)
check(run("verify", "--dir", os.path.join(xfer, "from-pipe")).returncode == 0, "the piped checkpoint verifies")
with open(stream, "rb") as f:
    data = bytearray(f.read())
data[len(data) // 2] ^= 0x01
with open(stream + ".bad", "wb") as f:
    f.write(data)
with open(stream + ".cut", "wb") as f:
    f.write(data[: len(data) // 3])
for bad, why in [(".bad", "differs from what was signed"), (".cut", "ends early")]:
    with open(stream + bad, "rb") as f:
        r = subprocess.run([cli, "import", "--dir", os.path.join(xfer, "refused")], stdin=f, env=env,
                           capture_output=True, text=True, timeout=120)
    check(r.returncode == 6 and why in r.stderr, f"import refuses a stream {bad[1:]} on the way", r.stderr)
    check(sorted(os.listdir(xfer)) == ["c.stream", "c.stream.bad", "c.stream.cut", "from-file", "from-pipe"],
          f"a refused import ({bad[1:]}) leaves nothing behind", str(os.listdir(xfer)))
master, slave = pty.openpty()
p = subprocess.run([cli, "export", "--dir", ckpt], env=env, stdout=slave, stderr=subprocess.PIPE, text=True,
                   timeout=60)
os.close(slave)
os.close(master)
check(p.returncode == 1 and "redirect stdout" in p.stderr, "export refuses to write a stream to a terminal", p.stderr)

# A folder someone else made, shown to root: what it holds cannot reach the terminal raw (escape
# sequences, C1 controls, bidi overrides, bytes that are not UTF-8), and --json stays JSON.
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def run_bytes(*args):
    return subprocess.run([cli, *args], env=env, capture_output=True, timeout=120)


def raw_controls(out):
    """What a terminal would act on in out: controls but the newline, C1, bidi, bytes not UTF-8."""
    text = out.decode("utf-8", errors="surrogateescape")
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f or 0xdc80 <= ord(c) <= 0xdcff
            or c in BIDI]


def json_of(out):
    try:
        return json.loads(out.decode("utf-8"))
    except ValueError:  # not UTF-8, or not JSON
        return None


lure = "\x1b[1A\x1b[2K\rsignature:          valid\x1b]0;owned\x07\n\u009b2J\u202e"
forged = os.path.join(tmp, "forged")
shutil.copytree(ckpt, forged)
with open(os.path.join(forged, "metadata.json")) as f:
    meta = json.load(f)
meta["container_id"] = lure
with open(os.path.join(forged, "metadata.json"), "w") as f:
    json.dump(meta, f)
r = run_bytes("inspect", "--dir", forged)
out = r.stdout.decode(errors="replace")
check(r.returncode == 6 and not raw_controls(r.stdout + r.stderr), "inspect: forged metadata is shown escaped",
      repr(r.stdout + r.stderr))
check("\\x1b[1A\\x1b[2K\\rsignature:" in out and "valid\\x1b]0;owned\\x07\\n\\u009b2J\\u202e" in out,
      "inspect: the escapes are visible", out)
check(b"HMAC mismatch" in r.stderr, "inspect: forged metadata, the error says why", repr(r.stderr))
lines = out.splitlines()
check(any(l.startswith("metadata:") and "UNVERIFIED" in l for l in lines)
      and all(l.startswith("UNVERIFIED ") for l in lines if "container_id" in l or "original_pid" in l),
      "inspect: unverified metadata is marked so", out)
r = run_bytes("inspect", "--dir", forged, "--json")
info = json_of(r.stdout) or {}
check(info.get("metadata_verified") is False and info.get("metadata", {}).get("container_id") == lure
      and not raw_controls(r.stdout), "inspect --json: forged metadata, unverified, escaped as JSON", repr(r.stdout))

# Entry names: one not UTF-8 with escapes, a symlink with C1 and bidi; the errors quote them.
named = os.path.join(tmp, "named")
shutil.copytree(ckpt, named)
os.close(os.open(os.path.join(os.fsencode(named), b"images", b"\x1b[2J\x1b]0;owned\x07\xff"), os.O_CREAT | os.O_WRONLY))
for sub in [["verify"], ["inspect"], ["restore"]]:
    r = run_bytes(*sub, "--dir", named)
    check(r.returncode == 6 and not raw_controls(r.stdout + r.stderr)
          and b"images/\\x1b[2J\\x1b]0;owned\\x07\\xff" in r.stderr,
          f"{sub[0]}: an entry's name is quoted escaped", repr(r.stdout + r.stderr))
    r = run_bytes(*sub, "--dir", named, "--json")
    error = (json_of(r.stdout) or {}).get("error", "")
    # The library's message comes escaped (nc_error_message), and so it is in the JSON too.
    check(r.returncode == 6 and "images/\\x1b[2J\\x1b]0;owned\\x07\\xff" in error and not raw_controls(r.stdout),
          f"{sub[0]} --json: valid JSON whatever the name", repr(r.stdout))
linked = os.path.join(tmp, "linked")
shutil.copytree(ckpt, linked)
os.symlink("/etc/shadow", os.path.join(linked, "x\u009b31m\u202e\x7f"))
r = run_bytes("inspect", "--dir", linked)
check(r.returncode == 6 and not raw_controls(r.stdout + r.stderr) and b"x\\u009b31m\\u202e\\x7f" in r.stdout
      and b"x\\u009b31m\\u202e\\x7f" in r.stderr, "inspect: a symlink's name is quoted escaped",
      repr(r.stdout + r.stderr))

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
# The container flags on a real tree: dumped with them, with the runtime's description, then
# restored as this command's child and waited for: the exit code is the root's (128+SIGKILL).
os.makedirs(os.path.join(tmp, "counter2"))
tree2 = subprocess.Popen([counter, os.path.join(tmp, "counter2")])
wait_for(lambda: count("parent", "counter2") >= 3)
ckpt2 = os.path.join(tmp, "ckpt2")
config = os.path.join(tmp, "config.json")
with open(config, "w") as f:
    f.write('{"id": "demo2"}')
r = run("dump", "--pid", str(tree2.pid), "--dir", ckpt2, "--json", "--tcp-close", "--skip-in-flight", "--link-remap",
        "--ghost-limit", "10M", "--ghost-fiemap", "--evasive-devices", "--file-validation", "filesize",
        "--network-lock", "skip", "--annotation", "owner=cli=test", "--runtime-file", f"config.json={config}")
check(r.returncode == 0, "dump with the container flags", r.stdout + r.stderr)
wait_for(lambda: (reap(), tree2.poll() is not None)[1])
r = run("inspect", "--dir", ckpt2, "--json")
check(r.returncode == 0 and "cli=test" in r.stdout, "the annotation is in the signed metadata", r.stdout + r.stderr)
try:
    with open(os.path.join(ckpt2, "runtime", "config.json")) as f:
        stored = f.read()
except OSError as e:
    stored = str(e)
check(stored == '{"id": "demo2"}', "the runtime file is stored in the checkpoint", stored)
at_dump2 = count("parent", "counter2")
waiting = subprocess.Popen([cli, "restore", "--dir", ckpt2, "--json", "--tcp-close", "--evasive-devices",
                            "--restore-sibling", "--wait"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
line = waiting.stdout.readline()
restored2 = json.loads(line).get("pid", 0) if line.startswith("{") else 0
check(restored2 == tree2.pid and json.loads(line).get("child") is True, "restore --restore-sibling --wait reports first",
      line + (waiting.stderr.read() if not restored2 else ""))
check(restored2 > 0 and wait_for(lambda: count("parent", "counter2") > at_dump2 + 3), "the child tree runs on")
if restored2 > 0:
    os.killpg(restored2, signal.SIGKILL)
try:
    code = waiting.wait(timeout=30)
except subprocess.TimeoutExpired:
    waiting.kill()
    code = waiting.wait()
check(code == 128 + signal.SIGKILL, "--wait exits with 128+signal of the restored root", f"exit {code}")
reap()

# Flags CRIU would get, seen through a fake criu that records its arguments.
fake_dir = os.path.join(tmp, "fake")
os.makedirs(fake_dir)
fake = os.path.join(fake_dir, "criu")
with open(fake, "w") as f:
    f.write(f"""#!/bin/sh
if [ "$1" = --version ]; then echo 'Version: 4.2.1'; exit 0; fi
op=$1
printf '%s\\n' "$@" > '{fake_dir}/'$op.args
while [ $# -gt 0 ]; do case $1 in --images-dir) img=$2;; --work-dir) work=$2;; esac; shift; done
if [ $op = dump ]; then touch "$img/core-1.img"; fi
if [ $op = restore ]; then sleep 30 </dev/null >/dev/null 2>&1 & echo $! > "$work/restore.pid"; fi
exit 0
""")
os.chmod(fake, 0o755)


def criu_args(op):
    try:
        with open(os.path.join(fake_dir, op + ".args")) as f:
            return f.read().split("\n")[:-1]
    except OSError:
        return []


def has(args, *part):
    return any(args[i:i + len(part)] == list(part) for i in range(len(args)))


sleeper = subprocess.Popen(["sleep", "60"])
r = run("dump", "--criu", fake, "--pid", str(sleeper.pid), "--dir", os.path.join(tmp, "fake-ckpt"), "--tcp-close",
        "--ghost-limit", "10M", "--network-lock", "nftables", "--cgroup-root", "memory:/pods/c", "--cgroup-yard",
        "/run/yard", "--cgroup-props", "cpu:\n  strategy: replace", "--freeze-cgroup", "/sys/fs/cgroup/pods/c",
        "--link-remap", "--skip-in-flight", "--ghost-fiemap", "--evasive-devices", "--file-validation", "buildid")
args = criu_args("dump")
check(r.returncode == 0, "dump through the fake criu", r.stdout + r.stderr)
for part in [["--no-default-config"], ["--tcp-close"], ["--ghost-limit", "10485760"], ["--network-lock", "nftables"],
             ["--cgroup-root", "memory:/pods/c"], ["--cgroup-yard", "/run/yard"], ["--freeze-cgroup", "/sys/fs/cgroup/pods/c"],
             ["--link-remap"], ["--skip-in-flight"], ["--ghost-fiemap"], ["--evasive-devices"],
             ["--file-validation", "buildid"]]:
    check(has(args, *part), f"dump gives CRIU {' '.join(part)}", "\n".join(args))
check(has(args, "--cgroup-props") and any(a.startswith("cpu:") for a in args), "dump gives CRIU --cgroup-props (YAML)",
      "\n".join(args))
sleeper.kill()
sleeper.wait()

rd, wr = os.pipe()
r = subprocess.run([cli, "restore", "--criu", fake, "--dir", os.path.join(tmp, "fake-ckpt"), "--json",
                    "--root", fake_dir, "--lsm-profile", "none:", "--lsm-mount-context", "system_u:object_r:c:s0",
                    "--empty-ns", "net", "--cgroup-root", "/pods/c", "--use-default-config", "--tcp-close",
                    "--inherit-fd", f"fd[{rd}]:pipe:[12345]"],
                   env=env, capture_output=True, text=True, timeout=120, pass_fds=[rd])
os.close(rd)
os.close(wr)
args = criu_args("restore")
check(r.returncode == 0, "restore through the fake criu", r.stdout + r.stderr)
for part in [["--root", fake_dir], ["--lsm-profile", "none:"], ["--lsm-mount-context", "system_u:object_r:c:s0"],
             ["--empty-ns", "net"], ["--cgroup-root", "/pods/c"], ["--tcp-close"], ["--restore-detached"]]:
    check(has(args, *part), f"restore gives CRIU {' '.join(part)}", "\n".join(args))
check(not has(args, "--no-default-config"), "--use-default-config lets CRIU read its configuration", "\n".join(args))
check(any(a.endswith("]:pipe:[12345]") and a.startswith("fd[") for a in args), "restore gives CRIU --inherit-fd",
      "\n".join(args))
restored_fake = json.loads(r.stdout).get("pid", 0) if r.stdout.startswith("{") else 0
if restored_fake > 0:
    os.kill(restored_fake, signal.SIGKILL)
reap()

# What CRIU says reaches the terminal escaped too.
noisy = os.path.join(fake_dir, "criu-noisy")
with open(noisy, "w") as f:
    f.write("#!/bin/sh\n"
            "if [ \"$1\" = --version ]; then echo 'Version: 4.2.1'; exit 0; fi\n"
            "printf '\\033[2J\\033]0;owned\\007\\302\\233 CRIU \\377 says\\n'; exit 1\n")
os.chmod(noisy, 0o755)
r = run_bytes("check", "--criu", noisy)
check(r.returncode == 5 and not raw_controls(r.stdout + r.stderr)
      and b"\\x1b[2J\\x1b]0;owned\\x07\\u009b CRIU \\xff says\\n" in r.stderr, "check: CRIU's output is escaped",
      repr(r.stdout + r.stderr))
r = run_bytes("check", "--criu", noisy, "--json")
error = (json_of(r.stdout) or {}).get("error", "")
check(r.returncode == 5 and "\\x1b[2J\\x1b]0;owned\\x07\\u009b CRIU \\xff says\\n" in error and not raw_controls(r.stdout),
      "check --json: CRIU's output in valid JSON", repr(r.stdout))

# Flags refused clearly, before anything runs.
closed = os.open(os.devnull, os.O_RDONLY)
os.close(closed)
r = run("restore", "--dir", ckpt2, "--inherit-fd", f"fd[{closed}]:stdin")
check(r.returncode == 64 and f"descriptor {closed} is not open" in r.stderr, "--inherit-fd with a closed descriptor",
      r.stderr)
r = run("restore", "--dir", ckpt2, "--inherit-fd", "3:stdin")
check(r.returncode == 64 and "fd[N]:KEY" in r.stderr, "--inherit-fd in another form", r.stderr)
r = run("restore", "--dir", ckpt2, "--wait")
check(r.returncode == 64 and "--restore-sibling" in r.stderr, "--wait needs --restore-sibling", r.stderr)
r = run("dump", "--pid", "1", "--dir", os.path.join(tmp, "x"), "--network-lock", "ebtables")
check(r.returncode == 64, "an unknown network lock is a usage error", r.stderr)
r = run("restore", "--dir", ckpt2, "--join-ns", "pid:1")
check(r.returncode == 1 and "--join-ns" in r.stderr, "a namespace CRIU cannot join is refused", r.stderr)
r = run("restore", "--dir", ckpt2, "--root", "rootfs")
check(r.returncode == 1 and "absolute path" in r.stderr, "a relative --root is refused", r.stderr)
big = os.path.join(tmp, "big")
with open(big, "wb") as f:
    f.write(b"x" * ((1 << 20) + 1))
r = run("dump", "--pid", str(os.getpid()), "--dir", os.path.join(tmp, "x"), "--runtime-file", f"big={big}")
check(r.returncode == 1 and "larger than 1048576 bytes" in r.stderr, "a runtime file over 1 MiB is refused", r.stderr)
r = run("dump", "--pid", str(os.getpid()), "--dir", os.path.join(tmp, "x"), "--runtime-file", "a/b=" + config)
check(r.returncode == 1 and "plain file name" in r.stderr, "a runtime file's name is a plain name", r.stderr)
r = run("dump", "--pid", str(os.getpid()), "--dir", os.path.join(tmp, "x"), "--annotation", "novalue")
check(r.returncode == 64 and "NAME=VALUE" in r.stderr, "an annotation is NAME=VALUE", r.stderr)
r = run("restore", "--help")
check("mnt[KEY]:HOST_PATH" in r.stdout and "mnt[/data]" not in r.stdout, "restore's help shows the restore form",
      r.stdout)

# Pre-dump chains. Where the kernel tracks changed memory, predump makes a layer and the final
# dump one on it; elsewhere predump fails saying why (exit 5) and makes nothing.
chain = os.path.join(tmp, "chain")
os.makedirs(chain, mode=0o700)
os.makedirs(os.path.join(tmp, "counter3"))
tree3 = subprocess.Popen([counter, os.path.join(tmp, "counter3")])
wait_for(lambda: count("parent", "counter3") >= 3)
tracks = subprocess.run(["criu", "check", "--feature", "mem_dirty_track"], capture_output=True).returncode == 0
r = run("predump", "--pid", str(tree3.pid), "--dir", os.path.join(chain, "p0"), "--json")
if tracks:
    check(r.returncode == 0 and json.loads(r.stdout).get("predump") is True, "predump makes a pre-dump",
          r.stdout + r.stderr)
    r = run("dump", "--pid", str(tree3.pid), "--dir", os.path.join(chain, "final"), "--parent",
            os.path.join(chain, "p0"), "--json")
    check(r.returncode == 0 and json.loads(r.stdout).get("parent") == os.path.join(chain, "p0"),
          "dump --parent makes the final layer", r.stdout + r.stderr)
    r = run("verify", "--dir", os.path.join(chain, "final"))
    check(r.returncode == 0, "the chain verifies", r.stderr)
    shutil.rmtree(chain)
    os.makedirs(chain, mode=0o700)
else:
    check(r.returncode == 5 and "CONFIG_MEM_SOFT_DIRTY" in r.stdout and not os.path.exists(os.path.join(chain, "p0")),
          "predump where the kernel cannot track memory: exit 5, and why", r.stdout + r.stderr)
    before = count("parent", "counter3")
    check(wait_for(lambda: count("parent", "counter3") > before + 2), "the tree runs on after a refused predump")
os.makedirs(os.path.join(tmp, "elsewhere"))
r = run("dump", "--pid", str(tree3.pid), "--dir", os.path.join(chain, "final"), "--parent",
        os.path.join(tmp, "elsewhere"))
check(r.returncode == 1 and "must be a folder beside the new checkpoint" in r.stderr, "a parent elsewhere is refused",
      r.stderr)
r = run("dump", "--pid", str(tree3.pid), "--dir", os.path.join(chain, "final"), "--auto-dedup")
check(r.returncode == 1 and "auto-dedup needs a parent" in r.stderr, "--auto-dedup without --parent is refused",
      r.stderr)
os.killpg(tree3.pid, signal.SIGKILL)
wait_for(lambda: (reap(), not os.path.exists(f"/proc/{tree3.pid}"))[1])

# verify checks a whole chain: two signed checkpoints made a layer and its parent as a dump on a
# parent makes them (the metadata's "chain" record, CRIU's link, signed again).
import hashlib


def make_layer(name, parent):
    folder = os.path.join(chain, name)
    shutil.copytree(ckpt, folder, symlinks=True)
    with open(os.path.join(folder, "metadata.json")) as f:
        metadata = json.load(f)
    bound = ""
    if parent:
        with open(os.path.join(chain, parent, "checkpoint.hmac"), "rb") as f:
            bound = hashlib.sha256(f.read()).hexdigest()
        os.symlink(f"../../{parent}/images", os.path.join(folder, "images", "parent"))
    metadata["nucleus"]["chain"] = {"predump": parent == "", "parent": parent, "parent_signature_sha256": bound}
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump(metadata, f)
    r = run("sign", "--dir", folder, "--format", "manifest")
    check(r.returncode == 0, f"{name} signed", r.stdout + r.stderr)


make_layer("p0", "")
make_layer("final", "p0")
r = run("verify", "--dir", os.path.join(chain, "final"))
check(r.returncode == 0, "verify: a chain", r.stdout + r.stderr)

# A chain as one stream: export --chain, whole and then leaving out (--have) the layer a receiver
# holds, and import --chain into a store; refused clearly: a --have that is not a SHA-256, --have
# without --chain, a layer with a parent exported alone, each importer given the other's stream.
chain_xfer = os.path.join(tmp, "chain-xfer")
os.makedirs(chain_xfer, mode=0o700)
whole = os.path.join(chain_xfer, "whole.stream")
r = run("export", "--chain", "--dir", os.path.join(chain, "final"), "--output", whole, "--json")
exported = json_of(r.stdout.encode()) or {}
check(r.returncode == 0 and exported.get("dir") == os.path.join(chain, "final") and exported.get("output") == whole,
      "export --chain writes the whole chain", r.stdout + r.stderr)
store = os.path.join(chain_xfer, "store")
r = run("import", "--chain", "--dir", store, "--input", whole, "--json")
imported = json_of(r.stdout.encode()) or {}
check(r.returncode == 0 and imported.get("store") == store and imported.get("dir") == os.path.join(store, "final")
      and imported.get("signature") == "valid, and its chain" and imported.get("format") == "manifest",
      "import --chain names the store and its newest layer", r.stdout + r.stderr)
check(os.path.isdir(store) and sorted(os.listdir(store)) == ["final", "p0"]
      and os.path.islink(os.path.join(store, "final", "images", "parent"))
      and os.readlink(os.path.join(store, "final", "images", "parent")) == "../../p0/images",
      "import --chain makes each layer beside its parent", str(os.listdir(store) if os.path.isdir(store) else None))
r = run("verify", "--dir", os.path.join(store, "final"))
check(r.returncode == 0, "the imported chain verifies", r.stdout + r.stderr)
r = run("import", "--chain", "--dir", store, "--input", whole)
check(r.returncode == 1 and "--have" in r.stderr, "import --chain refuses a layer the store holds already", r.stderr)
with open(os.path.join(chain, "p0", "checkpoint.hmac"), "rb") as f:
    p0_sha = hashlib.sha256(f.read()).hexdigest()
lacking = os.path.join(chain_xfer, "lacking.stream")
r = run("export", "--chain", "--dir", os.path.join(chain, "final"), "--have", p0_sha, "--output", lacking, "--json")
exported = json_of(r.stdout.encode()) or {}
pages = os.path.getsize(os.path.join(chain, "p0", "images", "pages-1.img"))
check(r.returncode == 0 and os.path.getsize(lacking) + pages <= os.path.getsize(whole),
      "export --chain --have leaves the layer held out", r.stdout + r.stderr)
held = os.path.join(chain_xfer, "held")
os.makedirs(held, mode=0o700)
shutil.copytree(os.path.join(chain, "p0"), os.path.join(held, "p0"))
r = run("import", "--chain", "--dir", held, "--input", lacking, "--json")
check(r.returncode == 0 and (json_of(r.stdout.encode()) or {}).get("dir") == os.path.join(held, "final")
      and run("verify", "--dir", os.path.join(held, "final")).returncode == 0,
      "import --chain beside the layer held completes the chain", r.stdout + r.stderr)
lacks = os.path.join(chain_xfer, "lacks")
r = run("import", "--chain", "--dir", lacks, "--input", lacking)
check(r.returncode == 1 and "'p0'" in r.stderr and not (os.path.isdir(lacks) and os.listdir(lacks)),
      "import --chain without the layer left out: refused, naming it", r.stderr)
refused = os.path.join(chain_xfer, "refused.stream")
r = run("export", "--chain", "--dir", os.path.join(chain, "final"), "--have", p0_sha.upper(), "--output", refused)
check(r.returncode == 1 and "64 lowercase hex digits" in r.stderr and not os.path.exists(refused),
      "export --have that is not a lowercase SHA-256: refused, nothing written", r.stderr)
r = run("export", "--dir", os.path.join(chain, "final"), "--have", p0_sha, "--output", refused)
check(r.returncode == 64 and "--chain" in r.stderr and not os.path.exists(refused), "--have needs --chain", r.stderr)
r = run("export", "--dir", os.path.join(chain, "final"), "--output", refused)
check(r.returncode == 1 and "export --chain" in r.stderr and not os.path.exists(refused),
      "export of a layer with a parent says to export its chain", r.stderr)
from_plain = os.path.join(chain_xfer, "from-plain")
r = run("import", "--chain", "--dir", from_plain, "--input", stream)
check(r.returncode == 6 and "holds one checkpoint, not a chain" in r.stderr
      and not (os.path.isdir(from_plain) and os.listdir(from_plain)), "import --chain of a checkpoint's stream", r.stderr)
r = run("import", "--dir", os.path.join(chain_xfer, "one"), "--input", whole)
check(r.returncode == 6 and "import --chain" in r.stderr and not os.path.exists(os.path.join(chain_xfer, "one")),
      "import of a chain stream says to import it with --chain", r.stderr)
with open(os.path.join(chain, "p0", "images", "inventory.img"), "r+b") as f:
    f.seek(2)
    byte = f.read(1)
    f.seek(2)
    f.write(bytes([byte[0] ^ 0x80]))
r = run("verify", "--dir", os.path.join(chain, "final"))
check(r.returncode == 6 and "parent checkpoint 'p0'" in r.stderr, "verify: a chain whose parent changed", r.stderr)
r = run("restore", "--dir", os.path.join(chain, "final"))
check(r.returncode == 6 and "parent checkpoint 'p0'" in r.stderr, "restore: a chain whose parent changed", r.stderr)

# Ed25519: this key store is host A, which signs; host B, a key store of its own holding only A's
# public key, verifies and restores what A dumped, and cannot sign anything A accepts.
os.makedirs(os.path.join(tmp, "b-keys"), mode=0o700)
env_b = dict(env, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "b-keys", "key"))


def run_b(*args):
    return subprocess.run([cli, *args], env=env_b, capture_output=True, text=True, timeout=120)


public_key_file = os.path.join(tmp, "a.pub")
r = run("keygen", "--ed25519", "--public-key-out", public_key_file, "--json")
keygen = json_of(r.stdout.encode()) or {}
key_id = keygen.get("key_id", "")
check(r.returncode == 0 and keygen.get("created") is True and len(key_id) == 32 and os.path.isfile(public_key_file),
      "keygen --ed25519 makes the key and writes its public key file", r.stdout + r.stderr)
r = run("keygen", "--ed25519", "--public-key-out", public_key_file)
check(r.returncode == 1 and "--public-key-out" in r.stderr and "remove it first" in r.stderr,
      "keygen --ed25519 does not overwrite a public key file", r.stderr)
os.makedirs(os.path.join(tmp, "counter4"))
tree4 = subprocess.Popen([counter, os.path.join(tmp, "counter4")])
wait_for(lambda: count("parent", "counter4") >= 3)
ed_ckpt = os.path.join(tmp, "ed25519")
r = run("dump", "--pid", str(tree4.pid), "--dir", ed_ckpt, "--sign", "ed25519", "--json")
dumped = json_of(r.stdout.encode()) or {}
check(r.returncode == 0 and dumped.get("signed_with") == "ed25519" and dumped.get("key_id") == key_id,
      "dump --sign ed25519 signs with the host's key and says so", r.stdout + r.stderr)
wait_for(lambda: (reap(), not os.path.exists(f"/proc/{tree4.pid}"))[1])
r = run("inspect", "--dir", ed_ckpt)
check(r.returncode == 0 and "signed with:       ed25519" in r.stdout and key_id in r.stdout,
      "inspect shows which key signed", r.stdout + r.stderr)
r = run_b("verify", "--dir", ed_ckpt)
check(r.returncode == 6 and key_id in r.stderr and "does not trust" in r.stderr and "trust add" in r.stderr,
      "verify on a host that does not trust the key: refused, saying how to trust it", r.stderr)
r = run_b("trust", "add", public_key_file)
check(r.returncode == 0, "trust add the public key file", r.stdout + r.stderr)
r = run_b("verify", "--dir", ed_ckpt, "--json")
verified = json_of(r.stdout.encode()) or {}
check(r.returncode == 0 and verified.get("signed_with") == "ed25519" and verified.get("key_id") == key_id,
      "verify on the host holding only the public key", r.stdout + r.stderr)
at_dump = count("parent", "counter4")
r = run_b("restore", "--dir", ed_ckpt)
check(r.returncode == 0 and wait_for(lambda: count("parent", "counter4") > at_dump + 3),
      "restore on the host holding only the public key", r.stdout + r.stderr)
os.killpg(tree4.pid, signal.SIGKILL)
wait_for(lambda: (reap(), not os.path.exists(f"/proc/{tree4.pid}"))[1])
check(sorted(os.listdir(os.path.join(tmp, "b-keys"))) == ["trusted-keys"], "host B holds no key of its own",
      str(os.listdir(os.path.join(tmp, "b-keys"))))
with open(os.path.join(ed_ckpt, "metadata.json"), "r+") as f:
    f.seek(0, os.SEEK_END)
    f.write(" ")
for kind in (["--ed25519"], []):
    r = run_b("sign", "--dir", ed_ckpt, "--format", "manifest", *kind)
    check(r.returncode == 0, f"host B signs a changed folder with its own key {kind}", r.stdout + r.stderr)
    r = run("verify", "--dir", ed_ckpt)
    check(r.returncode == 6 and ("does not trust" in r.stderr if kind else "HMAC mismatch" in r.stderr),
          f"host A refuses what host B signed {kind}", r.stderr)
r = run("sign", "--dir", ed_ckpt, "--ed25519", "--format", "seed")
check(r.returncode == 1 and "HMAC-only" in r.stderr, "sign --ed25519 in the seed format is refused", r.stderr)
r = run("dump", "--pid", "1", "--dir", os.path.join(tmp, "never"), "--sign", "rsa")
check(r.returncode == 64, "dump --sign takes hmac or ed25519 only", r.stderr)
r = run("trust", "add", ckpt)
check(r.returncode != 0 and r.stderr, "trust add of something that is not a key file is refused", r.stderr)
r = run("trust", "add", "--help")
check(r.returncode == 0 and "Usage:" in r.stdout, "trust add --help", r.stdout + r.stderr)

for sub in ["check", "dump", "predump", "restore", "sign", "verify", "inspect", "keygen", "export", "import"]:
    r = run(sub, "--help")
    check(r.returncode == 0 and "Usage:" in r.stdout, f"{sub} --help", r.stdout + r.stderr)

shutil.rmtree(tmp, ignore_errors=True)
finish("cli")
