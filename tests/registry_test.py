"""Checkpoints as OCI images in a real registry (Debian's docker-registry, started here on
127.0.0.1) with skopeo as an independent client: a real CRIU checkpoint pushed with the CLI is
seen by skopeo inspect (one layer, the checkpoint annotations), copied by skopeo (which may
recompress it) to other names, pulled back by the library, verified and restored. Then what a pull
must refuse, each leaving nothing behind: a layer changed in the registry's storage, a manifest
pointing to another image's layer signed with another key, hostile tars pushed with hand-made
manifests (traversal, absolute names, links, a device, an entry past the size limit), a manifest
with two layers."""
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
import urllib.error
import urllib.request

import test_support
from test_support import become_subreaper, check, finish, reap, wait_for

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

    kept = []

    # A real checkpoint of the counter, made with the CLI.
    os.makedirs(os.path.join(tmp, "counter"))
    tree = subprocess.Popen([counter, os.path.join(tmp, "counter")])

    def count():
        try:
            with open(os.path.join(tmp, "counter", "parent")) as f:
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

    # Hostile tars, each pushed with a hand-made manifest.
    def tar_of(*members):
        out = io.BytesIO()
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

    with open(os.path.join(ckpt, "checkpoint.hmac"), "rb") as f:
        signature = f.read()
    escape = os.path.join(tmp, "escaped")
    hostile = {
        "traversal": ([member("checkpoint.hmac", signature), member("../../escaped", b"out")],
                      "not a plain relative path"),
        "absolute": ([member("checkpoint.hmac", signature), member(escape, b"out")], "not a plain relative path"),
        "symlink": ([member("images", kind=tarfile.DIRTYPE), member("images/pages-1.img", kind=tarfile.SYMTYPE,
                                                                     link="/etc/shadow")], "is a symbolic link"),
        "hardlink": ([member("metadata.json", b"{}"), member("images", kind=tarfile.DIRTYPE),
                      member("images/x", kind=tarfile.LNKTYPE, link="metadata.json")], "is a hard link"),
        "device": ([member("null", kind=tarfile.CHRTYPE)], "is a character device"),
        "twice": ([member("metadata.json", b"{}"), member("metadata.json", b"{}")], "twice"),
    }
    for tag, (members, text) in hostile.items():
        push_layer("checkpoints/counter", tag, tar_of(*members))
        refused_pull(tag, 6, text, f"a hostile tar ({tag})")
    check(not os.path.exists(escape), "nothing was written outside the pull's folder")
    # An entry past the size limit is refused from its header, before its bytes are written.
    push_layer("checkpoints/counter", "huge", tar_of(member("images", kind=tarfile.DIRTYPE),
                                                     member("images/pages-1.img", b"\0" * (2 << 20))))
    refused_pull("huge", 6, "more than 1048576 bytes", "an entry past NUCLEUS_CHECKPOINT_MAX_BYTES",
                 e=dict(env, NUCLEUS_CHECKPOINT_MAX_BYTES=str(1 << 20)))
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

    # The layer changed in the registry's storage: refused by its digest.
    layer_digest = raw["layers"][0]["digest"] if raw.get("layers") else "sha256:"
    blob = stored_blob(layer_digest)
    check(os.path.exists(blob), "the pushed layer is in the registry's storage", blob)
    if os.path.exists(blob):
        with open(blob, "r+b") as f:
            f.seek(os.path.getsize(blob) // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 1]))
    refused_pull("v1", 6, "is not the one its manifest names", "a layer changed in the registry")
finally:
    registry.terminate()
    try:
        registry.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.kill()
        registry.wait()
    if tree is not None and tree.poll() is None:
        tree.kill()
    reap()

if test_support.failures == 0:
    shutil.rmtree(tmp, ignore_errors=True)  # kept when something failed, to look at
finish("registry")
