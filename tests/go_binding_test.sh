#!/usr/bin/env bash
# The Go package (bindings/go) against the installed library, as a Go user builds it: install into
# a temporary root, let cgo find the library through `pkg-config nucleus-checkpoint` alone (no other
# package's .pc visible), offline (GOPROXY=off, GOFLAGS=-mod=mod: the package needs nothing but Go's
# standard library), in a GOCACHE and GOPATH of its own. Then, as root with the real CRIU:
# - gofmt and go vet;
# - its tests (`go test`, built once and checked to load the installed .so): a real tree
#   checkpointed, a tampered copy refused with ErrIntegrity, the tree restored and seen counting on,
#   callbacks, 64 goroutines x 200 failing calls each getting its own message, and the 0.3 calls (a
#   tree dumped with Ed25519, moved as transfer streams to a key store holding only the public key
#   and restored there; a flipped byte refused; pre-dumps; a two-layer chain as one chain stream;
#   registry arguments; a counter in a PID namespace of its own migrated over loopback TCP to a
#   receiver on another goroutine, signed with Ed25519 and pinned to the receiver's key, once
#   post-copy, and migrations refused by the source (a receiver it does not trust, or not the one
#   given) or by the receiver, the source resuming); none may skip;
# - the README's Go program ("### From Go"), built in a module of its own that imports the package
#   through a replace directive, must restore its counter and show it counting on.
# Usage: go_binding_test.sh BUILD_DIR SOURCE_DIR TMP_DIR   (NC_TEST_COUNTER: examples/counter)
set -euo pipefail
build=$1 src=$2
[[ -n ${NC_TEST_COUNTER:-} ]] || { echo "NC_TEST_COUNTER (examples/counter) is not set"; exit 1; }
command -v go >/dev/null || { echo "go not found: scripts/setup.sh installs golang-go"; exit 1; }
source "$(dirname "$0")/private_install.sh"
private_install "$build" "$3" go-binding
# Go offline and from a clean slate: no proxy, no checksum database, no user go.env, caches here.
export GOPROXY=off GOSUMDB=off GOFLAGS=-mod=mod GOENV=off GO111MODULE=on CGO_ENABLED=1 GOTOOLCHAIN=local \
  GOCACHE="$root/gocache" GOPATH="$root/gopath" GOTMPDIR= HOME="$root/home"
mkdir -p "$root/home"
echo "$(go version), library $(pkg-config --modversion nucleus-checkpoint) from $libdir"

# A copy of the package, so nothing is ever written into the source tree.
cp -r "$src/bindings/go" "$root/module"
cd "$root/module"
unformatted=$(gofmt -l .)
[[ -z $unformatted ]] || { echo "not gofmt-formatted: $unformatted"; exit 1; }
go vet ./...
go test -c -o "$root/checkpoint.test" .
linked=$(ldd "$root/checkpoint.test")
[[ $linked == *"$root/sysroot"*libnucleuscheckpoint.so.0* ]] || { echo "$linked"; exit 1; }

mkdir -m 0700 "$root/keys"
export NUCLEUS_CHECKPOINT_HMAC_KEY_FILE="$root/keys/key"
set +e
"$root/checkpoint.test" -test.v -test.count=1 -test.timeout 150s 2>&1 | tee "$root/test.out"
status=${PIPESTATUS[0]}
set -e
((status == 0)) || { echo "go test failed ($status)"; exit 1; }
if grep -q -- '--- SKIP' "$root/test.out"; then echo "a Go test skipped: every one must run here"; exit 1; fi
grep -q '^PASS$' "$root/test.out" || { echo "go test did not pass"; exit 1; }

# The README's Go program, as a user pastes it, in a module that imports the package by path.
mkdir "$root/example"
python3 - "$src/README.md" "$root/example/main.go" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = re.search(r"^### From Go\n(.*?)(?=^#{2,3} )", text, re.M | re.S)
blocks = re.findall(r"^```go\n(.*?)^```$", section.group(1) if section else "", re.M | re.S)
if len(blocks) != 1:
    sys.exit(f"the README's \"From Go\" section holds {len(blocks)} Go programs, not one")
open(sys.argv[2], "w", encoding="utf-8").write(blocks[0])
PY
cat >"$root/example/go.mod" <<MOD
module example

go 1.19

require nucleus.dev/checkpoint v0.0.0

replace nucleus.dev/checkpoint => $root/module
MOD
(cd "$root/example" && go vet . && go build -o "$root/app" .)
"$root/app" "$root/readme-checkpoint" | tee "$root/app.out"
python3 - "$root/app.out" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
before = [int(n) for n in re.findall(r"^before: (\d+)$", out, re.M)]
after = [int(n) for n in re.findall(r"^after: (\d+)$", out, re.M)]
m = re.search(r"^restored as PID (\d+) \(it was (\d+)\)$", out, re.M)
ok = len(before) == 3 and len(after) == 3 and m and m.group(1) == m.group(2) and after[0] > before[-1] \
    and after == list(range(after[0], after[0] + 3))
sys.exit(0 if ok else "the README's Go program did not show its counter counting on after the restore")
PY
echo "go binding: gofmt, go vet, go test and the README's Go program against the installed library"
