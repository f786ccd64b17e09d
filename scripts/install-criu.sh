#!/usr/bin/env bash
# Installs a CRIU that works on this kernel (>= 4.2) as /usr/local/sbin/criu, unless one is there.
# Debian bookworm ships CRIU 3.17, which fails `criu check` on kernels with a [vvar_vclock]
# mapping; 4.1 cannot dump a TCP or UDP socket on kernels >= 6.16 (SO_PASSCRED, criu#2718). CRIU
# 4.2.1 is built from the upstream tarball that Debian sid's source package carries.
# Fails loudly (non-zero) when no working CRIU can be set up.
set -euo pipefail

want_major=4 want_minor=2
# The tarball Debian sid's criu 4.2.1-1 carries; apt's signed index must list the same digest.
tarball_name=criu_4.2.1.orig.tar.xz
tarball_sha256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
target=/usr/local/sbin/criu
cache=/var/cache/nucleus-checkpoint/criu
die() { echo "install-criu: $*" >&2; exit 1; }

version_ok() { # criu --version prints "Version: 4.1.1"
  local v; v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p') || return 1
  local major=${v%%.*} rest=${v#*.}; local minor=${rest%%.*}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  (( major > want_major || (major == want_major && minor >= want_minor) ))
}

works() { [[ -x $1 ]] && version_ok "$1" && "$1" check >/dev/null 2>&1; }

# An old criu earlier in the library's trusted search order (/usr/sbin, /usr/bin) would be
# picked before ours: move Debian's aside with dpkg-divert so package upgrades keep it there.
divert_old() {
  local p
  for p in /usr/sbin/criu /usr/bin/criu; do
    [[ -e $p ]] || continue
    if version_ok "$p"; then continue; fi
    echo "install-criu: moving old $("$p" --version 2>/dev/null | head -n1) at $p aside to $p.distrib"
    dpkg-divert --quiet --local --rename --divert "$p.distrib" --add "$p" || die "cannot move old $p aside; remove it by hand"
  done
}

[[ $(id -u) -eq 0 ]] || die "must run as root (installs into /usr/local/sbin)"
divert_old
if works "$target"; then echo "install-criu: $($target --version | head -n1) at $target works"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=600 -y -q "$@"; }
apt_get install --no-install-recommends build-essential pkg-config xz-utils \
  libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler python3-protobuf \
  libnl-3-dev libnet1-dev libcap-dev libaio-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev \
  >/dev/null || die "cannot install CRIU's build dependencies"

mkdir -p "$cache"
tarball="$cache/$tarball_name"
if [[ ! -f $tarball ]] || [[ $(sha256sum "$tarball" | cut -d' ' -f1) != "$tarball_sha256" ]]; then
  rm -f "$tarball"
  # deb-src entry for sid, with the URI this machine already uses for Debian.
  uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  [[ -n $uri ]] || uri=$(sed -n 's/^deb \(http[^ ]*\) .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n1)
  [[ -n $uri ]] || die "no Debian mirror URI found in /etc/apt/sources.list.d/debian.sources"
  printf 'Types: deb-src\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" > /etc/apt/sources.list.d/nucleus-criu-src.sources
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null || die "apt-get update failed"
  (cd "$cache" && apt-get source --download-only criu >/dev/null 2>&1) || true  # .debian.tar.xz answers 404; the tarball arrives
  [[ -f $tarball ]] || die "could not download CRIU's source ($tarball_name) from Debian sid; is a Debian mirror reachable?"
  # The .dsc is unavailable, so check the tarball against the sha256 apt's signed index lists.
  want=$(apt-cache showsrc criu | awk -v f="$(basename "$tarball")" '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s && $3==f {print $1; exit}')
  have=$(sha256sum "$tarball" | cut -d' ' -f1)
  [[ -n $want && $want == "$have" && $have == "$tarball_sha256" ]] ||
    { rm -f "$tarball"; die "checksum of $tarball_name ($have) does not match Debian's index (${want:-not listed}) and $tarball_sha256"; }
fi

src="$cache/src"
rm -rf "$src" && mkdir -p "$src"
tar -xJf "$tarball" -C "$src" --strip-components=1
echo "install-criu: building $(basename "$tarball") (about 20 s)"
make -C "$src" -j"$(nproc)" criu >"$cache/build.log" 2>&1 || { tail -n 30 "$cache/build.log" >&2; die "building CRIU failed (log: $cache/build.log)"; }
install -D -m 0755 -o root -g root "$src/criu/criu" "$target"
works "$target" || { "$target" check >&2 || true; die "$target was built but 'criu check' fails on this machine"; }
echo "install-criu: $($target --version | head -n1) installed at $target; criu check: Looks good"
