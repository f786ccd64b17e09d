#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, then checkpoint a real process tree, show the
# signed checkpoint, show a tampered copy refused, restore it and show it running on; then the
# same for a container (the project's launcher, a busybox rootfs made by make_rootfs.sh): one call
# to checkpoint it, one to restore it with a new stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
work=build/demo-run
rm -rf "$work"
exec ./build/examples/demo ./build/examples/counter "$work" ./build/examples/container tests/container/make_rootfs.sh
