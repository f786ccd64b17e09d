#!/usr/bin/python3
"""The checkpoint HMAC of nucleus-container 0.3.3, written again from the seed's
compute_checkpoint_hmac / update_checkpoint_hmac_inner, to check HmacTree against.

Usage: seed_hmac.py DIR KEYFILE  -- prints the lowercase hex HMAC-SHA256 of DIR.
Exit 1 when the seed refuses the tree (symlink, special file, name not UTF-8).

Kept apart from the library on purpose: Python's hmac does the key handling (keys longer
than the 64-byte block are hashed first) and names are bytes from os.listdir, sorted as bytes.
"""

import hashlib
import hmac
import os
import stat
import sys

SIGNATURE = b"checkpoint.hmac"
CHUNK = 64 * 1024


class Refused(Exception):
    pass


def feed_folder(mac, folder, rel_parts):
    for name in sorted(os.listdir(folder)):
        # Only the top-level signature is left out; a nested one is ordinary content.
        if not rel_parts and name == SIGNATURE:
            continue
        parts = rel_parts + [name]
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
            mac.update(b"D\0" + rel + b"\0")
            feed_folder(mac, path, parts)
        elif stat.S_ISREG(st.st_mode):
            mac.update(b"F\0" + rel + b"\0" + st.st_size.to_bytes(8, "little"))
            feed_file(mac, path, st.st_size, rel)
        else:
            raise Refused("special file %r" % rel)


def feed_file(mac, path, size, rel):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        total = 0
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            mac.update(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total != size:
        raise Refused("file changed size while read: %r" % rel)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: seed_hmac.py DIR KEYFILE\n")
        return 2
    with open(argv[2], "rb") as f:
        key = f.read()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    try:
        feed_folder(mac, os.fsencode(argv[1]), [])
    except Refused as e:
        sys.stderr.write("seed_hmac.py: refused: %s\n" % e)
        return 1
    print(mac.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
