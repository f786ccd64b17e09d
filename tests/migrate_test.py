#!/usr/bin/env python3
"""Migration between two "hosts" on one machine, with the real CRIU: two network namespaces joined
by a veth pair (10.201.N.1/24 and .2/24), each with its own storage folder; `receive` runs in one,
`migrate` in the other, or the C example's (examples/migrate.c: nc_receive, nc_migrate) on either
end; one receiver may take several in turn (--count). The workload is a counter in a PID namespace of its own (so that its PIDs are free on the
receiver while the source is stopped), appending 1, 2, 3... to a file both see:
 - A to B and back (B to A, zstd) with the CLI, then again with the C example on both ends, and
   back with the C sender (zstd) and the CLI receiver: the count goes on on the other side, never
   repeats or goes back, the source is gone, the restored tree is in the receiver's network
   namespace, the receiver committed what it restored, and the report has the downtime, phases,
   bytes (fewer with zstd) and 0 pre-dump rounds with the reason;
 - no receiver: nothing is dumped and the counter never stops;
 - a proxy flipping one byte of the stream: the receiver refuses it (integrity), the source resumes
   and counts on, nothing is committed on B;
 - the receiver killed mid-transfer: the source resumes, nothing is committed on B;
 - through C: no receiver (the example connects first: nothing is dumped); a receiver holding
   another HMAC key, and one holding none: nc_migrate fails with the receiver's status
   (NC_E_INTEGRITY, NC_E_KEY), the source resumes and counts on, nothing is committed on B;
 - the connection reset right after the source's commit, before the receiver's "ok" (the receiver
   held stopped meanwhile): the tree runs on the receiver, whose CLI (JSON "source_told": false) and
   C example (source_told: 0) succeed and say on stderr that the source's copy must be killed; the
   source fails with NC_E_UNCONFIRMED and its copy stays stopped until killed;
 - post-copy with the C example (send --post-copy), from wherever the tree then runs to the other
   host (fs.pipe-max-size raised to 4 MiB first if lower): the tree's memory follows it through
   the page stream (pages_sent > 0), the count goes on there in order, the source is gone;
 - Ed25519, each host with a key of its own (--sign ed25519): a source that does not trust the
   receiver's key refuses before anything is dumped (the receiver's answers could not be told from
   forged ones); there with the receiver's key given (--receiver-key) rather than trusted, and
   back once each trusts the other's; the report names the key that answered.
Commands enter a namespace with `nsenter --net` rather than `ip netns exec`, which also makes a
mount namespace of its own that CRIU would then have to dump and restore.
Usage: migrate_test.py NUCLEUS_CHECKPOINT MIGRATE_EXAMPLE TMPDIR"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from test_support import become_subreaper, check, finish, join_hosts, reap, wait_for

cli, c_example, tmp_root = sys.argv[1:4]
os.makedirs(tmp_root, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="migrate-", dir=tmp_root)
os.makedirs(os.path.join(tmp, "keys"), mode=0o700)
env = dict(os.environ, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "keys", "key"))
become_subreaper()

tag = os.getpid() % 100000
net = {"A": f"ncmA{tag}", "B": f"ncmB{tag}"}
subnet = f"10.201.{os.getpid() % 250}"
addr = {"A": f"{subnet}.1", "B": f"{subnet}.2"}
store = {h: os.path.join(tmp, f"host{h}") for h in "AB"}
counter = os.path.join(tmp, "counter.log")
to_kill = []  # PIDs to SIGKILL at the end (a PID-namespace init ignores SIGTERM)

PROXY = r"""
import os, socket, struct, sys, threading
listen, target, mode, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
srv = socket.create_server((listen.rsplit(":", 1)[0], int(listen.rsplit(":", 1)[1])))
print("ready", flush=True)
client, _ = srv.accept()
upstream = socket.create_connection((target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1])))
ready_passed = threading.Event()  # "reset": the receiver's "ready" went by, what follows is the commit
def pump(src, dst, forward):
    seen = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            if forward:
                if mode == "flip" and seen <= at < seen + len(data):
                    data = data[:at - seen] + bytes([data[at - seen] ^ 0x40]) + data[at - seen + 1:]
                if mode == "stall" and seen + len(data) > at:
                    dst.sendall(data[:at - seen])
                    print("stalled", flush=True)
                    sys.stdin.readline()
                    data = data[at - seen:]
                if mode == "reset" and ready_passed.is_set():
                    print("commit", flush=True)
                    sys.stdin.readline()
                    for s in (client, upstream):  # closed by a reset (RST), not a FIN
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    dst.sendall(data)
                    os._exit(0)
            elif mode == "reset" and b'"ready":true' in data:
                ready_passed.set()
            seen += len(data)
            dst.sendall(data)
    except OSError:
        for s in (client, upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
back = threading.Thread(target=pump, args=(upstream, client, False))
back.start()
pump(client, upstream, True)
back.join()
"""


def in_host(h, *args):
    return ["nsenter", f"--net=/run/netns/{net[h]}", *args]


def run_in(h, *args, timeout=180, host_env=None):
    return subprocess.run(in_host(h, cli, "--json", *args), env=host_env or env, capture_output=True, text=True,
                          timeout=timeout)


def result(r_stdout):
    try:
        return json.loads(r_stdout)
    except json.JSONDecodeError:
        return {"status": "unparsable", "error": r_stdout}


def kill(pid):
    if pid > 0:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def counts():
    try:
        with open(counter) as f:
            return [int(line) for line in f.read().split()]
    except (OSError, ValueError):
        return []


def in_order(values):
    """1, 2, 3... with nothing repeated, skipped or going back: one counter, on one side at a time."""
    return values == list(range(1, len(values) + 1))


def state(pid):
    """The process's state letter (T: stopped), X once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def alive(pid):
    return state(pid) not in ("Z", "X")


def net_of(pid):
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def stored(h):
    """The committed folders in a host's store (staging folders are hidden)."""
    return sorted(n for n in os.listdir(store[h]) if not n.startswith("."))


def listening(h, command, receiver_env):
    """Starts a receiver in host h; returns it once it listens."""
    proc = subprocess.Popen(in_host(h, *command), env=receiver_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    to_kill.append(proc.pid)
    line = proc.stderr.readline()
    check("listening on" in line, f"the receiver in {h} listens", line)
    return proc


def receiver(h, port, receiver_env=env):
    """`nucleus-checkpoint receive` in host h, listening."""
    return listening(h, [cli, "--json", "receive", "--listen", f"{addr[h]}:{port}", "--dir", store[h]], receiver_env)


def c_receiver(h, port, receiver_env=env):
    """`migrate receive` (the C example) in host h, listening."""
    return listening(h, [c_example, "receive", f"{addr[h]}:{port}", store[h]], receiver_env)


def proxy(h, port, target_port, mode, at):
    proc = subprocess.Popen(in_host(h, sys.executable, "-c", PROXY, f"{addr[h]}:{port}", f"{addr[h]}:{target_port}",
                                    mode, str(at)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    to_kill.append(proc.pid)
    check(proc.stdout.readline().strip() == "ready", f"the {mode} proxy listens")
    return proc


def collect(proc):
    """The output of a helper that should be ending; killed, its output kept, if still running after a minute
    (a step before it failed), so that the steps after it still run and report."""
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return out, (err or "") + "\n(killed: still running after 60 s)"


def stop(proc):
    """Waits a little for a helper that should be ending, then kills it."""
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def migrate(h, pid, to, name, *extra, host_env=None):
    return run_in(h, "migrate", "--pid", str(pid), "--to", to, "--dir", os.path.join(store[h], name), *extra,
                  host_env=host_env)


def c_migrate(h, pid, to, name, *extra):
    """`migrate send` (the C example) in host h."""
    return subprocess.run(in_host(h, c_example, "send", str(pid), to, os.path.join(store[h], name), *extra), env=env,
                          capture_output=True, text=True, timeout=180)


def host_of(pid):
    """The host whose network namespace pid is in (None: neither)."""
    return next((h for h in "AB" if net_of(pid) == os.stat(f"/run/netns/{net[h]}").st_ino), None)


def fields(text):
    """The C example's `name: value` lines, numbers as numbers."""
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            found[name] = int(value) if value.isdigit() else value
    return found


def goes_on(pid, seconds=1.0):
    """pid runs and the counter grows, still in order."""
    before = len(counts())
    time.sleep(seconds)
    values = counts()
    return alive(pid) and len(values) > before and in_order(values)


try:
    for h in "AB":
        os.makedirs(store[h], mode=0o700)
    join_hosts(net, addr, {"A": f"ncmva{tag}", "B": f"ncmvb{tag}"})
    r = subprocess.run([cli, "keygen", "--json"], env=env, capture_output=True, text=True)
    check(r.returncode == 0, "the key both hosts share is made", r.stdout + r.stderr)

    # The workload in A: setsid inside, so that its PID namespace's init leads its own session.
    workload = subprocess.Popen(
        in_host("A", "unshare", "--pid", "--fork", "setsid", "sh", "-c",
                f"i=0; while :; do i=$((i+1)); echo $i >> {counter}; sleep 0.05; done"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    to_kill.append(workload.pid)
    wait_for(lambda: os.path.exists(f"/proc/{workload.pid}/task/{workload.pid}/children") and
             open(f"/proc/{workload.pid}/task/{workload.pid}/children").read().split())
    pid = int(open(f"/proc/{workload.pid}/task/{workload.pid}/children").read().split()[0])
    to_kill.append(pid)
    check(wait_for(lambda: len(counts()) > 5), "the counter runs in A")

    # --- No receiver: nothing is dumped, the counter never stops ---
    start = time.time()
    r = migrate("A", pid, f"{addr['B']}:7009", "nobody")
    err = result(r.stdout).get("error", "")
    check(r.returncode == 7 and "cannot connect to the receiver" in err and "nothing was dumped" in err,
          "no receiver: a clear error (NC_E_IO)", r.stdout + r.stderr)
    check(time.time() - start < 15 and not os.path.exists(os.path.join(store["A"], "nobody")),
          "no receiver: nothing was dumped", str(os.listdir(store["A"])))
    check(goes_on(pid), "no receiver: the counter runs on in A")

    # --- One byte flipped on the way: refused on B, resumed on A, nothing committed on B ---
    rx = receiver("B", 7001)
    px = proxy("B", 7101, 7001, "flip", 100000)
    r = migrate("A", pid, f"{addr['B']}:7101", "tampered")
    out, _ = collect(rx)
    err = result(r.stdout).get("error", "")
    check(r.returncode == 6 and "the receiver did not restore the tree" in err,
          "a flipped byte: the receiver refuses the stream (NC_E_INTEGRITY) and says so", r.stdout + r.stderr)
    check(rx.returncode == 6 and result(out).get("status") == "NC_E_INTEGRITY", "a flipped byte: the receiver fails",
          out)
    check(stored("B") == [] and os.listdir(store["B"]) == [], "a flipped byte: nothing is committed (or left) on B",
          str(os.listdir(store["B"])))
    check(goes_on(pid), "a flipped byte: the source resumed and counts on")
    check(os.path.exists(os.path.join(store["A"], "tampered", "checkpoint.hmac")), "a flipped byte: the checkpoint "
          "stays in A")
    stop(px)

    # --- The receiver killed mid-transfer: resumed on A, nothing committed on B ---
    rx = receiver("B", 7002)
    px = proxy("B", 7102, 7002, "stall", 100000)
    mig = subprocess.Popen(in_host("A", cli, "--json", "migrate", "--pid", str(pid), "--to", f"{addr['B']}:7102",
                                   "--dir", os.path.join(store["A"], "cut")),
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    check(px.stdout.readline().strip() == "stalled", "the stream is under way")
    check(not goes_on(pid, 0.5), "mid-transfer: the source is stopped")
    rx.kill()
    rx.wait(timeout=30)
    px.stdin.write("go\n")
    px.stdin.flush()
    out, errs = collect(mig)
    check(mig.returncode == 7 and result(out).get("status") == "NC_E_IO", "the receiver killed: migrate fails "
          "(NC_E_IO)", out + errs)
    check(stored("B") == [], "the receiver killed: nothing is committed on B", str(os.listdir(store["B"])))
    check(goes_on(pid), "the receiver killed: the source resumed and counts on")
    stop(px)

    # --- Through C, no receiver: the example connects first, so nothing is dumped ---
    r = c_migrate("A", pid, f"{addr['B']}:7009", "nobody-c")
    check(r.returncode == 7 and "cannot connect to the receiver" in r.stderr and "nothing was dumped" in r.stderr and
          not os.path.exists(os.path.join(store["A"], "nobody-c")), "C, no receiver: a clear error, nothing dumped",
          r.stdout + r.stderr)
    check(goes_on(pid), "C, no receiver: the counter runs on in A")

    # --- Through C, to a receiver that cannot check the sender's key: refused at the greeting, before
    # anything is dumped here ---
    os.makedirs(os.path.join(tmp, "other-keys"), mode=0o700)
    other_key = dict(env, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "other-keys", "key"))
    r = subprocess.run([cli, "keygen", "--json"], env=other_key, capture_output=True, text=True)
    check(r.returncode == 0, "another key is made", r.stdout + r.stderr)
    no_key = dict(env, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "other-keys", "none"))
    for port, label, receiver_env, status, code in ((7005, "another key", other_key, "NC_E_INTEGRITY", 6),
                                                    (7006, "no key", no_key, "NC_E_KEY", 8)):
        name = label.replace(" ", "-")
        left = os.listdir(store["B"])  # the killed receiver's staging folder above may be there
        rx = c_receiver("B", port, receiver_env)
        r = c_migrate("A", pid, f"{addr['B']}:{port}", name)
        _, rx_err = collect(rx)
        check(r.returncode == code and f"{status}: nc_migrate: the receiver refused the migration" in r.stderr,
              f"C, {label}: nc_migrate fails with the receiver's status ({status}) and says so", r.stdout + r.stderr)
        check(rx.returncode == code and f"{status}: nc_receive: " in rx_err, f"C, {label}: nc_receive fails ({status})",
              rx_err)
        check(os.listdir(store["B"]) == left, f"C, {label}: nothing is committed (or left) on B",
              str(os.listdir(store["B"])))
        check(goes_on(pid), f"C, {label}: the source counts on")
        check("nothing was dumped" in r.stderr and not os.path.exists(os.path.join(store["A"], name)),
              f"C, {label}: nothing was dumped in A", r.stderr)
        print(f"C, {label}: {r.stderr.strip()}")

    # --- A to B and back, with the CLI, then with the C example ---
    current, plain_bytes = pid, 0
    for label, src, dst, port, c_sends, c_receives, extra in (
            ("A to B", "A", "B", 7010, False, False, []),
            ("B to A (zstd)", "B", "A", 7011, False, False, ["--zstd"]),
            ("C: A to B", "A", "B", 7012, True, True, []),
            ("C: B to A (zstd, to the CLI's receive)", "B", "A", 7013, True, False, ["--zstd"])):
        rx = (c_receiver if c_receives else receiver)(dst, port)
        before = len(counts())
        to = f"{addr[dst]}:{port}"
        r = (c_migrate if c_sends else migrate)(src, current, to, f"leg-{port}", *extra)
        out, _ = collect(rx)
        report = fields(r.stdout) if c_sends else result(r.stdout)
        got = result(fields(out).get("reply", "")) if c_receives else result(out)
        moved = report.get("restored_pid", 0)
        if moved:
            to_kill.append(moved)
        if not check(r.returncode == 0 and rx.returncode == 0 and moved > 0, f"{label}: migrated",
                     r.stdout + r.stderr + out):
            break
        committed = got.get("dir", "")
        check(got.get("pid") == moved and report.get("restored_dir") == committed and
              os.path.dirname(committed) == store[dst] and os.path.basename(committed) in stored(dst) and
              (not c_receives or fields(out).get("restored_pid") == moved),
              f"{label}: the receiver restored what it committed, and the report says so", out + r.stdout)
        check((fields(out).get("source_told") == 1) if c_receives else got.get("source_told") is True,
              f"{label}: the receiver says the source was told", out)
        check(wait_for(lambda: not alive(current)), f"{label}: the source is gone")
        check(host_of(moved) == dst, f"{label}: the tree runs in {dst}'s network")
        check(goes_on(moved) and len(counts()) > before, f"{label}: the count goes on in {dst}, in order",
              str(counts()[-20:]))
        reason = report.get("rounds_reason", "")  # this kernel's lack of soft-dirty tracking, or rounds not made yet
        check(report.get("rounds") == 0 and ("CONFIG_MEM_SOFT_DIRTY" in reason or "not implemented" in reason),
              f"{label}: no pre-dump rounds, and why", r.stdout)
        sent = report.get("bytes_sent", 0)
        check(report.get("downtime_ms", 0) >= report.get("dump_ms", 0) > 0 and report.get("restore_ms", 0) > 0 and
              report.get("transfer_ms", 0) > 0 and (0 < sent < plain_bytes if extra else sent > 100000),
              f"{label}: the report's numbers" + (" (fewer bytes with zstd)" if extra else ""), r.stdout)
        plain_bytes = plain_bytes or sent
        print(f"{label}: {r.stdout.strip()}")
        current = moved

    # --- One receiver taking two migrations in turn (--count 2): the counter, then a second tree ---
    second = subprocess.Popen(in_host("A", "unshare", "--pid", "--fork", "setsid", "sleep", "1000"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    to_kill.append(second.pid)
    wait_for(lambda: open(f"/proc/{second.pid}/task/{second.pid}/children").read().split())
    sleeper = int(open(f"/proc/{second.pid}/task/{second.pid}/children").read().split()[0])
    to_kill.append(sleeper)
    rx = listening("B", [cli, "--json", "receive", "--listen", f"{addr['B']}:7014", "--dir", store["B"], "--count", "2"],
                   env)
    moved = []
    for tree, name in ((current, "first-of-two"), (sleeper, "second-of-two")):
        r = migrate("A", tree, f"{addr['B']}:7014", name)
        moved.append(result(r.stdout).get("restored_pid", 0))
        to_kill.append(moved[-1])
        check(r.returncode == 0 and moved[-1] > 0, f"--count 2: {name} migrated", r.stdout + r.stderr)
    out, _ = collect(rx)
    lines = [result(line) for line in out.splitlines()]
    check(rx.returncode == 0 and [line.get("pid") for line in lines] == moved,
          "--count 2: one receiver took both, reported one JSON line each, and exited", out)
    check(goes_on(moved[0]) and alive(moved[1]), "--count 2: both trees run in B")
    check(in_order(counts()), "the whole count: 1, 2, 3... never repeated, never back", str(counts()[-40:]))

    # --- The connection reset right after the commit, before the receiver's "ok": the receiver is
    # held stopped while the proxy passes the commit and resets both ends, so that its "ok" meets the
    # reset. The tree runs on the receiver, which succeeds but says the source was not told; the
    # source's copy stays stopped (NC_E_UNCONFIRMED) until the operator kills it. CLI, then C. ---
    current = moved[0]
    for label, src, dst, port, c_receives in (("CLI", "B", "A", 7015, False), ("C", "A", "B", 7016, True)):
        rx = (c_receiver if c_receives else receiver)(dst, port)
        px = proxy(dst, port + 100, port, "reset", 0)
        mig = subprocess.Popen(in_host(src, cli, "--json", "migrate", "--pid", str(current), "--to",
                                       f"{addr[dst]}:{port + 100}", "--dir", os.path.join(store[src], f"untold-{port}")),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        check(px.stdout.readline().strip() == "commit", f"untold, {label}: the source commits")
        os.kill(rx.pid, signal.SIGSTOP)
        check(wait_for(lambda: state(rx.pid) == "T"), f"untold, {label}: the receiver is held")
        px.stdin.write("go\n")
        px.stdin.flush()
        stop(px)
        os.kill(rx.pid, signal.SIGCONT)
        out, errs = collect(rx)
        sent, _ = collect(mig)
        restored = fields(out).get("restored_pid", 0) if c_receives else result(out).get("pid", 0)
        if restored:
            to_kill.append(restored)
        untold = "source_told: 0" in out.splitlines() if c_receives else result(out).get("source_told") is False
        check(rx.returncode == 0 and restored > 0 and untold, f"untold, {label}: the receiver succeeds and reports "
              "that the source was not told", out + errs)
        check("was not told" in errs and "stays stopped there" in errs and "kill" in errs,
              f"untold, {label}: the receiver says on stderr that the source's copy must be killed", errs)
        check(mig.returncode == 12 and result(sent).get("status") == "NC_E_UNCONFIRMED",
              f"untold, {label}: the source cannot confirm (NC_E_UNCONFIRMED)", sent)
        check(restored > 0 and goes_on(restored) and host_of(restored) == dst,
              f"untold, {label}: the tree runs in {dst}", str(counts()[-20:]))
        check(state(current) == "T", f"untold, {label}: the source's copy stays stopped in {src}", state(current))
        print(f"untold, {label}: {errs.strip()}")
        kill(current)  # what the receiver's message asks for
        check(wait_for(lambda: not alive(current)) and in_order(counts()), f"untold, {label}: killed, the source's "
              "copy never ran again", str(counts()[-20:]))
        current = restored

    # --- Post-copy with the C example: the tree's memory left out of the checkpoint, following the
    # tree to the other host through the page stream. The sender's CRIU needs 4 MiB pipes for it. ---
    with open("/proc/sys/fs/pipe-max-size", "r+") as sysctl:
        if int(sysctl.read()) < 4194304:
            sysctl.seek(0)
            sysctl.write("4194304")
    src = host_of(current)
    dst = "B" if src == "A" else "A"
    rx = c_receiver(dst, 7017)
    before = len(counts())
    r = c_migrate(src, current, f"{addr[dst]}:7017", "post-copy", "--post-copy")
    out, _ = collect(rx)
    report = fields(r.stdout)
    moved = report.get("restored_pid", 0)
    if moved:
        to_kill.append(moved)
    check(r.returncode == 0 and rx.returncode == 0 and moved > 0 and fields(out).get("restored_pid") == moved,
          f"post-copy, C: {src} to {dst} migrated", r.stdout + r.stderr + out)
    check(report.get("pages_sent", 0) > 0 and "post_copy_ms" in report, "post-copy, C: the memory followed the "
          "tree through the page stream (pages_sent, post_copy_ms)", r.stdout)
    check(wait_for(lambda: not alive(current)), "post-copy, C: the source is gone")
    check(moved > 0 and host_of(moved) == dst and goes_on(moved) and
          len(counts()) > before, f"post-copy, C: the count goes on in {dst}, in order", str(counts()[-20:]))
    print(f"post-copy, C: {r.stdout.strip()}")

    # --- Ed25519, each host with a key of its own: the receiver proves its answers with its key,
    # which the source must trust. Not yet: refused before anything is dumped. Then there and back. ---
    current = moved or current  # the source's own tree, resumed, when post-copy failed
    host_env, public = {}, {}
    for h in "AB":
        keys = os.path.join(tmp, f"ed25519-{h}")
        os.makedirs(keys, mode=0o700)
        host_env[h] = dict(env, NUCLEUS_CHECKPOINT_ED25519_KEY_FILE=os.path.join(keys, "ed25519.key"),
                           NUCLEUS_CHECKPOINT_TRUSTED_KEYS=os.path.join(keys, "trusted"))
        public[h] = os.path.join(tmp, f"{h}.pub")
        r = subprocess.run([cli, "--json", "keygen", "--ed25519", "--public-key-out", public[h]], env=host_env[h],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"Ed25519: {h} makes its key", r.stdout + r.stderr)
    src = host_of(current)
    dst = "B" if src == "A" else "A"
    r = subprocess.run([cli, "--json", "trust", "add", public[src]], env=host_env[dst], capture_output=True, text=True)
    check(r.returncode == 0, f"Ed25519: {dst} trusts {src}'s key", r.stdout + r.stderr)
    rx = receiver(dst, 7018, host_env[dst])
    r = migrate(src, current, f"{addr[dst]}:7018", "ed25519-untrusted", "--sign", "ed25519", host_env=host_env[src])
    collect(rx)
    check(r.returncode == 6 and result(r.stdout).get("status") == "NC_E_INTEGRITY" and
          "does not trust" in r.stdout and "trust add" in r.stdout and
          not os.path.exists(os.path.join(store[src], "ed25519-untrusted")),
          f"Ed25519: {src}, not trusting {dst}'s key, refuses before anything is dumped", r.stdout + r.stderr)
    check(goes_on(current), f"Ed25519: the counter never stopped in {src}")
    # There with the receiver's key given (--receiver-key), not trusted; then trusted, and back.
    for port, (a, b) in ((7019, (src, dst)), (7020, (dst, src))):
        pinned = ["--receiver-key", public[b]] if port == 7019 else []
        rx = receiver(b, port, host_env[b])
        before = len(counts())
        r = migrate(a, current, f"{addr[b]}:{port}", f"ed25519-{port}", "--sign", "ed25519", *pinned,
                    host_env=host_env[a])
        out, _ = collect(rx)
        moved = result(r.stdout).get("restored_pid", 0)
        if moved:
            to_kill.append(moved)
        check(r.returncode == 0 and rx.returncode == 0 and moved > 0 and result(out).get("pid") == moved,
              f"Ed25519: {a} to {b} migrated, the answers proven by {b}'s key" + (" (given)" if pinned else ""),
              r.stdout + r.stderr + out)
        key_id = subprocess.run([cli, "--json", "keygen", "--ed25519"], env=host_env[b], capture_output=True,
                                text=True)
        check(result(r.stdout).get("receiver_key_id") == result(key_id.stdout).get("key_id"),
              f"Ed25519: the report names {b}'s key as the one that answered", r.stdout + key_id.stdout)
        if pinned:
            r = subprocess.run([cli, "--json", "trust", "add", public[dst]], env=host_env[src], capture_output=True,
                               text=True)
            check(r.returncode == 0, f"Ed25519: {src} trusts {dst}'s key", r.stdout + r.stderr)
        check(wait_for(lambda: not alive(current)) and moved > 0 and goes_on(moved) and len(counts()) > before,
              f"Ed25519: the count goes on in {b}, in order", str(counts()[-20:]))
        current = moved
    check(in_order(counts()), "the whole count, to the end: 1, 2, 3... never repeated, never back",
          str(counts()[-40:]))
finally:
    for p in to_kill:
        kill(p)
    wait_for(lambda: all(not alive(p) for p in to_kill), 10)
    reap()
    subprocess.run(["ip", "netns", "del", net["A"]], capture_output=True)
    subprocess.run(["ip", "netns", "del", net["B"]], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)

finish("migrate")
