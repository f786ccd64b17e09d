"""Checkpoints as OCI images in a real registry (Debian's docker-registry, started here on
127.0.0.1) with skopeo as an independent client: a real CRIU checkpoint pushed with the CLI is
seen by skopeo inspect (one layer, the checkpoint annotations), copied by skopeo (which may
recompress it) to other names, pulled back by the library, verified and restored. Then what a pull
must refuse, each leaving nothing behind: a layer changed in the registry's storage (in its tar's
end padding, or after its tar's end: only the digest covers them), a manifest pointing to another
image's layer signed with another key, hostile tars pushed with hand-made manifests (no signature
or listing first, a forged listing, traversal, absolute names, links, a device, an entry twice, a
file longer than listed, a changed chunk, an entry after those listed, a layer padded past its
listing), a checkpoint past the size limit, format 2 (push refuses it too), a manifest with two
layers; zstd decompression bombs of ~150 KB that expand to 4 GiB, pulled into a 64 MiB tmpfs,
each refused having written no more than the layer itself; and from a hostile registry of the
test's own, 512 MiB of zeros and 1 GiB of gzip that decompresses to nothing, each refused having
received about what the pull read and written nothing. Last, "pulled on the other host": two
network namespaces joined by a veth pair, the registry on A's address, A dumps (Ed25519) and
pushes, skopeo in A copies, B (holding only A's public key) pulls, verifies and restores, and the
counter runs on in B."""
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import test_support
from test_support import become_subreaper, check, finish, join_hosts, reap, wait_for

cli, counter, tmp_root = sys.argv[1:4]
registry_bin = shutil.which("docker-registry") or "/usr/bin/docker-registry"
if not os.path.exists(registry_bin) or not shutil.which("skopeo"):
    print("registry: docker-registry or skopeo is not installed (scripts/setup.sh installs them); skipped")
    sys.exit(77)
os.makedirs(tmp_root, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="registry-", dir=tmp_root)
os.makedirs(os.path.join(tmp, "keys"), mode=0o700)
os.makedirs(os.path.join(tmp, "keys2"), mode=0o700)
env = dict(os.environ, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "keys", "key"))
env2 = dict(os.environ, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(tmp, "keys2", "key"))
become_subreaper()


def run(*args, e=env):
    return subprocess.run([cli, *args], env=e, capture_output=True, text=True, timeout=300)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The registry: plain http on a free port of 127.0.0.1, storage in a folder of the test's.
port = free_port()
storage = os.path.join(tmp, "registry-data")
config = os.path.join(tmp, "registry.yml")
with open(config, "w") as f:
    f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
registry_log = open(os.path.join(tmp, "registry.log"), "w")
registry = subprocess.Popen([registry_bin, "serve", config], stdout=registry_log, stderr=subprocess.STDOUT)
host = f"127.0.0.1:{port}"
base = f"http://{host}"


def registry_up():
    try:
        return urllib.request.urlopen(f"{base}/v2/", timeout=2).status == 200
    except (OSError, urllib.error.URLError):
        return False


