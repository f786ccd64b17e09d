#!/usr/bin/env bash
# Installs what building and testing need on Debian (bookworm or newer), and a CRIU that works
# on this kernel. Safe to run again: it installs only what is missing. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "setup: run as root (apt-get, and CRIU needs root anyway)" >&2; exit 1; }

packages=(meson ninja-build g++ gcc pkg-config python3 binutils abigail-tools libsodium-dev rapidjson-dev libfmt-dev catch2 libcli11-dev
  libprotobuf-c-dev protobuf-c-compiler
  # Transfer streams: zstd compression (nc_export / nc_import).
  libzstd-dev
  # Registry images (nc_push_image / nc_pull_image; optional at build time), and the registry and
  # the independent client their tests run, and zstd(1) for a zstd layer.
  libcurl4-openssl-dev libarchive-dev docker-registry skopeo zstd
  # The tests' independent check of Ed25519 signatures (tests/seed_hmac.py): libsodium's Ed25519ph.
  python3-nacl
  clang libclang-rt-dev valgrind
  # The Go binding (bindings/go): Debian's Go, 1.19 on bookworm.
  golang-go
  # What CRIU runs for containers: network locking, addresses and routes, tmpfs contents.
  iptables nftables iproute2 tar
  # What the container tests run: a static busybox for rootfs, Debian's runc, curl.
  busybox-static runc curl
  # The Rust bindings (bindings/rust), built offline from Debian's crate registry.
  rustc cargo librust-libc-dev librust-pkg-config-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/install-criu.sh
