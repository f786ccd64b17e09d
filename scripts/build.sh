#!/usr/bin/env bash
# Configures (once) and builds into build/. Extra arguments go to `meson setup`. The project's own
# build is warning-free: -Dwerror=true here, not in meson.build, which would force it on a parent
# project that builds this one as a subproject.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f build/build.ninja ]]; then
  meson setup build -Dwerror=true "$@" >/dev/null
elif ! python3 -c 'import json, sys; sys.exit(not any(o["name"] == "werror" and o["value"] for o in json.load(open(sys.argv[1]))))' \
    build/meson-info/intro-buildoptions.json 2>/dev/null; then
  meson configure build -Dwerror=true >/dev/null  # a build/ configured without it
fi
ninja -C build >/dev/null
