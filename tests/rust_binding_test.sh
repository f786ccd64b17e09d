#!/usr/bin/env bash
# The Rust crates of bindings/rust against the installed library, with the real CRIU, as root:
# install into a temporary root, find the library with pkg-config alone (nothing but our .pc
# visible) and LD_LIBRARY_PATH, build the crates offline with Debian's rustc and cargo from
# Debian's crate registry (librust-*-dev), and run their test (a real tree checkpointed, a tampered
# copy refused, the tree restored and counting on, CRIU's failures, 32 threads each with its own
# error, callbacks that panic; an Ed25519 dump moved as transfer streams to a key store holding only
# the public key and restored there, pre-dumps, a two-layer chain as one chain stream, registry
# arguments; a migration over loopback TCP to a receiver on another thread, signed with Ed25519 and
# pinned to the receiver's key, once post-copy, and migrations refused by either side, the source
# resuming) and the README's Rust program.
# Usage: rust_binding_test.sh BUILD_DIR SOURCE_DIR TMP_DIR COUNTER
set -euo pipefail
build=$1 src=$2 tmp=$3 counter=$4
# Debian's toolchain, whatever else is on PATH (a rustup one in ~/.cargo/bin is not what CI has).
cargo=/usr/bin/cargo rustc=/usr/bin/rustc rustdoc=/usr/bin/rustdoc registry=/usr/share/cargo/registry
for tool in "$cargo" "$rustc" "$rustdoc"; do
  [[ -x $tool ]] || { echo "rust_binding: $tool is missing: scripts/setup.sh installs rustc and cargo"; exit 1; }
done
for crate in libc pkg-config; do
  compgen -G "$registry/$crate-[0-9]*" >/dev/null ||
    { echo "rust_binding: no $crate crate in $registry: scripts/setup.sh installs librust-$crate-dev"; exit 1; }
done

# The sys crate declares every function of the header, and nothing else.
header=$(grep -oE 'NC_EXPORT[^(]*\(' "$src/include/nucleus/checkpoint.h" | grep -oE '[A-Za-z_0-9]+\($' | tr -d '(' | sort)
declared=$(grep -oE 'pub fn nc_[A-Za-z_0-9]+' "$src/bindings/rust/nucleus-checkpoint-sys/src/lib.rs" | sed 's/pub fn //' | sort)
if [[ $header != "$declared" ]]; then
  echo "rust_binding: bindings/rust/nucleus-checkpoint-sys/src/lib.rs does not declare the header's functions:"
  diff <(echo "$header") <(echo "$declared") | grep '^[<>]' | sed 's/^</  only in checkpoint.h:/; s/^>/  only in the sys crate:/'
  exit 1
fi

source "$(dirname "$0")/private_install.sh"
private_install "$build" "$tmp" rust

# A copy of the crates (the source tree gets no Cargo.lock or target/), with the README's Rust
# program as an example; crates.io replaced by Debian's registry, offline.
cp -r "$src/bindings/rust" "$root/crates"
rm -rf "$root/crates/target" "$root/crates/Cargo.lock"
mkdir -p "$root/crates/nucleus-checkpoint/examples"
python3 - "$src/README.md" "$root/crates/nucleus-checkpoint/examples/readme.rs" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
start = re.search(r"^## Rust\n", text, re.M)
section = text[start.end():] if start else ""
end = re.search(r"^## ", section, re.M)
section = section[:end.start()] if end else section
blocks = re.findall(r"^```rust\n(.*?)^```$", section, re.M | re.S)
if len(blocks) != 1:
    sys.exit(f"rust_binding: the README's Rust section must hold one ```rust program, not {len(blocks)}")
open(sys.argv[2], "w", encoding="utf-8").write(blocks[0])
PY
mkdir "$root/cargo-home"
cat >"$root/cargo-home/config.toml" <<TOML
[source.crates-io]
replace-with = "debian"
[source.debian]
directory = "$registry"
[net]
offline = true
TOML
export CARGO_HOME="$root/cargo-home" CARGO_TARGET_DIR="$root/target" RUSTC=$rustc RUSTDOC=$rustdoc
unset RUSTUP_TOOLCHAIN RUSTFLAGS RUSTDOCFLAGS CARGO_ENCODED_RUSTFLAGS RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER \
  CARGO_BUILD_TARGET CARGO_BUILD_RUSTC_WRAPPER || true

mkdir -m 0700 "$root/keys" "$root/work"
export NUCLEUS_CHECKPOINT_HMAC_KEY_FILE="$root/keys/key" NC_RUST_TEST_DIR="$root/work" NC_TEST_COUNTER=$counter
echo "rust_binding: $("$rustc" --version), $("$cargo" --version); library $(pkg-config --modversion nucleus-checkpoint) at $libdir"
cd "$root/crates"
# The test (one test at a time: they reap as a subreaper), and the docs' examples compiled.
"$cargo" test --offline --workspace --all-targets -- --test-threads=1
"$cargo" test --offline --workspace --doc
"$cargo" build --offline --workspace --examples
# It really used the installed library, not another copy.
readme="$CARGO_TARGET_DIR/debug/examples/readme"
linked=$(ldd "$readme")
[[ $linked == *"$root/sysroot"*libnucleuscheckpoint.so.0* ]] || { echo "$linked"; exit 1; }
# The README's program, as a user runs it: dumps its counter, restores it, sees it count on.
out=$("$readme" "$root/work/readme-checkpoint")
echo "$out"
dumped=$(sed -n 's/^dumped at \([0-9]*\)$/\1/p' <<<"$out")
now=$(sed -n 's/^restored as PID [0-9]*, counting on: \([0-9]*\)$/\1/p' <<<"$out")
[[ -n $dumped && -n $now ]] && ((now > dumped)) ||
  { echo "rust_binding: the README's program did not show its counter counting on after the restore"; exit 1; }
echo "rust_binding: the crates built offline against the installed library, and passed with the real CRIU"
