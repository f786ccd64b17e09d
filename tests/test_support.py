"""What the Python tests share: check() and its tally, reaping as a child subreaper, waiting for a
condition, two "hosts" (network namespaces joined by a veth pair), and the closing "NAME: N checks,
M failed" line."""
import ctypes
import os
import subprocess
import sys
import time

checks = failures = 0


def check(ok, what, detail=""):
    global checks, failures
    checks += 1
    if not ok:
        failures += 1
        print(f"FAILED: {what}\n{detail}", file=sys.stderr)
    return ok


def become_subreaper():
    """Dumped and restored trees are reparented here and their zombies reaped at once (a zombie's
    PID cannot be restored)."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def wait_for(pred, seconds=10, step=0.05):
    end = time.time() + seconds
    while time.time() < end:
        reap()
        if pred():
            return True
        time.sleep(step)
    return pred()


def join_hosts(net, addr, veth):
    """Network namespaces net["A"] and net["B"], their loopback up, joined by the veth pair veth["A"]
    and veth["B"] with the /24 addresses addr["A"] and addr["B"]. The caller deletes the namespaces
    (ip netns del, which takes the pair with them) whatever happens."""
    for h in "AB":
        subprocess.run(["ip", "netns", "add", net[h]], check=True)
        subprocess.run(["ip", "-n", net[h], "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "add", veth["A"], "type", "veth", "peer", "name", veth["B"]], check=True)
    for h in "AB":
        subprocess.run(["ip", "link", "set", veth[h], "netns", net[h]], check=True)
        subprocess.run(["ip", "-n", net[h], "addr", "add", f"{addr[h]}/24", "dev", veth[h]], check=True)
        subprocess.run(["ip", "-n", net[h], "link", "set", veth[h], "up"], check=True)


def finish(name):
    print(f"{name}: {checks} checks, {failures} failed")
    sys.exit(1 if failures else 0)
