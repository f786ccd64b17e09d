#!/usr/bin/env python3
"""Containers with the real CRIU, one command each way: `nucleus-checkpoint dump --pid P --dir D`
and `nucleus-checkpoint restore --dir D`, with nothing else but the descriptors to inherit.
 - the project's own launcher (tests/container/launcher.c): new namespaces, a busybox rootfs,
   pivot_root, a bind-mounted volume, /dev binds from the host, pipe stdio, a TCP server: the
   counter goes on in the volume, the restored stdout reaches a new pipe, the server answers;
 - a container in a pre-made network namespace (ip netns add): restored into the same one;
 - a container of Debian's runc, its stdout a log file on the host;
 - the options the dump used are applied by a plain restore (an established TCP connection);
 - failures that say what to do: a rootfs gone, a volume gone.
Usage: container_test.py NUCLEUS_CHECKPOINT LAUNCHER SOURCE_DIR TMPDIR"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from test_support import become_subreaper, check, finish, reap, wait_for

cli, launcher, source, tmp_root = sys.argv[1:5]
# Under /var/tmp (root's, sticky), not the build folder: a restore refuses rootfs and volume paths
# below a folder another user could change, and a clone may live in anyone's home.
tmp = tempfile.mkdtemp(prefix="nucleus-container-test-", dir="/var/tmp")
os.makedirs(os.path.join(tmp, "keys"), mode=0o700)
env = dict(os.environ, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "keys", "key"))
become_subreaper()

to_kill = []
cgroups = []


def run(*args, pass_fds=()):
    return subprocess.run([cli, "--json", *args], env=env, capture_output=True, text=True, timeout=180,
                          pass_fds=pass_fds)


def result(r):
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"status": "unparsable", "error": r.stdout + r.stderr}


def kill(pid):
    if pid <= 0:
        return
    try:
        os.kill(pid, signal.SIGKILL)  # a PID-namespace init ignores SIGTERM
    except ProcessLookupError:
        pass


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or -1)
    except (OSError, ValueError):
        return -1


def make_rootfs(path):
    subprocess.run(["sh", os.path.join(source, "tests/container/make_rootfs.sh"), path], check=True,
                   capture_output=True)


def launch(name, *extra, volume=None):
    """Starts a container; returns (launcher process, init PID, its folder)."""
    base = os.path.join(tmp, name)
    volume = volume or os.path.join(base, "volume")
    os.makedirs(volume)
    make_rootfs(os.path.join(base, "rootfs"))
    # A cgroup of its own, as runtimes give each container (in CRIU's own cgroups, a tree with a
    # cgroup namespace of its own does not restore: "cg: No set 1 found").
    cgroup = f"/sys/fs/cgroup/unified/nc-test-{name}-{os.getpid()}"
    cgroups.append(cgroup)
    proc = subprocess.Popen([launcher, "--rootfs", os.path.join(base, "rootfs"), "--volume", volume,
                             "--cgroup2", cgroup, *extra], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()
    pid = int(first[1])
    to_kill.append(pid)
    wait_for(lambda: read_int(os.path.join(volume, "counter")) > 3)
    return proc, pid, base


def answers(pid, port):
    """What the TCP server in PID's network namespace answers."""
    r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "curl", "-s", "--http0.9", "--max-time", "5",
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=20)
    return r.stdout.strip()


def cgroup2_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return next((line.strip()[3:] for line in f if line.startswith("0::")), "")


def restored_pid(r):
    pid = result(r).get("pid", 0)
    if pid:
        to_kill.append(pid)
    return pid


