#!/usr/bin/env python3
"""The README's programs as a user pastes them: the C and C++ blocks (```c, ```cpp) of its "Use"
section are extracted, built against the installed library with the README's own line
(`cc app.c $(pkg-config --cflags --libs nucleus-checkpoint)`, with nothing but our .pc visible),
with -Wall -Wextra -Werror, and run as root with the real CRIU. Each must checkpoint its counter,
restore it under the same PID and show it counting on from where it stopped, and leave nothing
running. Usage: readme_snippets_test.py README BUILD_DIR TMP_DIR"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_support import become_subreaper, check, finish, reap  # noqa: E402

readme, build, tmp = sys.argv[1:4]


def use_section(text):
    """The text of the "## Use" section, up to the next level-2 heading."""
    start = re.search(r"^## Use\n", text, re.M)
    if not start:
        return ""
    end = re.search(r"^## ", text[start.end():], re.M)
    return text[start.end():start.end() + end.start()] if end else text[start.end():]


def blocks(section, language):
    """The fenced blocks of a language, exactly as the README holds them."""
    return re.findall(r"^```" + language + r"\n(.*?)^```$", section, re.M | re.S)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


section = use_section(open(readme, encoding="utf-8").read())
c_blocks, cpp_blocks = blocks(section, "c"), blocks(section, "cpp")
check(len(c_blocks) == 1 and len(cpp_blocks) == 1, "the Use section holds one C and one C++ program",
      f"{len(c_blocks)} C blocks, {len(cpp_blocks)} C++ blocks")
check("cc app.c $(pkg-config --cflags --libs nucleus-checkpoint)" in section and
      "c++ -std=c++20 app.cpp $(pkg-config --cflags --libs nucleus-checkpoint)" in section,
      "the Use section says how to build them, as this test does")

become_subreaper()  # restored trees are reparented here, and reaped at once
os.makedirs(tmp, exist_ok=True)
root = tempfile.mkdtemp(prefix="readme-", dir=tmp)
try:
    # The installed library, found through its .pc alone (as tests/installed_test.sh does).
    subprocess.run(["meson", "install", "-C", build, "--destdir", f"{root}/sysroot", "--no-rebuild", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    pcs = [os.path.join(d, f) for d, _, fs in os.walk(f"{root}/sysroot") for f in fs if f == "nucleus-checkpoint.pc"]
    os.makedirs(f"{root}/pc")
    shutil.copy(pcs[0], f"{root}/pc/")
    env = dict(os.environ, PKG_CONFIG_LIBDIR=f"{root}/pc", PKG_CONFIG_PATH="", PKG_CONFIG_SYSROOT_DIR=f"{root}/sysroot")
    flags = subprocess.run("pkg-config --cflags --libs nucleus-checkpoint", shell=True, env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    libdir = subprocess.run(["pkg-config", "--variable=libdir", "nucleus-checkpoint"], env=env, check=True,
                            capture_output=True, text=True).stdout.strip()
    os.mkdir(f"{root}/keys", 0o700)
    run_env = dict(os.environ, LD_LIBRARY_PATH=libdir, NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=f"{root}/keys/key")

    for language, code in [("c", c_blocks[:1]), ("cpp", cpp_blocks[:1])]:
        if not code:
            continue
        source = f"{root}/app.{language}"
        with open(source, "w", encoding="utf-8") as f:
            f.write(code[0])
        compiler = ["cc", "-std=c11"] if language == "c" else ["c++", "-std=c++20"]
        built = subprocess.run(compiler + ["-Wall", "-Wextra", "-Werror", source] + flags + ["-o", f"{root}/app-{language}"],
                               capture_output=True, text=True)
        if not check(built.returncode == 0, f"the README's {language} program builds", built.stderr):
            continue
        ckpt = f"{root}/checkpoint-{language}"
        ran = subprocess.run([f"{root}/app-{language}", ckpt], env=run_env, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        out = ran.stdout
        detail = f"exit {ran.returncode}\nstdout:\n{out}\nstderr:\n{ran.stderr}"
        check(ran.returncode == 0, f"the README's {language} program runs", detail)
        before = [int(n) for n in re.findall(r"^before: (\d+)$", out, re.M)]
        after = [int(n) for n in re.findall(r"^after: (\d+)$", out, re.M)]
        pids = re.findall(r"^restored as PID (\d+) \(it was (\d+)\)$", out, re.M)
        check(before == [0, 1, 2], f"{language}: the counter counted before the checkpoint", detail)
        check(len(pids) == 1 and pids[0][0] == pids[0][1], f"{language}: restored under its own PID", detail)
        check(len(after) == 3 and after == list(range(after[0], after[0] + 3)) and 2 < after[0] < 20,
              f"{language}: the restored counter went on from where it stopped", detail)
        check(os.path.isfile(f"{ckpt}/checkpoint.hmac"), f"{language}: the checkpoint is in place, signed", detail)
        # It killed what it restored; nothing of it is left running.
        for _ in range(100):
            reap()
            if not pids or not alive(int(pids[0][0])):
                break
            time.sleep(0.05)
        check(not pids or not alive(int(pids[0][0])), f"{language}: nothing is left running", detail)
finally:
    reap()
    shutil.rmtree(root, ignore_errors=True)
finish("readme_snippets")
