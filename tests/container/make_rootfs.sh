#!/bin/sh
# Creates a minimal busybox-static root filesystem for tests/container/launcher.c in DIR:
# bin/busybox plus symlinks for the applets the workload and the tests use, empty proc, dev,
# data and tmp, and a few files in etc/. Usage: make_rootfs.sh DIR   (BUSYBOX=path overrides)
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
busybox=${BUSYBOX:-$(command -v busybox || true)}
if [ -z "$busybox" ] || [ ! -x "$busybox" ]; then
  echo "$0: busybox not found (install busybox-static or set BUSYBOX)" >&2
  exit 1
fi
# A dynamically linked busybox cannot run inside the rootfs, which has no libc (an ELF with
# a program interpreter has a .interp section).
if grep -q '\.interp' "$busybox"; then
  echo "$0: $busybox is not statically linked (install busybox-static)" >&2
  exit 1
fi

mkdir -p "$dir"
cd "$dir"
mkdir -p bin sbin usr/bin usr/sbin etc proc dev data tmp root
chmod 1777 tmp
cp "$busybox" bin/busybox
chmod 755 bin/busybox
for applet in sh ash cat echo sleep nc mv cp rm ls ps mkdir touch grep sed head tail wc \
              hostname ip ifconfig netstat mount umount kill sync date true false test \
              printf readlink stat env id flock; do
  ln -sf busybox "bin/$applet"
done

echo "root:x:0:0:root:/root:/bin/sh" > etc/passwd
echo "root:x:0:" > etc/group
echo "box" > etc/hostname
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > etc/hosts
: > etc/resolv.conf