tree = None
mounted = []  # tmpfs mounts, unmounted whatever happens
namespaces, to_kill = [], []  # network namespaces, processes (-pgid for a group)
try:
    check(wait_for(registry_up, seconds=30), "the registry answers", open(os.path.join(tmp, "registry.log")).read())

    def http(method, path, data=None, headers=None):
        req = urllib.request.Request(path if path.startswith("http") else base + path, data=data, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def digest_of(data):
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def put_blob(repo, data):
        status, headers, _ = http("POST", f"/v2/{repo}/blobs/uploads/")
        location = headers["Location"]
        sep = "&" if "?" in location else "?"
        status, _, body = http("PUT", f"{location}{sep}digest={digest_of(data)}", data,
                               {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)
        return digest_of(data)

    def put_manifest(repo, tag, manifest):
        data = json.dumps(manifest).encode()
        status, _, body = http("PUT", f"/v2/{repo}/manifests/{tag}", data,
                               {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 201, (status, body)

    def get_manifest(repo, tag):
        status, _, body = http("GET", f"/v2/{repo}/manifests/{tag}", None,
                               {"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 200, (status, body)
        return json.loads(body)

    def push_layer(repo, tag, layer, media_type="application/vnd.oci.image.layer.v1.tar", layers=1):
        """A hand-made image: the layer (bytes), a minimal config, a manifest listing the layer `layers` times."""
        config_data = json.dumps({"architecture": "amd64", "os": "linux",
                                  "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
        put_manifest(repo, tag, {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(repo, config_data),
                       "size": len(config_data)},
            "layers": [{"mediaType": media_type, "digest": put_blob(repo, layer), "size": len(layer)}] * layers})

    pulls = os.path.join(tmp, "pulls")
    os.makedirs(pulls, mode=0o700)

    def refused_pull(tag, expect_status, expect_text, what, e=env, repo="checkpoints/counter"):
        """Pulls tag and checks it fails as expected, leaving nothing in the pulls folder."""
        target = os.path.join(pulls, "refused")
        separator = "@" if tag.startswith("sha256:") else ":"
        r = run("pull", f"{host}/{repo}{separator}{tag}", "--dir", target, "--insecure", e=e)
        check(r.returncode == expect_status and expect_text in r.stderr, f"{what}: refused", r.stdout + r.stderr)
        check(sorted(os.listdir(pulls)) == sorted(kept), f"{what}: nothing left behind",
              f"{sorted(os.listdir(pulls))} vs {sorted(kept)}")
        shutil.rmtree(target, ignore_errors=True)  # a failure above is not counted again by the next pull

    kept = []

    # A real checkpoint of the counter, made with the CLI.
    os.makedirs(os.path.join(tmp, "counter"))
    tree = subprocess.Popen([counter, os.path.join(tmp, "counter")])

    def count(folder="counter"):
        """What the counter writing into tmp/folder has counted to."""
        try:
            with open(os.path.join(tmp, folder, "parent")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return -1

    wait_for(lambda: count() >= 3)
    ckpt = os.path.join(tmp, "ckpt")
    r = run("dump", "--pid", str(tree.pid), "--dir", ckpt, "--id", "counter-demo", "--json")
    check(r.returncode == 0, "dump succeeds", r.stdout + r.stderr)
    wait_for(lambda: (reap(), tree.poll() is not None)[1])
    at_dump = count()

    # Push, plain http only when asked.
    ref = f"{host}/checkpoints/counter:v1"
    r = run("push", "--dir", ckpt, ref)
    check(r.returncode == 7 and "--insecure" in r.stderr, "push over https to a plain http registry says --insecure",
          r.stdout + r.stderr)
    r = run("push", "--dir", ckpt, ref, "--insecure", "--json")
    pushed = json.loads(r.stdout) if r.stdout.startswith("{") else {}
    check(r.returncode == 0 and pushed.get("digest", "").startswith("sha256:"), "push", r.stdout + r.stderr)
    r = run("push", "--dir", ckpt, f"{host}/checkpoints/counter:v1-again", "--insecure", "--json")
    again = json.loads(r.stdout) if r.stdout.startswith("{") else {}
    check(r.returncode == 0 and again.get("digest") == pushed.get("digest"),
          "the same checkpoint makes the same image", r.stdout + r.stderr)
    r = run("push", "--dir", ckpt, f"{host}/Bad Name", "--insecure")
    check(r.returncode == 1 and "is not an image reference" in r.stderr, "a malformed reference is refused", r.stderr)
    unsigned = os.path.join(tmp, "unsigned")
    shutil.copytree(ckpt, unsigned)
    with open(os.path.join(unsigned, "metadata.json"), "a") as f:
        f.write(" ")
    r = run("push", "--dir", unsigned, f"{host}/checkpoints/unsigned:v1", "--insecure")
    check(r.returncode == 6 and "not published" in r.stderr, "a checkpoint that does not verify is not pushed",
          r.stderr)

    # skopeo, an independent client, sees one layer and the checkpoint annotations.
    r = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"], capture_output=True,
                       text=True, timeout=120)
    raw = json.loads(r.stdout) if r.returncode == 0 else {}
    annotations = raw.get("annotations", {})
    check(r.returncode == 0 and raw.get("mediaType") == "application/vnd.oci.image.manifest.v1+json"
          and len(raw.get("layers", [])) == 1
          and raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
          and annotations.get("io.podman.annotations.checkpoint.name") == "counter-demo"
          and annotations.get("io.kubernetes.cri-o.annotations.checkpoint.name") == "counter-demo"
          and annotations.get("io.nucleus.checkpoint.signer") == "hmac-sha256",
          "skopeo inspect --raw: one tar layer, the checkpoint annotations", r.stdout + r.stderr)
    r = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True, text=True,
                       timeout=120)
    info = json.loads(r.stdout) if r.returncode == 0 else {}
    check(r.returncode == 0 and len(info.get("Layers", [])) == 1 and info.get("Os") == "linux"
          and info.get("Digest") == pushed.get("digest"), "skopeo inspect: the image and its digest", r.stdout + r.stderr)

    # skopeo copies it to another name, compressed with gzip, and to a third in Docker's format; a
    # copy compressed with zstd (which skopeo 1.9 does not make here: it reuses the plain layer) is
    # made with zstd(1). The library pulls all three.
    r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-compress",
                        "--dest-compress-format=gzip", f"docker://{ref}", f"docker://{host}/copies/counter-gzip:v1"],
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, "skopeo copy --dest-compress-format=gzip", r.stdout + r.stderr)
    copied = get_manifest("copies/counter-gzip", "v1")
    check(copied["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip",
          "skopeo's copy has a gzip layer", json.dumps(copied))
    # And in Docker's manifest format (v2 schema 2, gzip layer), as docker and older registries keep images.
    r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--format=v2s2",
                        f"docker://{ref}", f"docker://{host}/copies/counter-docker:v1"],
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, "skopeo copy --format=v2s2", r.stdout + r.stderr)
    status, headers, _ = http("GET", "/v2/copies/counter-docker/manifests/v1", None,
                              {"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    check(headers.get("Content-Type") == "application/vnd.docker.distribution.manifest.v2+json",
          "skopeo's v2s2 copy has a Docker manifest", str(headers))
    status, _, plain_layer = http("GET", f"/v2/checkpoints/counter/blobs/{raw['layers'][0]['digest']}")
    zstd_layer = subprocess.run(["zstd", "-q", "-c"], input=plain_layer, capture_output=True, check=True).stdout
    push_layer("copies/counter-zstd", "v1", zstd_layer, media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    for compression in ["gzip", "zstd", "docker"]:
        target = os.path.join(pulls, f"from-{compression}")
        r = run("pull", f"{host}/copies/counter-{compression}:v1", "--dir", target, "--insecure", "--json")
        check(r.returncode == 0 and json.loads(r.stdout or "{}").get("signature") == "valid",
              f"pull the {compression} copy", r.stdout + r.stderr)
        kept.append(f"from-{compression}")
        check(run("verify", "--dir", target).returncode == 0, f"the pulled {compression} copy verifies")
        mode = os.stat(os.path.join(target, "images")).st_mode & 0o777
        check(mode == 0o700 and os.stat(os.path.join(target, "metadata.json")).st_mode & 0o777 == 0o600,
              "pulled folders are 0700, files 0600", oct(mode))

    # Pulled by digest: exactly the image pushed.
    target = os.path.join(pulls, "by-digest")
    r = run("pull", f"{host}/checkpoints/counter@{pushed.get('digest')}", "--dir", target, "--insecure")
    check(r.returncode == 0, "pull by digest", r.stdout + r.stderr)
    kept.append("by-digest")
    r = run("pull", ref, "--dir", target, "--insecure")
    check(r.returncode != 0 and os.listdir(target), "pull never writes into a folder that has something in it",
          r.stdout + r.stderr)

    # The pulled copy restores and runs on.
    r = run("restore", "--dir", os.path.join(pulls, "from-gzip"), "--json")
    restored = json.loads(r.stdout).get("pid", 0) if r.stdout.startswith("{") else 0
    check(r.returncode == 0 and restored == tree.pid, "the pulled checkpoint restores", r.stdout + r.stderr)
    check(wait_for(lambda: count() > at_dump + 5), "the restored counter runs on", f"{at_dump} -> {count()}")
    if restored > 0:
        os.killpg(restored, signal.SIGKILL)
        wait_for(lambda: (reap(), not os.path.exists(f"/proc/{restored}"))[1])

    # Another image's layer, signed with another key, under this image's manifest.
    other = os.path.join(tmp, "other")
    shutil.copytree(ckpt, other)
    with open(os.path.join(other, "metadata.json"), "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
    check(run("keygen", e=env2).returncode == 0, "a second key")
    check(run("sign", "--format", "manifest", "--dir", other, e=env2).returncode == 0, "signed with the second key")
    r = run("push", "--dir", other, f"{host}/checkpoints/counter:other", "--insecure", "--json", e=env2)
    check(r.returncode == 0, "the other key's checkpoint is pushed by its host", r.stdout + r.stderr)
    swapped = get_manifest("checkpoints/counter", "v1")
    swapped["layers"] = get_manifest("checkpoints/counter", "other")["layers"]
    put_manifest("checkpoints/counter", "swapped", swapped)
    refused_pull("swapped", 6, "does not verify", "a manifest pointing to a layer signed with another key")
    # With the other key it verifies: what refused it is the key, not the image.
    r = run("pull", f"{host}/checkpoints/counter:swapped", "--dir", os.path.join(pulls, "swapped-key2"), "--insecure",
            e=env2)
    check(r.returncode == 0, "the swapped image verifies with the key that signed it", r.stdout + r.stderr)
    kept.append("swapped-key2")

    # Hostile tars, each pushed with a hand-made manifest, most of them made from the real layer:
    # its signature and listing first, then the listed folders and files in the listing's order.
    def tar_of(*members, end=True):
        out = io.BytesIO()
        if not end:  # the entries alone, to be followed by more
            for info, data in members:
                out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                out.write((data or b"") + b"\0" * (-len(data or b"") % 512))
            return out.getvalue()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
            for info, data in members:
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()

    def member(name, data=b"x", kind=tarfile.REGTYPE, link="", size=None):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE and size is None else (size or 0)
        return info, (data if kind == tarfile.REGTYPE else None)

    with tarfile.open(fileobj=io.BytesIO(plain_layer), mode="r:") as t:
        real = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
    names = [m.name for m, _ in real]
    check(names[:2] == ["checkpoint.hmac", "checkpoint.listing"] and "metadata.json" in names,
          "the layer holds the signature, then the listing, then the checkpoint", str(names[:5]))
    signed = real[:2]
    first_file = next(i for i, (m, _) in enumerate(real) if i >= 2 and m.isfile())  # after its folders
    at_metadata = names.index("metadata.json")

    def changed(index, data, size=None):
        """The real layer's members with member `index` holding `data` (its header saying `size`)."""
        info = tarfile.TarInfo(real[index][0].name)
        info.size = len(data) if size is None else size
        return real[:index] + [(info, data)] + real[index + 1:]

    listing = bytearray(real[1][1])
    size_at = listing.find(b"metadata.json") - 8
    listing[size_at] ^= 1
    forged_listing = [real[0], (real[1][0], bytes(listing))] + real[2:]
    metadata = real[at_metadata][1]
    escape = os.path.join(tmp, "escaped")
    hostile = {
        "unsigned": ([member("metadata.json", b"{}")], "first entry is not the file checkpoint.hmac"),
        "no-listing": (real[:1] + real[2:], "second entry is not the file checkpoint.listing"),
        "forged-listing": (forged_listing, "listing does not match its signature"),
        "traversal": (signed + [member("../../escaped", b"out")], "its signed listing names next"),
        "absolute": (signed + [member(escape, b"out")], "its signed listing names next"),
        "symlink": (signed + [member(real[2][0].name, kind=tarfile.SYMTYPE, link="/etc/shadow")],
                    "is a symbolic link"),
        "hardlink": (signed + [member(real[2][0].name, kind=tarfile.LNKTYPE, link="metadata.json")],
                     "is a hard link"),
        "device": (signed + [member(real[2][0].name, kind=tarfile.CHRTYPE)], "is a character device"),
        "twice": (real[:first_file + 1] + real[first_file:], "its signed listing names next"),
        # The listing is authentic, a file is longer than listed: refused at that file, from its header.
        "longer": (changed(at_metadata, metadata + b" " * 100),
                   f"entry 'metadata.json' is {len(metadata) + 100} bytes, but its signed listing says "
                   f"{len(metadata)}"),
        "changed-chunk": (changed(at_metadata, metadata.replace(b"counter-demo", b"counter-demO", 1)),
                          "checkpoint file 'metadata.json' differs from what was signed in bytes 0"),
        "extra": (real + [member("extra", b"x")], "entry 'extra' after those its signed listing names"),
    }
    for tag, (members, text) in hostile.items():
        push_layer("checkpoints/counter", tag, tar_of(*members))
        refused_pull(tag, 6, text, f"a hostile tar ({tag})")
    check(not os.path.exists(escape), "nothing was written outside the pull's folder")
    # A layer far larger than the tar its listing makes (here padded after the tar's end, which
    # libarchive never reads) is refused once the listing is authenticated.
    push_layer("checkpoints/counter", "padded", plain_layer + b"\0" * (8 << 20))
    refused_pull("padded", 6, "more than the", "a layer larger than its signed listing takes")
    # Files past the size limit are refused from the listing, before a file's bytes are read.
    refused_pull("v1", 6, "lists files adding up to more than 4096 bytes", "a checkpoint past "
                 "NUCLEUS_CHECKPOINT_MAX_BYTES", e=dict(env, NUCLEUS_CHECKPOINT_MAX_BYTES="4096"))
    # Formats 1 and 2 cannot be checked as they arrive: push refuses them, and so does pull.
    chunked = os.path.join(tmp, "chunked")
    shutil.copytree(ckpt, chunked)
    check(run("sign", "--format", "chunked", "--dir", chunked).returncode == 0, "a copy signed in format 2")
    r = run("push", "--dir", chunked, f"{host}/checkpoints/counter:chunked", "--insecure")
    check(r.returncode == 1 and "sign --format manifest --dir" in r.stderr, "push refuses format 2, saying how to "
          "re-sign", r.stdout + r.stderr)
    with open(os.path.join(chunked, "checkpoint.hmac"), "rb") as f:
        push_layer("checkpoints/counter", "chunked", tar_of(member("checkpoint.hmac", f.read()), real[1]))
    refused_pull("chunked", 6, "signed in format 2, which cannot be checked as it arrives", "a layer in format 2")

    # Decompression bombs: a zstd layer of ~150 KB whose tar holds a 4 GiB file of zeros before the
    # signature, instead of the listing, or in place of the first listed file. Each is refused
    # having written (almost) nothing: pulled into a 64 MiB tmpfs whose use is sampled as it runs.
    def zstd(data):
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout

    zeros = zstd(b"\0" * (64 << 20))

    def bomb(before, name):
        head = tar_of(*before, member(name, b"", size=4 << 30), end=False)
        return zstd(head) + zeros * 64 + zstd(b"\0" * 10240)  # the file, then the tar's end

    small = os.path.join(tmp, "small")
    os.makedirs(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", small], check=True)
    mounted.append(small)
    # And one of 2 GiB of pax global headers after the listing (each a 1000000-byte comment, within
    # libarchive's limit on one), which libarchive reads and skips unseen: the bytes decompressed
    # are bounded by what the signed listing takes as a tar.
    record = b" comment=" + b"x" * 999980 + b"\n"
    record = str(len(record) + 6).encode() + record  # its length, 6 digits, counts itself
    comment = member("global", record)
    comment[0].type = tarfile.XGLTYPE
    comments = zstd(tar_of(comment, end=False))
    bombs = {"bomb-first": (bomb([], "images/pages-1.img"), "first entry is not the file checkpoint.hmac"),
             "bomb-listing": (bomb(real[:1], "checkpoint.listing"),
                              "checkpoint.listing is 4294967296 bytes, more than"),
             "bomb-file": (bomb(real[:first_file], names[first_file]),
                           f"entry '{names[first_file]}' is 4294967296 bytes, but its signed listing says "
                           f"{real[first_file][0].size}"),
             "bomb-skipped": (zstd(tar_of(*signed, end=False)) + comments * 2048 + zstd(tar_of(*real[2:])),
                              "decompresses to more than its signed listing takes as a tar")}
    def high_water(pid):
        """The peak resident memory of process pid so far (its VmHWM, since it exec'd), in bytes; 0 once it ended."""
        try:
            with open(f"/proc/{pid}/status") as f:
                return next((int(l.split()[1]) << 10 for l in f if l.startswith("VmHWM:")), 0)
        except OSError:
            return 0

    def sampled_pull(reference, into=small):
        """Pulls reference into a folder of `into` (the small tmpfs), sampling its use as it runs: exit code, stderr,
        peak use, and the pull's peak resident memory in bytes."""
        used = lambda: (lambda v: (v.f_blocks - v.f_bfree) * v.f_frsize)(os.statvfs(into))
        baseline, peak, memory = used(), 0, 0
        pull = subprocess.Popen([cli, "pull", reference, "--dir", os.path.join(into, "pulled"), "--insecure"],
                                env=env, stderr=subprocess.PIPE, text=True)
        while pull.poll() is None:
            peak = max(peak, used() - baseline)
            memory = high_water(pull.pid) or memory  # the last: the first may be this one's, before it exec'd
            time.sleep(0.002)
        return pull.returncode, pull.stderr.read(), peak, memory

    for tag, (layer, text) in bombs.items():
        push_layer("checkpoints/counter", tag, layer, media_type="application/vnd.oci.image.layer.v1.tar+zstd")
        status, err, peak, _ = sampled_pull(f"{host}/checkpoints/counter:{tag}")
        print(f"bomb {tag}: a {len(layer)}-byte layer; the pull's folder grew by {peak} bytes at most")
        check(status == 6 and text in err, f"a {len(layer) // 1000} KB zstd bomb ({tag}) is refused", err)
        check(peak < 4 << 20 and os.listdir(small) == [], f"the bomb ({tag}) wrote (almost) nothing",
              f"peak {peak} bytes, left {os.listdir(small)}")

    # A hostile registry of the test's own, for layers no registry need store: each made as it is
    # sent, with its true digest and size in the manifest, and the bytes that went into the socket
    # before the puller hung up counted. The pull reads the layer as it arrives, so it is refused
    # having received about what it read, and written nothing: 512 MiB of zeros (the reviewer's
    # case: the tar ends at once), and 1 GiB of gzip that decompresses to nothing (empty stored
    # blocks), which the bytes received before the listing is authenticated bound (a signature and
    # a listing may take about 290 MB).
    hostile_layers = {
        "zeros": ("application/vnd.oci.image.layer.v1.tar", b"", b"\0" * (1 << 20), 512 << 20,
                  "first entry is not the file checkpoint.hmac", 32 << 20),
        "empty-gzip": ("application/vnd.oci.image.layer.v1.tar+gzip", bytes([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]),
                       b"\0\0\0\xff\xff" * (1 << 18), 1 << 30,
                       "more of the image layer arrives than a signature and a listing may take before they are "
                       "authenticated", 320 << 20)}

    made_bodies = {}  # tag: what makes a layer sent otherwise

    def hostile_body(tag):
        """The layer's bytes, as they are sent: its head, then its chunk repeated to its size."""
        if tag in made_bodies:
            yield from made_bodies[tag]()
            return
        _, head, chunk, size, _, _ = hostile_layers[tag]
        yield head
        for at in range(len(head), size, len(chunk)):
            yield chunk[:size - at]

    hostile_digests = {}
    for tag in hostile_layers:
        sha = hashlib.sha256()
        for piece in hostile_body(tag):
            sha.update(piece)
        hostile_digests[tag] = "sha256:" + sha.hexdigest()
    hostile_sent, hostile_done = {}, {tag: threading.Event() for tag in hostile_layers}

    class HostileRegistry(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            parts = self.path.split("/")  # /v2/hostile/manifests/TAG, /v2/hostile/blobs/DIGEST
            if len(parts) != 5 or parts[:3] != ["", "v2", "hostile"]:
                self.send_error(404)
            elif parts[3] == "manifests" and parts[4] in hostile_layers:
                tag = parts[4]
                config_data = b"{}"
                body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                              "digest": digest_of(config_data), "size": len(config_data)},
                                   "layers": [{"mediaType": hostile_layers[tag][0], "digest": hostile_digests[tag],
                                               "size": hostile_layers[tag][3]}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif parts[3] == "blobs" and parts[4] in hostile_digests.values():
                tag = next(t for t, d in hostile_digests.items() if d == parts[4])
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(hostile_layers[tag][3]))
                self.end_headers()
                sent = 0
                try:
                    for piece in hostile_body(tag):
                        self.wfile.write(piece)
                        sent += len(piece)
                except OSError:  # the puller hung up
                    pass
                hostile_sent[tag] = sent
                hostile_done[tag].set()
            else:
                self.send_error(404)

    hostile_server = ThreadingHTTPServer(("127.0.0.1", 0), HostileRegistry)
    threading.Thread(target=hostile_server.serve_forever, daemon=True).start()
    try:
        hostile_host = f"127.0.0.1:{hostile_server.server_address[1]}"
        for tag, (_, _, _, size, text, max_sent) in hostile_layers.items():
            status, err, peak, _ = sampled_pull(f"{hostile_host}/hostile:{tag}")
            hostile_done[tag].wait(timeout=60)
            sent = hostile_sent.get(tag, size)
            print(f"hostile registry, {tag}: a {size}-byte layer; {sent} bytes sent before the pull hung up, "
                  f"the pull's folder grew by {peak} bytes at most")
            check(status == 6 and text in err, f"a {size >> 20} MiB layer ({tag}) is refused", err)
            check(sent < max_sent, f"the layer ({tag}) is received only as far as it is read",
                  f"{sent} bytes sent, more than {max_sent}")
            check(peak < 4 << 20 and os.listdir(small) == [], f"the layer ({tag}) wrote (almost) nothing",
                  f"peak {peak} bytes, left {os.listdir(small)}")

        # A signature and a listing as large as they may be (a million files, a 128-byte path and a
        # chunk digest each: 65 MB and 145 MB), which anyone can make, refused only at the listing's
        # end, where the MAC is checked. Held in memory they made a pull grow by about 0.4 GB;
        # spooled to an unnamed file in the staging folder (the pull's file system, not the small
        # tmpfs) and read back a line at a time, by a few buffers.
        def huge_listing_layer(files=1000000):
            head = b"\n".join(real[0][1].split(b"\n")[:3]) + b"\n"
            line, listing_size = b"0" * 64 + b"\n", files * (9 + 8 + 128)

            def header(name, size):
                info = tarfile.TarInfo(name)
                info.size = size
                return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

            yield header("checkpoint.hmac", len(head) + files * len(line)) + head
            for _ in range(files // 1000):
                yield line * 1000
            yield b"\0" * (-(len(head) + files * len(line)) % 512) + header("checkpoint.listing", listing_size)
            for start in range(0, files, 1000):
                yield b"".join(b"F" + (8 + 128).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"f%07d" % i +
                               b"x" * 120 for i in range(start, start + 1000))
            yield b"\0" * (-listing_size % 512 + 1024)

        made_bodies["huge-listing"] = huge_listing_layer
        sha, size = hashlib.sha256(), 0
        for piece in huge_listing_layer():
            sha.update(piece)
            size += len(piece)
        hostile_digests["huge-listing"] = "sha256:" + sha.hexdigest()
        hostile_layers["huge-listing"] = ("application/vnd.oci.image.layer.v1.tar", None, None, size, None, None)
        hostile_done["huge-listing"] = threading.Event()
        status, err, _, rss = sampled_pull(f"{hostile_host}/hostile:huge-listing", into=pulls)
        print(f"hostile registry, huge-listing: a {size}-byte layer; the pull's peak memory {rss >> 20} MiB")
        check(status == 6 and "listing does not match its signature" in err,
              "a signature and a listing as large as they may be are refused at the listing's end", err)
        # Under AddressSanitizer (scripts/sanitize.sh) what was freed stays resident (its quarantine).
        with open(cli, "rb") as f:
            sanitized = b"__asan_init" in f.read()
        check(sanitized or rss < 64 << 20, "they cost the pull a few MiB of memory, not what they take",
              f"{rss >> 20} MiB resident at the peak")
        check(sorted(os.listdir(pulls)) == sorted(kept), "the huge listing left nothing behind",
              f"{sorted(os.listdir(pulls))} vs {sorted(kept)}")
    finally:
        hostile_server.shutdown()
        hostile_server.server_close()
    push_layer("checkpoints/counter", "two-layers", tar_of(member("a")), layers=2)
    refused_pull("two-layers", 6, "exactly one layer", "a manifest with two layers")
    push_layer("checkpoints/counter", "not-tar", b"\x1f\x8b not a tar at all" * 100)
    refused_pull("not-tar", 6, "refused", "a layer that is not a tar")
    push_layer("checkpoints/counter", "gzip-claimed", tar_of(member("a")),
               media_type="application/vnd.oci.image.layer.v1.tar+gzip")
    refused_pull("gzip-claimed", 6, "not as its manifest says", "a layer not compressed as its manifest says")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pushed.get("digest"),
         "size": len(json.dumps(raw)), "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    status, _, body = http("PUT", "/v2/checkpoints/counter/manifests/index", index,
                           {"Content-Type": "application/vnd.oci.image.index.v1+json"})
    check(status == 201, "an image index is put", body)
    refused_pull("index", 6, "is an image index", "an image index")
    refused_pull("no-such-tag", 3, "not in the registry", "a tag the registry does not have")

    # The manifest changed in the registry's storage: refused when pulled by its digest.
    def stored_blob(digest):
        hexd = digest.split(":", 1)[-1]
        return os.path.join(storage, "docker", "registry", "v2", "blobs", "sha256", hexd[:2], hexd, "data")

    manifest_blob = stored_blob(pushed.get("digest", ""))
    check(os.path.exists(manifest_blob), "the pushed manifest is in the registry's storage", manifest_blob)
    if os.path.exists(manifest_blob):
        with open(manifest_blob, "rb") as f:
            stored = f.read()
        with open(manifest_blob, "wb") as f:
            f.write(stored.replace(b'"counter-demo"', b'"counter-demO"', 1))
    refused_pull(pushed.get("digest"), 6, "is not the one its digest names", "a manifest changed in the registry")
    if os.path.exists(manifest_blob):
        with open(manifest_blob, "wb") as f:
            f.write(stored)

    # The layer changed in the registry's storage, in its last byte (the tar's end padding, which
    # only the digest covers): the pull reads the layer to its end, and refuses it by its digest
    # although every file it holds verified.
    layer_digest = raw["layers"][0]["digest"] if raw.get("layers") else "sha256:"
    blob = stored_blob(layer_digest)
    check(os.path.exists(blob), "the pushed layer is in the registry's storage", blob)
    if os.path.exists(blob):
        with open(blob, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 1]))
    refused_pull("v1", 6, "is not the one its manifest names", "a layer changed in the registry")
    # A layer that goes on after its tar's end (zstd of the tar and 64 MiB of zeros, which
    # libarchive never decompresses): it is pulled; with its last byte changed in the registry's
    # storage it is refused by its digest, which the pull checks, before it commits, over the bytes
    # after the tar's end too.
    trailing = zstd(plain_layer + b"\0" * (64 << 20))
    push_layer("checkpoints/counter", "trailing", trailing, media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    r = run("pull", f"{host}/checkpoints/counter:trailing", "--dir", os.path.join(pulls, "trailing"), "--insecure")
    check(r.returncode == 0, "a layer that goes on after its tar's end is pulled", r.stdout + r.stderr)
    kept.append("trailing")
    with open(stored_blob(digest_of(trailing)), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))
    refused_pull("trailing", 6, "is not the one its manifest names", "a layer changed after its tar's end")

    # Pulled on the other host: two network namespaces joined by a veth pair, the registry listening
    # on A's address. A dumps the counter signed with its Ed25519 key, pushes it, and skopeo (in A)
    # copies it gzip-compressed; B, holding no key but A's public one, pulls the copy, verifies it
    # and restores it, and the counter runs on in B's network namespace. Commands enter a namespace
    # with `nsenter --net` (`ip netns exec` would also make a mount namespace CRIU must then handle).
    ns_tag = os.getpid() % 100000
    net = {"A": f"ncrA{ns_tag}", "B": f"ncrB{ns_tag}"}
    subnet = f"10.202.{os.getpid() % 250}"
    addr = {"A": f"{subnet}.1", "B": f"{subnet}.2"}
    namespaces.extend(net.values())
    join_hosts(net, addr, {"A": f"ncrva{ns_tag}", "B": f"ncrvb{ns_tag}"})

    def in_host(h, *args):
        return ["nsenter", f"--net=/run/netns/{net[h]}", *args]

    host_dir = {h: os.path.join(tmp, f"host{h}") for h in "AB"}
    host_env = {}
    for h in "AB":
        os.makedirs(os.path.join(host_dir[h], "keys"), mode=0o700)
        host_env[h] = dict(os.environ, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=os.path.join(host_dir[h], "keys", "key"))

    def run_on(h, *args):
        return subprocess.run(in_host(h, cli, *args), env=host_env[h], capture_output=True, text=True, timeout=300)

    a_config = os.path.join(host_dir["A"], "registry.yml")
    with open(a_config, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                f"{host_dir['A']}/registry-data\nhttp:\n  addr: {addr['A']}:5000\n")
    a_registry = subprocess.Popen(in_host("A", registry_bin, "serve", a_config), stdout=registry_log,
                                  stderr=subprocess.STDOUT)
    to_kill.append(a_registry.pid)
    a_host = f"{addr['A']}:5000"
    check(wait_for(lambda: subprocess.run(in_host("A", sys.executable, "-c", "import urllib.request as u; "
                                                  f"u.urlopen('http://{a_host}/v2/', timeout=2)"),
                                          capture_output=True).returncode == 0, seconds=30),
          "the registry answers on A's address")

    r = run_on("A", "keygen", "--ed25519", "--public-key-out", os.path.join(tmp, "a.pub"))
    check(r.returncode == 0, "A makes its Ed25519 key", r.stdout + r.stderr)
    os.makedirs(os.path.join(tmp, "counter2"))
    a_tree = subprocess.Popen(in_host("A", counter, os.path.join(tmp, "counter2")))
    to_kill.append(a_tree.pid)

    wait_for(lambda: count("counter2") >= 3)
    a_ckpt = os.path.join(host_dir["A"], "ckpt")
    r = run_on("A", "dump", "--pid", str(a_tree.pid), "--dir", a_ckpt, "--sign", "ed25519")
    check(r.returncode == 0, "A dumps the counter, signed with its Ed25519 key", r.stdout + r.stderr)
    wait_for(lambda: (reap(), a_tree.poll() is not None)[1])
    at_dump2 = count("counter2")
    r = run_on("A", "push", "--dir", a_ckpt, f"{a_host}/ckpt/counter:v1", "--insecure")
    check(r.returncode == 0, "A pushes it to the registry on its address", r.stdout + r.stderr)
    r = subprocess.run(in_host("A", "skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                               "--dest-compress", "--dest-compress-format=gzip", f"docker://{a_host}/ckpt/counter:v1",
                               f"docker://{a_host}/copies/counter:v1"), capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, "skopeo in A copies it, gzip-compressed", r.stdout + r.stderr)

    b_pulled = os.path.join(host_dir["B"], "pulled")
    r = run_on("B", "pull", f"{a_host}/copies/counter:v1", "--dir", b_pulled, "--insecure")
    check(r.returncode == 6 and "trust" in r.stderr and not os.path.exists(b_pulled),
          "B refuses it while it does not trust A's key",
          r.stdout + r.stderr)
    r = run_on("B", "trust", "add", os.path.join(tmp, "a.pub"))
    check(r.returncode == 0, "B trusts A's public key", r.stdout + r.stderr)
    r = run_on("B", "pull", f"{a_host}/copies/counter:v1", "--dir", b_pulled, "--insecure")
    check(r.returncode == 0, "B pulls the copy from A's registry", r.stdout + r.stderr)
    r = run_on("B", "verify", "--dir", b_pulled)
    check(r.returncode == 0, "the pulled checkpoint verifies on B", r.stdout + r.stderr)
    r = run_on("B", "restore", "--dir", b_pulled, "--json")
    b_restored = json.loads(r.stdout).get("pid", 0) if r.stdout.startswith("{") else 0
    check(r.returncode == 0 and b_restored == a_tree.pid, "B restores it", r.stdout + r.stderr)
    if b_restored > 0:
        to_kill.append(-b_restored)  # its process group: the counter and its child
        check(os.stat(f"/proc/{b_restored}/ns/net").st_ino == os.stat(f"/run/netns/{net['B']}").st_ino,
              "the restored counter is in B's network namespace")
    check(wait_for(lambda: count("counter2") > at_dump2 + 5), "the counter runs on in B",
          f"{at_dump2} -> {count('counter2')}")
    print(f"pulled on the other host: restored as {b_restored} in {net['B']}, counting "
          f"{at_dump2} -> {count('counter2')}")
    check(sorted(os.listdir(os.path.join(host_dir["B"], "keys"))) == ["trusted-keys"],
          "B holds no key of its own, only A's public key", str(os.listdir(os.path.join(host_dir["B"], "keys"))))
finally:
    for pid in to_kill:  # SIGKILL: the registry, the counter, the restored tree's group
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in namespaces:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    registry.terminate()
    try:
        registry.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.kill()
        registry.wait()
    if tree is not None and tree.poll() is None:
        tree.kill()
    reap()
    for path in mounted:
        subprocess.run(["umount", path], capture_output=True)

if test_support.failures == 0:
    shutil.rmtree(tmp, ignore_errors=True)  # kept when something failed, to look at
finish("registry")