# --- The launcher's container: volume, /dev binds, pipe stdio, TCP server; dumped and killed ---
proc, pid, base = launch("box", "--tcp-port", "8080")
counter = os.path.join(base, "volume", "counter")
check(answers(pid, 8080).isdigit(), "the container's TCP server answers before the dump")
d = os.path.join(tmp, "ckpt-box")
r = run("dump", "--pid", str(pid), "--dir", d, "--id", "box")
if check(r.returncode == 0, "dump of a container with one command", r.stdout + r.stderr):
    meta = json.load(open(os.path.join(d, "metadata.json")))["nucleus"]
    c = meta["container"]
    check(c["own_mount_namespace"] and os.path.samefile(c["root"], os.path.join(base, "rootfs")),
          "the rootfs as the host sees it is recorded", json.dumps(c))
    mounts = {m["mountpoint"]: m for m in c["mounts"]}
    check("/data" in mounts and os.path.samefile(mounts["/data"]["source"], os.path.join(base, "volume")),
          "the volume is declared external with its host source", json.dumps(c["mounts"]))
    check("/dev/null" in mounts and mounts["/dev/null"]["source"] == "/dev/null",
          "the /dev binds from the host are declared external", json.dumps(c["mounts"]))
    check(any(x["fd"] == 1 and x["key"].startswith("pipe:[") for x in c["descriptors"]),
          "the root's stdout pipe is recorded", json.dumps(c["descriptors"]))
    check(c["own_network_namespace"], "the container's own network namespace is recorded", json.dumps(c))
proc.wait(timeout=30)  # the tree was killed once the checkpoint was in place: its pipes closed
before = read_int(counter)
reap()

r = run("restore", "--dir", d, "--id", "db")
check(r.returncode == 6 and "checkpoint of container 'box', not of 'db'" in result(r).get("error", ""),
      "another container's checkpoint is refused (--id)", r.stdout)
out_r, out_w = os.pipe()
r = run("restore", "--dir", d, "--id", "box", "--inherit-fd", f"fd[{out_w}]:stdout", pass_fds=(out_w,))
os.close(out_w)
new_pid = restored_pid(r)
if check(r.returncode == 0 and new_pid > 0, "restore of a container with one command (plus its stdout)",
         r.stdout + r.stderr):
    check(wait_for(lambda: read_int(counter) > before + 3), "the counter goes on in the volume",
          f"{before} -> {read_int(counter)}")
    os.set_blocking(out_r, False)
    got = b""
    end = time.time() + 5
    while time.time() < end and b"\n" not in got:
        try:
            got += os.read(out_r, 4096)
        except BlockingIOError:
            time.sleep(0.1)
    line = got.split(b"\n")[0].strip()
    check(line.isdigit() and int(line) > before, "the restored container's stdout reaches the new pipe", repr(got))
    check(answers(new_pid, 8080).isdigit(), "the TCP server answers inside the restored network namespace")
    check(os.readlink(f"/proc/{new_pid}/ns/net") != os.readlink("/proc/self/ns/net"),
          "the restored container has a network namespace of its own")
    check(cgroup2_of(new_pid) == f"/nc-test-box-{os.getpid()}", "the container's cgroup is kept",
          cgroup2_of(new_pid))
    # The restored container dumped again: the volume then stays as this checkpoint left it (a
    # file open at dump must have the same size at restore, and the first checkpoint's run has
    # changed it since).
    d = os.path.join(tmp, "ckpt-box-again")
    r = run("dump", "--pid", str(new_pid), "--dir", d, "--id", "box")
    check(r.returncode == 0, "a restored container dumps again", r.stdout + r.stderr)
    wait_for(lambda: not os.path.exists(f"/proc/{new_pid}/stat") or open(f"/proc/{new_pid}/stat").read().split()[2] == "Z")
    before = read_int(counter)
os.close(out_r)
reap()

# --- Failures that say what to do ---
os.rename(os.path.join(base, "rootfs"), os.path.join(base, "rootfs.moved"))
r = run("restore", "--dir", d)
check(r.returncode != 0 and "rootfs" in result(r).get("error", "") and "--root" in result(r).get("error", ""),
      "a rootfs gone: the error names it and --root", r.stdout)
os.rename(os.path.join(base, "rootfs.moved"), os.path.join(base, "rootfs"))
os.rename(os.path.join(base, "volume"), os.path.join(base, "volume.moved"))
r = run("restore", "--dir", d)
err = result(r).get("error", "")
check(r.returncode != 0 and "/data" in err and "external mnt[/data]:" in err,
      "a volume gone: the error names the mount and the option", r.stdout)
