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
      where digest = SHA-256 over the concatenated SHA-256 digests of the file's consecutive
      N-byte chunks (the last may be shorter; an empty file has no chunks, so its digest is
      SHA-256 of nothing).
  seed_hmac.py --file-digest [--chunk-size N] FILE
      Prints the lowercase hex chunked digest of one file.

Both formats walk the tree the same way: depth first, the names of each folder sorted as bytes,
paths relative to DIR joined with "/", only the top-level checkpoint.hmac left out.
Exit 1 when the tree is refused (symlink, special file, name not UTF-8, a file that changes size
while read); exit 2 on a usage error.

Kept apart from the library on purpose: Python's hmac does the key handling (keys longer
than the 64-byte block are hashed first) and names are bytes from os.listdir, sorted as bytes.
"""

import hashlib
import hmac
import os
import stat
import sys

SIGNATURE = b"checkpoint.hmac"
READ_SIZE = 64 * 1024
CHUNKED_HEADER = b"nucleus-checkpoint-signature 2"
DEFAULT_CHUNK_SIZE = 4 << 20
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 4 << 10, 1 << 30  # a signature's chunks: from 1 << 20


class Refused(Exception):
    pass


class Usage(Exception):
    pass


def u64le(n):
    return n.to_bytes(8, "little")


def walk(folder, rel_parts=()):
    """Yields (kind, rel, path, size) in the signatures' walk order; kind is "D" or "F"."""
    for name in sorted(os.listdir(folder)):
        # Only the top-level signature is left out; a nested one is ordinary content.
        if not rel_parts and name == SIGNATURE:
            continue
        parts = rel_parts + (name,)
        rel = b"/".join(parts)
        path = os.path.join(folder, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise Refused("symlink %r" % rel)
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
        mac.update(kind.encode() + b"\0" + rel + b"\0")
        if kind == "F":
            mac.update(u64le(size))
            for data in read_pieces(path, size, READ_SIZE):
                mac.update(data)
    return mac.hexdigest()


def chunked_file_digest(path, size, chunk_size):
    outer = hashlib.sha256()
    for chunk in read_pieces(path, size, chunk_size):
        outer.update(hashlib.sha256(chunk).digest())
    return outer.digest()


def chunked_signature(key, root, chunk_size):
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(CHUNKED_HEADER + b"\0" + u64le(chunk_size))
    for kind, rel, path, size in walk(root):
        mac.update(kind.encode() + u64le(len(rel)) + rel)
        if kind == "F":
            mac.update(u64le(size) + chunked_file_digest(path, size, chunk_size))
    return "%s\nchunk-size %d\nhmac-sha256 %s\n" % (CHUNKED_HEADER.decode(), chunk_size, mac.hexdigest())


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
            if mode not in ("seed", "chunked"):
                raise Usage("unknown format %r" % mode)
        elif arg == "--chunk-size" and args:
            chunk_size = parse_chunk_size(args.pop(0))
        elif arg == "--file-digest":
            mode = "file-digest"
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
    if mode == "chunked":
        return chunked_signature(key, root, chunk_size)
    return seed_mac(key, root) + "\n"


def main(argv):
    try:
        sys.stdout.write(run(argv[1:]))
    except Usage as e:
        sys.stderr.write("seed_hmac.py: %s\n"
                         "usage: seed_hmac.py [--format seed|chunked] [--chunk-size N] DIR KEYFILE\n"
                         "       seed_hmac.py --file-digest [--chunk-size N] FILE\n" % e)
        return 2
    except Refused as e:
        sys.stderr.write("seed_hmac.py: refused: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
