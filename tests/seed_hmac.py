#!/usr/bin/python3
"""The checkpoint signatures, written again apart from the library, to check HmacTree against.

Usage:
  seed_hmac.py DIR KEYFILE
      The seed format: nucleus-container 0.3.3's checkpoint HMAC, from the seed's
      compute_checkpoint_hmac / update_checkpoint_hmac_inner. Prints the lowercase hex
      HMAC-SHA256 of DIR (what checkpoint.hmac holds).
  seed_hmac.py --format chunked [--chunk-size N] DIR KEYFILE
      The chunked format (version 2). Prints exactly what checkpoint.hmac holds:
        nucleus-checkpoint-signature 2\\n
        chunk-size N\\n
        hmac-sha256 <64 lowercase hex digits>\\n
      N is a power of two from 4096 to 2**30 (default 4 MiB). A signature's N must be at least
      1 MiB (2**20), or verification refuses it; smaller ones are for checking the arithmetic
      on small files. The MAC is HMAC-SHA256(key) over
        b"nucleus-checkpoint-signature 2" b"\\0" u64le(N)
      then, for each entry in the seed's walk order,
        a folder: b"D" u64le(len(path)) path
        a file:   b"F" u64le(len(path)) path u64le(size) digest
        a layer's parent link (images/parent, the one symlink allowed, whose target must be exactly
        "../../NAME/images" with NAME a plain folder name):
                  b"L" u64le(len(path)) path u64le(len(target)) target
      where digest = SHA-256 over the concatenated SHA-256 digests of the file's consecutive
      N-byte chunks (the last may be shorter; an empty file has no chunks, so its digest is
      SHA-256 of nothing).
  seed_hmac.py --format manifest [--chunk-size N] DIR KEYFILE
      The manifest format (version 3). The same MAC as the chunked format's, but over
        b"nucleus-checkpoint-signature 3" b"\\0" u64le(N) ...
      and checkpoint.hmac holds the same three lines (with version 3), then one line for each file
      in walk order (folders have none): the lowercase hex of its chunk digests, concatenated (64
      digits a chunk, ceil(size / N) of them; an empty file's line is empty).
  seed_hmac.py --verify DIR KEYFILE
      Verifies DIR against its checkpoint.hmac, in any of the three formats; prints "verified".
      A format 2 or 3 signature may be an Ed25519 one, its third line
        ed25519 <key id: 32 lowercase hex digits> <signature: 128 lowercase hex digits>
      instead of the hmac-sha256 line; KEYFILE is then the signer's public key file
        nucleus-checkpoint-ed25519-public 1\n<the 32-byte key: 64 lowercase hex digits>\n
      whose id is the first 16 bytes of SHA-256 of the key. The signature is Ed25519ph (RFC 8032,
      libsodium's crypto_sign_ed25519ph, through PyNaCl) over
        b"nucleus-checkpoint-ed25519" b"\0"
      followed by exactly the bytes the HMAC would cover.
      Version 3 is checked as the library does: the manifest first, against the walk and the MAC,
      without reading a file; then each file's chunks, refused at the first that differs, with
      the message "checkpoint file 'PATH' differs from what was signed in bytes FIRST–LAST".
      A signature's N must be at least 1 MiB here.
  seed_hmac.py --file-digest [--chunk-size N] FILE
      Prints the lowercase hex chunked digest of one file.

All formats walk the tree the same way: depth first, the names of each folder sorted as bytes,
paths relative to DIR joined with "/", only the top-level checkpoint.hmac left out.
Exit 1 when the tree is refused (a symlink but a layer's parent link, any in the seed format; a special file, name not UTF-8, a file that changes size
while read) or does not verify; exit 2 on a usage error.

Kept apart from the library on purpose: Python's hmac does the key handling (keys longer
than the 64-byte block are hashed first) and names are bytes from os.listdir, sorted as bytes.
"""

import hashlib
import hmac
import os
import re
import stat
import sys

SIGNATURE = b"checkpoint.hmac"
READ_SIZE = 64 * 1024
FAMILY = b"nucleus-checkpoint-signature "
CHUNKED_HEADERS = {"chunked": FAMILY + b"2", "manifest": FAMILY + b"3"}
DEFAULT_CHUNK_SIZE = 4 << 20
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 4 << 10, 1 << 30
MIN_SIGNED_CHUNK_SIZE = 1 << 20  # what a signature may have


