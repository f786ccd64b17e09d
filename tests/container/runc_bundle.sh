#!/usr/bin/env bash
# runc_bundle.sh BUNDLE_DIR
#
# Create a minimal OCI bundle for Debian's runc (1.1.x) whose process is a
# busybox shell loop that increments /data/counter every 100 ms and prints it.
#
#   BUNDLE_DIR/rootfs/        busybox-static + applet symlinks in /bin
#   BUNDLE_DIR/volume/        bind-mounted read-write at /data in the container
#   BUNDLE_DIR/volume/counter the counter (the loop resumes from its value)
#   BUNDLE_DIR/config.json    `runc spec` edited: terminal=false, counter loop,
#                             /data bind mount, default namespaces (incl. a new
#                             network namespace)
#
# Run it (stdio must not be a terminal for `run -d` with terminal=false):
#   runc --root /run/nc-runc-test run -d --bundle B ID </dev/null >B/out.log 2>&1
#   runc --root /run/nc-runc-test state ID      # .pid is the container init
#   runc --root /run/nc-runc-test delete -f ID
#
# Checkpoint/restore with CRIU 4.2.1 directly (verified on Debian 12, runc
# 1.1.5, cgroup v1; export CRIU_FAULT=130 on that machine):
#   K=$(printf 'file[%x:%x]' <mnt_id from /proc/PID/fdinfo/1> $(stat -c %i B/out.log))
#   criu dump -t PID -D IMG --external 'mnt[]' --external "$K"
#   criu restore -D IMG -d --root B/rootfs --external 'mnt[]' \
#        --inherit-fd "fd[7]:$K" 7>>B/out.log
# ('mnt[]' auto-detects the /data bind and the 9 cgroup v1 binds; explicit
# keys work too: --external 'mnt[/data]:vol' ... / 'mnt[vol]:B/volume' ...)
# Start with `>>B/out.log` (O_APPEND) so restore does not fail the size check
# when the log grew after the dump. `runc checkpoint` works only if stdio are
# /dev/null or pipes (host files -> "Can't lookup mount=N for fd=1").
#
# Environment:
#   BUSYBOX   path of a statically linked busybox (default: `command -v busybox`)
#   RUNC      runc binary used for `runc spec` (default: runc)
#   READONLY_ROOT  "true" keeps runc spec's read-only rootfs (default: false)
set -euo pipefail

usage() { echo "usage: $0 BUNDLE_DIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

BUNDLE=$1
RUNC=${RUNC:-runc}
BUSYBOX=${BUSYBOX:-$(command -v busybox || true)}
READONLY_ROOT=${READONLY_ROOT:-false}

[[ -n $BUSYBOX && -x $BUSYBOX ]] || { echo "$0: busybox not found (install busybox-static or set BUSYBOX)" >&2; exit 1; }
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "$0: $BUSYBOX is dynamically linked; need busybox-static" >&2
    exit 1
fi
command -v "$RUNC" >/dev/null || { echo "$0: $RUNC not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "$0: python3 not found" >&2; exit 1; }

if [[ -e $BUNDLE/config.json ]]; then
    echo "$0: $BUNDLE/config.json already exists; refusing to overwrite" >&2
    exit 1
fi

mkdir -p "$BUNDLE"
BUNDLE=$(cd "$BUNDLE" && pwd -P)
ROOTFS=$BUNDLE/rootfs

# --- rootfs ---------------------------------------------------------------
mkdir -p "$ROOTFS"/{bin,dev,proc,sys,tmp,data,etc,root}
chmod 1777 "$ROOTFS/tmp"
install -m 0755 "$BUSYBOX" "$ROOTFS/bin/busybox"
# Flat applet symlinks in /bin (busybox ignores the directory part of argv[0]).
while read -r applet; do
    [[ -n $applet && $applet != busybox ]] || continue
    ln -sf busybox "$ROOTFS/bin/$applet"
done < <("$ROOTFS/bin/busybox" --list)
[[ -e $ROOTFS/bin/sh ]] || ln -sf busybox "$ROOTFS/bin/sh"
echo 'root:x:0:0:root:/root:/bin/sh' > "$ROOTFS/etc/passwd"
echo 'root:x:0:' > "$ROOTFS/etc/group"

# --- volume ---------------------------------------------------------------
mkdir -p "$BUNDLE/volume"

# --- config.json ----------------------------------------------------------
(cd "$BUNDLE" && "$RUNC" spec)

LOOP='i=$(cat /data/counter 2>/dev/null || echo 0); case "$i" in ""|*[!0-9]*) i=0;; esac; while :; do i=$((i+1)); echo "$i" > /data/counter; echo "$i"; sleep 0.1; done'

BUNDLE="$BUNDLE" LOOP="$LOOP" READONLY_ROOT="$READONLY_ROOT" python3 - <<'EOF'
import json, os
bundle = os.environ["BUNDLE"]
path = os.path.join(bundle, "config.json")
with open(path) as f:
    cfg = json.load(f)

proc = cfg["process"]
proc["terminal"] = False
proc["args"] = ["/bin/sh", "-c", os.environ["LOOP"]]
proc["env"] = ["PATH=/bin", "HOME=/root"]
proc["cwd"] = "/"

cfg["root"] = {"path": "rootfs",
               "readonly": os.environ["READONLY_ROOT"] == "true"}
cfg["hostname"] = "counter"

cfg["mounts"].append({
    "destination": "/data",
    "type": "bind",
    "source": os.path.join(bundle, "volume"),
    "options": ["rbind", "rw"],
})

# Keep runc's default namespaces (pid, network, ipc, uts, mount): a new,
# empty network namespace with only lo.
ns_types = [ns["type"] for ns in cfg["linux"]["namespaces"]]
assert "network" in ns_types, ns_types

with open(path, "w") as f:
    json.dump(cfg, f, indent=2)
    f.write("\n")
EOF

echo "bundle ready: $BUNDLE"