moved_cgroup = f"/nc-test-moved-{os.getpid()}"
cgroups.append("/sys/fs/cgroup/unified" + moved_cgroup)
r = run("restore", "--dir", d, "--external", f"mnt[/data]:{os.path.join(base, 'volume.moved')}",
        "--cgroup-root", f":{moved_cgroup}")
moved_pid = restored_pid(r)
check(r.returncode == 0 and wait_for(lambda: read_int(os.path.join(base, "volume.moved", "counter")) > before + 3),
      "a volume in a new place, given at restore", r.stdout + r.stderr)
check(moved_pid > 0 and cgroup2_of(moved_pid) == moved_cgroup, "the container moved to another cgroup (cgroup-root)",
      cgroup2_of(moved_pid) if moved_pid > 0 else "")
kill(moved_pid)

# --- A container in a pod's pre-made network namespace ---
netns = f"nc-test-{os.getpid()}"
subprocess.run(["ip", "netns", "add", netns], check=True)
try:
    ns_path = f"/run/netns/{netns}"
    proc, pid, base = launch("pod", "--netns", ns_path)
    d = os.path.join(tmp, "ckpt-pod")
    r = run("dump", "--pid", str(pid), "--dir", d)
    if check(r.returncode == 0, "dump of a container in a pre-made network namespace", r.stdout + r.stderr):
        ns = json.load(open(os.path.join(d, "metadata.json")))["nucleus"]["container"]["namespaces"]
        check(len(ns) == 1 and ns[0]["type"] == "net" and ns[0]["path"] == ns_path,
              "the pod's network namespace is declared external", json.dumps(ns))
    proc.wait(timeout=30)
    rules = subprocess.run(["ip", "netns", "exec", netns, "iptables-save"], capture_output=True, text=True).stdout
    check("CRIU" not in rules, "the pod's network is not left locked while its container is checkpointed", rules)
    reap()
    r = run("restore", "--dir", d)
    new_pid = restored_pid(r)
    if check(r.returncode == 0, "restore into the pod's network namespace", r.stdout + r.stderr):
        check(os.stat(f"/proc/{new_pid}/ns/net").st_ino == os.stat(ns_path).st_ino,
              "the restored container is in the same network namespace (same inode)")
        kill(new_pid)
finally:
    subprocess.run(["ip", "netns", "del", netns])

# --- Options the dump used are applied by a plain restore: an established TCP connection ---
# (A restore without tcp-established refuses such an image: "Connected TCP socket in image".)
talk = "nc -ll -p 9000 -e cat & sleep 0.3; i=0; while :; do i=$((i+1)); echo tcp$i; sleep 0.2; done | nc 127.0.0.1 9000"
proc, pid, base = launch("tcp", "--extra", talk)


def established(p):
    r = subprocess.run(["nsenter", f"--net=/proc/{p}/ns/net", "cat", "/proc/net/tcp"], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines()[1:] if line.split()[3] == "01"]  # TCP_ESTABLISHED


wait_for(lambda: len(established(pid)) == 2)
d = os.path.join(tmp, "ckpt-tcp")
r = run("dump", "--pid", str(pid), "--dir", d, "--tcp-established", "--leave-running")
check(r.returncode == 0, "dump of a container with an established connection (--tcp-established --leave-running)",
      r.stdout + r.stderr)
check(wait_for(lambda: any(line.split()[2].endswith(":2328") for line in established(pid)), 5),
      "left running, the container keeps its connection", repr(established(pid)))
kill(pid)
proc.wait(timeout=30)
reap()
# Its stdout given a reader again: a container writing into a pipe nobody reads dies of SIGPIPE.
out_r, out_w = os.pipe()
r = run("restore", "--dir", d, "--inherit-fd", f"fd[{out_w}]:stdout", pass_fds=(out_w,))
os.close(out_w)
os.set_blocking(out_r, False)
new_pid = restored_pid(r)
if check(r.returncode == 0, "a restore of a dump made with --tcp-established, without repeating it", r.stdout + r.stderr):
    check(wait_for(lambda: any(line.split()[2].endswith(":2328") for line in established(new_pid)), 5),
          "the client's established connection to port 9000 survives in the restored namespace",
          repr(established(new_pid)))
    kill(new_pid)