class Refused(Exception):
    pass


class Usage(Exception):
    pass


def u64le(n):
    return n.to_bytes(8, "little")


PARENT_LINK = b"images/parent"


def parent_link_target_ok(target):
    match = re.fullmatch(rb"\.\./\.\./([^/\0]{1,255})/images", target)
    if not match or match.group(1) in (b".", b".."):
        return False
    try:
        match.group(1).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def walk(folder, rel_parts=()):
    """Yields (kind, rel, path, size) in the signatures' walk order; kind is "D", "F" or "L" (the
    parent link, whose target takes the place of path)."""
    for name in sorted(os.listdir(folder)):
        # Only the top-level signature is left out; a nested one is ordinary content.
        if not rel_parts and name == SIGNATURE:
            continue
        parts = rel_parts + (name,)
        rel = b"/".join(parts)
        path = os.path.join(folder, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if rel != PARENT_LINK or not parent_link_target_ok(target):
                raise Refused("symlink %r" % rel)
            yield "L", rel, target, 0
            continue
        try:
            rel.decode("utf-8")  # strict: no surrogates, no overlong forms, as Rust's to_str
        except UnicodeDecodeError:
            raise Refused("name is not UTF-8: %r" % rel)
        if stat.S_ISDIR(st.st_mode):
            yield "D", rel, path, 0
            yield from walk(path, parts)
        elif stat.S_ISREG(st.st_mode):
            yield "F", rel, path, st.st_size
        else:
            raise Refused("special file %r" % rel)


def read_pieces(path, size, piece):
    """Yields the file's bytes in pieces of at most `piece` bytes; Refused if it is not `size`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        total = 0
        while True:
            # Reads until a piece is full, so that pieces are exactly the chunks.
            data = b""
            while len(data) < piece:
                more = os.read(fd, min(piece - len(data), READ_SIZE))
                if not more:
                    break
                data += more
            if not data:
                break
            total += len(data)
            yield data
            if len(data) < piece:
                break
        if total != size or os.read(fd, 1):
            raise Refused("file changed size while read: %r" % path)
    finally:
        os.close(fd)


def seed_mac(key, root):
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for kind, rel, path, size in walk(root):
        if kind == "L":
            raise Refused("the seed format cannot cover a layer's parent link %r" % rel)
        mac.update(kind.encode() + b"\0" + rel + b"\0")
        if kind == "F":
            mac.update(u64le(size))
            for data in read_pieces(path, size, READ_SIZE):
                mac.update(data)
    return mac.hexdigest()


def chunk_digests(path, size, chunk_size):
    """The file's chunk digests, concatenated (32 bytes each)."""
    return b"".join(hashlib.sha256(chunk).digest() for chunk in read_pieces(path, size, chunk_size))


def chunked_file_digest(path, size, chunk_size):
    return hashlib.sha256(chunk_digests(path, size, chunk_size)).digest()


def chunked_mac(key, header, chunk_size):
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(header + b"\0" + u64le(chunk_size))
    return mac


def record(kind, rel, size=None, file_digest=None):
    """A walk entry's record; for "L", file_digest is the link's target."""
    if kind == "D":
        return b"D" + u64le(len(rel)) + rel
    if kind == "L":
        return b"L" + u64le(len(rel)) + rel + u64le(len(file_digest)) + file_digest
    return b"F" + u64le(len(rel)) + rel + u64le(size) + file_digest


def chunked_signature(key, root, chunk_size, fmt="chunked"):
    header = CHUNKED_HEADERS[fmt]
    mac = chunked_mac(key, header, chunk_size)
    manifest = []
    for kind, rel, path, size in walk(root):
        if kind == "D":
            mac.update(record(kind, rel))
        elif kind == "L":
            mac.update(record(kind, rel, file_digest=path))
        else:
            digests = chunk_digests(path, size, chunk_size)
            mac.update(record(kind, rel, size, hashlib.sha256(digests).digest()))
            manifest.append(digests.hex() + "\n")
    text = "%s\nchunk-size %d\nhmac-sha256 %s\n" % (header.decode(), chunk_size, mac.hexdigest())
    return text + "".join(manifest) if fmt == "manifest" else text


def signed_chunk_size(line):
    if not line.startswith(b"chunk-size "):
        raise Refused("expected a chunk-size line")
    text = line[len(b"chunk-size "):].decode("ascii", "replace")
    if not text.isdigit() or text.startswith("0"):
        raise Refused("chunk size %r is not a decimal number" % text)
    n = int(text)
    if n & (n - 1) or not MIN_SIGNED_CHUNK_SIZE <= n <= MAX_CHUNK_SIZE:
        raise Refused("chunk size must be a power of two from %d to %d" % (MIN_SIGNED_CHUNK_SIZE, MAX_CHUNK_SIZE))
    return n


ED25519_DOMAIN = b"nucleus-checkpoint-ed25519"
ED25519_PUBLIC_HEADER = b"nucleus-checkpoint-ed25519-public 1\n"


class Ed25519phCheck:
    """Takes update() as an HMAC does; check() verifies the signature line with the public key file."""

    def __init__(self, public_key_file, line, header, chunk_size):
        import nacl.bindings as sodium  # only Ed25519 signatures need PyNaCl (python3-nacl)
        self.sodium = sodium
        match = re.fullmatch(b"ed25519 ([0-9a-f]{32}) ([0-9a-f]{128})", line)
        if not match:
            raise Refused("the ed25519 line is not a key id and a signature in lowercase hex")
        if not re.fullmatch(re.escape(ED25519_PUBLIC_HEADER) + b"[0-9a-f]{64}\n", public_key_file):
            raise Refused("KEYFILE is not an Ed25519 public key file")
        self.public_key = bytes.fromhex(public_key_file[len(ED25519_PUBLIC_HEADER):-1].decode())
        if hashlib.sha256(self.public_key).digest()[:16].hex().encode() != match.group(1):
            raise Refused("signed by another key: the key id is not KEYFILE's")
        self.signature = bytes.fromhex(match.group(2).decode())
        self.state = sodium.crypto_sign_ed25519ph_state()
        self.update(ED25519_DOMAIN + b"\0" + header + b"\0" + u64le(chunk_size))

    def update(self, data):
        self.sodium.crypto_sign_ed25519ph_update(self.state, data)

    def check(self):
        try:
            self.sodium.crypto_sign_ed25519ph_final_verify(self.state, self.signature, self.public_key)
        except Exception:
            raise Refused("Ed25519 signature mismatch")


def signed_records(key, header, chunk_size, line):
    """The authenticator the signature line names, fed the header: (update, check)."""
    if line.startswith(b"ed25519 "):
        ed = Ed25519phCheck(key, line, header, chunk_size)
        return ed.update, ed.check
    if not re.fullmatch(b"hmac-sha256 [0-9a-f]{64}", line):
        raise Refused("hmac-sha256 is not 64 lowercase hex digits")
    mac = chunked_mac(key, header, chunk_size)

    def check():
        if not hmac.compare_digest(mac.hexdigest().encode(), line[len(b"hmac-sha256 "):]):
            raise Refused("HMAC mismatch")
    return mac.update, check


def verify_manifest(key, root, text):
    """Format 3: the manifest against the walk and the MAC, reading no file; then every chunk."""
    if not text.endswith(b"\n"):
        raise Refused("the last line is unterminated")
    lines = text[:-1].split(b"\n")
    if len(lines) < 3:
        raise Refused("expected the chunk-size and signature lines")
    chunk_size = signed_chunk_size(lines[1])
    manifest = lines[3:]
    update, check = signed_records(key, CHUNKED_HEADERS["manifest"], chunk_size, lines[2])
    files = []
    for kind, rel, path, size in walk(root):
        if kind in ("D", "L"):
            update(record(kind, rel, file_digest=path if kind == "L" else None))
            continue
        if len(files) == len(manifest):
            raise Refused("the manifest lists %d files, the folder holds more" % len(manifest))
        line = manifest[len(files)]
        chunks = -(-size // chunk_size)
        if len(line) != 64 * chunks or not re.fullmatch(b"[0-9a-f]*", line):
            raise Refused("manifest line %d is not %d chunk digests in lowercase hex" % (len(files) + 1, chunks))
        digests = bytes.fromhex(line.decode("ascii"))
        update(record(kind, rel, size, hashlib.sha256(digests).digest()))
        files.append((rel, path, size, digests))
    if len(files) != len(manifest):
        raise Refused("the manifest lists %d files, the folder holds %d" % (len(manifest), len(files)))
    check()
    for rel, path, size, digests in files:
        for i, chunk in enumerate(read_pieces(path, size, chunk_size)):
            if hashlib.sha256(chunk).digest() != digests[32 * i:32 * (i + 1)]:
                first = i * chunk_size
                raise Refused("checkpoint file '%s' differs from what was signed in bytes %d\u2013%d"
                              % (rel.decode(), first, first + len(chunk) - 1))


def verify(key, root):
    with open(os.path.join(root, SIGNATURE), "rb") as f:
        text = f.read()
    if text.startswith(CHUNKED_HEADERS["manifest"] + b"\n"):
        verify_manifest(key, root, text)
    elif text.startswith(CHUNKED_HEADERS["chunked"] + b"\n") and b"\ned25519 " in text:
        lines = text.split(b"\n")
        if len(lines) != 4 or lines[3]:
            raise Refused("not the one form of a version 2 signature")
        chunk_size = signed_chunk_size(lines[1])
        update, check = signed_records(key, CHUNKED_HEADERS["chunked"], chunk_size, lines[2])
        for kind, rel, path, size in walk(root):
            update(record(kind, rel) if kind == "D" else record(kind, rel, file_digest=path) if kind == "L"
                   else record(kind, rel, size, chunked_file_digest(path, size, chunk_size)))
        check()
    elif text.startswith(CHUNKED_HEADERS["chunked"] + b"\n"):
        lines = text.split(b"\n")
        chunk_size = signed_chunk_size(lines[1]) if len(lines) > 1 else 0
        if text != chunked_signature(key, root, chunk_size).encode():
            raise Refused("HMAC mismatch, or not the one form of a version 2 signature")
    elif text.startswith(FAMILY):
        raise Refused("unknown signature version")
    elif not hmac.compare_digest(text.strip(b" \t\r\n"), seed_mac(key, root).encode()):
        raise Refused("HMAC mismatch")
    return "verified\n"


def parse_chunk_size(text):
    # The format's rule (decimal, no leading zero, a power of two), down to 4 KiB.
    if not text.isdigit() or text.startswith("0"):
        raise Usage("chunk size %r is not a decimal number" % text)
    n = int(text)
    if n & (n - 1) or not MIN_CHUNK_SIZE <= n <= MAX_CHUNK_SIZE:
        raise Usage("chunk size must be a power of two from %d to %d" % (MIN_CHUNK_SIZE, MAX_CHUNK_SIZE))
    return n


def read_key(path):
    with open(path, "rb") as f:
        return f.read()


def run(args):
    mode = "seed"
    chunk_size = DEFAULT_CHUNK_SIZE
    operands = []
    while args:
        arg = args.pop(0)
        if arg == "--format" and args:
            mode = args.pop(0)
            if mode not in ("seed", "chunked", "manifest"):
                raise Usage("unknown format %r" % mode)
        elif arg == "--chunk-size" and args:
            chunk_size = parse_chunk_size(args.pop(0))
        elif arg == "--file-digest":
            mode = "file-digest"
        elif arg == "--verify":
            mode = "verify"
        elif arg.startswith("--"):
            raise Usage("unknown option %r" % arg)
        else:
            operands.append(arg)
    if mode == "file-digest":
        if len(operands) != 1:
            raise Usage("--file-digest takes one FILE")
        path = os.fsencode(operands[0])
        return chunked_file_digest(path, os.stat(path).st_size, chunk_size).hex() + "\n"
    if len(operands) != 2:
        raise Usage("expected DIR KEYFILE")
    root, key = os.fsencode(operands[0]), read_key(operands[1])
    if mode == "verify":
        return verify(key, root)
    if mode in CHUNKED_HEADERS:
        return chunked_signature(key, root, chunk_size, mode)
    return seed_mac(key, root) + "\n"


def main(argv):
    try:
        sys.stdout.write(run(argv[1:]))
    except Usage as e:
        sys.stderr.write("seed_hmac.py: %s\n"
                         "usage: seed_hmac.py [--format seed|chunked|manifest] [--chunk-size N] DIR KEYFILE\n"
                         "       seed_hmac.py --verify DIR KEYFILE\n"
                         "       seed_hmac.py --file-digest [--chunk-size N] FILE\n" % e)
        return 2
    except Refused as e:
        sys.stderr.write("seed_hmac.py: refused: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