os.close(out_r)

# --- A volume below a folder another user owns is never bound by its name alone: the signature
# covers the recorded name, not what the name leads to, and that user could swap the folder for a
# symlink to anything of root's ---
home = os.path.join(tmp, "userhome")
os.makedirs(home)
os.chown(home, 65534, 65534)
secret = os.path.join(tmp, "secret")
os.makedirs(secret, mode=0o700)
proc, pid, base = launch("home", volume=os.path.join(home, "vol"))
d = os.path.join(tmp, "ckpt-home")
r = run("dump", "--pid", str(pid), "--dir", d)
check(r.returncode == 0, "dump of a container whose volume is in a user's folder", r.stdout + r.stderr)
proc.wait(timeout=30)
reap()
r = run("restore", "--dir", d)
err = result(r).get("error", "")
check(r.returncode != 0 and f"below {home}, which someone other than root can change" in err and
      "external mnt[/data]:" in err, "a volume below a user's folder is refused, naming the folder and the option",
      r.stdout)
os.rename(os.path.join(home, "vol"), os.path.join(home, "vol.old"))  # what the folder's owner may do
os.symlink(secret, os.path.join(home, "vol"))
r = run("restore", "--dir", d)
check(r.returncode != 0 and "has a symlink in its path" in result(r).get("error", ""),
      "a volume swapped for a symlink to root's folder is refused", r.stdout)
check(not os.path.exists(os.path.join(secret, "counter")), "nothing was written into root's folder")

# --- A container of Debian's runc, its stdout a log file on the host ---
bundle = os.path.join(tmp, "runc")
runc_root = os.path.join(tmp, "runc-state")
cid = f"nc-{os.getpid()}"
subprocess.run(["bash", os.path.join(source, "tests/container/runc_bundle.sh"), bundle], check=True,
               capture_output=True)
log = open(os.path.join(bundle, "out.log"), "ab")
r = subprocess.run(["runc", "--root", runc_root, "run", "-d", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                   stdout=log, stderr=log, timeout=60)
log.close()
try:
    if check(r.returncode == 0, "runc runs the bundle"):
        state = json.loads(subprocess.run(["runc", "--root", runc_root, "state", cid], capture_output=True,
                                          text=True).stdout)
        pid = state["pid"]
        to_kill.append(pid)
        counter = os.path.join(bundle, "volume", "counter")
        wait_for(lambda: read_int(counter) > 3)
        d = os.path.join(tmp, "ckpt-runc")
        r = run("dump", "--pid", str(pid), "--dir", d)
        check(r.returncode == 0, "dump of a runc container with one command", r.stdout + r.stderr)
        subprocess.run(["runc", "--root", runc_root, "delete", "-f", cid], capture_output=True)
        reap()
        before = read_int(counter)
        r = run("restore", "--dir", d)
        new_pid = restored_pid(r)
        if check(r.returncode == 0, "restore of a runc container with one command", r.stdout + r.stderr):
            check(wait_for(lambda: read_int(counter) > before + 3), "the runc container's counter goes on",
                  f"{before} -> {read_int(counter)}")
            size = os.path.getsize(os.path.join(bundle, "out.log"))
            check(wait_for(lambda: os.path.getsize(os.path.join(bundle, "out.log")) > size),
                  "the restored runc container writes on into its log on the host")
finally:
    subprocess.run(["runc", "--root", runc_root, "delete", "-f", cid], capture_output=True)
    for p in to_kill:
        kill(p)
    reap()
    time.sleep(0.5)
    # runc's container cgroups are named after it, in every hierarchy (the restore recreated them).
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if top.count("/") > 7:
            dirs[:] = []
        elif cid in dirs:
            cgroups.append(os.path.join(top, cid))
    for cg in cgroups:
        try:
            os.rmdir(cg)
        except OSError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)

finish("container")
