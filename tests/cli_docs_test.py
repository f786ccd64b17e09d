#!/usr/bin/env python3
"""nucleus-checkpoint's generated man page and bash completion (doc/cli_docs.py) against the
program's --help, read here by a plain scan rather than by the generator's parser, so a flag the
generator drops fails: every flag of every subcommand in its section of the page and offered by the
completion, the page's sections, groff rendering it without a warning (when groff is installed),
every NUCLEUS_CHECKPOINT_* variable lib/ reads under ENVIRONMENT, and the completion of subcommands,
flags, folders, files and choices as bash runs it.
Usage: cli_docs_test.py NUCLEUS_CHECKPOINT MAN_PAGE BASH_COMPLETION LIB_SOURCE_DIR"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from test_support import check, finish

cli, man_page, completion, lib_dir = sys.argv[1:5]
PROGRAM = "nucleus-checkpoint"


def help_text(*args):
    return subprocess.run([cli, *args, "--help"], check=True, capture_output=True, text=True).stdout


def listed(text, title):
    """The first words of the entries of one of the help's lists (Options:, Subcommands:)."""
    block = text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0] if f"\n{title}:\n" in text else ""
    return [m.group(1) for m in re.finditer(r"^  (\S+)", block, re.M)]


def flags_of(*args):
    return [flag for entry in listed(help_text(*args), "Options") for flag in entry.split(",")]


top_help = help_text()
subcommands = listed(top_help, "Subcommands")
flags = {name: flags_of(name) for name in subcommands}
check(len(subcommands) >= 7 and all("--help" in f for f in flags.values()) and "--pid" in flags.get("dump", []),
      "the help lists the subcommands and their flags", top_help)

# --- the man page ---
with open(man_page, encoding="utf-8") as f:
    page = f.read()


def roff(text):
    return text.replace("-", "\\-")


def section(start, ends=(".SH ", ".SS ")):
    """The page's text from the line `start` to the next section heading."""
    lines = page.split("\n")
    if start not in lines:
        return ""
    rest = lines[lines.index(start) + 1:]
    end = next((i for i, line in enumerate(rest) if line.startswith(ends)), len(rest))
    return "\n".join(rest[:end])


check(page.startswith(".\\\"") and f"\n.TH {roff(PROGRAM.upper())} 1 " in page, "the page has its .TH", page[:300])
for title in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "FILES", "ENVIRONMENT",
              "SEE ALSO"]:
    check(f".SH {title}" in page.split("\n"), f"the page has the section {title}")
for flag in flags_of():
    check(f"\\fB{roff(flag)}\\fR" in section(".SH OPTIONS"), f"the page's OPTIONS has {flag}")
for name in subcommands:
    text = section(f".SS {name}")
    check(text.strip() != "", f"the page has a section for {name}")
    for flag in flags[name]:
        if flag not in ("-h", "--help"):  # the page says once that every command takes them
            check(f"\\fB{roff(flag)}\\fR" in text, f"the page's section for {name} has {flag}")
    check(f"\\fB{name}\\fR" in section(".SH SYNOPSIS"), f"the synopsis shows {name}")
exit_line = next((line for line in top_help.split("\n") if line.startswith("Exit code: ")), "")
exit_codes = exit_line[len("Exit code: ") + 1:]  # from the second character: the page capitalises the first
check(exit_codes != "" and roff(exit_codes) in section(".SH EXIT STATUS"),
      "EXIT STATUS says what the help's exit code line says", section(".SH EXIT STATUS"))
check("checkpoint\\-hmac.key" in section(".SH FILES"), "FILES names the key")
check(".BR criu (8)" in section(".SH SEE ALSO"), "SEE ALSO names criu(8)")
read_vars = set()
for folder, _, files in os.walk(lib_dir):
    for name in files:
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            read_vars |= set(re.findall(r'"(NUCLEUS_CHECKPOINT_[A-Z_]+)"', f.read()))
check(len(read_vars) >= 3, "lib/ reads NUCLEUS_CHECKPOINT_* variables", str(read_vars))
for var in sorted(read_vars):
    check(f"\\fB{var}\\fR" in section(".SH ENVIRONMENT"), f"ENVIRONMENT explains {var}")

if shutil.which("groff"):
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", man_page], capture_output=True, text=True)
    check(r.returncode == 0 and r.stderr == "", "groff renders the page without a warning", r.stderr)
    r = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", man_page], capture_output=True, text=True)
    for flag in {f for fs in flags.values() for f in fs}:
        check(re.search(rf"(^|[\s,])({re.escape(flag)})([\s,]|$)", r.stdout) is not None,
              f"the rendered page shows {flag}")
else:
    print("groff is not installed: the page's rendering is not checked")


# --- the bash completion ---
def complete(*words):
    """What the completion offers with the cursor at the end of words' last one."""
    script = ('source "$1"\n'
              f'fn=$(complete -p {PROGRAM} | sed -E "s/.* -F ([^ ]+) .*/\\1/")\n'
              'shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))\n'
              'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
              '"$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script, "bash", completion, PROGRAM, *words],
                       capture_output=True, text=True)
    if r.returncode != 0 or r.stderr:
        print(f"completing {words}: {r.stderr}", file=sys.stderr)
    return [line for line in r.stdout.split("\n") if line]


check(complete("res") == ["restore"], "res completes restore", str(complete("res")))
check(sorted(complete("")) == sorted(subcommands), "an empty word offers every subcommand", str(complete("")))
check(sorted(complete("restore", "--no-s")) == ["--no-shell-job", "--no-stream"], "restore --no-s offers --no-stream",
      str(complete("restore", "--no-s")))
check(complete("restore", "--no-st") == ["--no-stream"], "restore --no-st completes --no-stream",
      str(complete("restore", "--no-st")))
check(set(complete("-")) == set(flags_of()), "before the subcommand, its flags", str(complete("-")))
for name in subcommands:
    offered = complete(name, "-")
    missing = set(flags[name]) - set(offered)
    check(not missing, f"{name} - offers every flag of {name}", f"missing: {sorted(missing)}")
got = complete("dump", "--pid", "1", "--leave-running", "--no-s")
check(got == ["--no-shell-job"], "flags go on after an option's value and after a flag", str(got))
got = complete("restore", "--dir", "c1", "--restore-sibling", "--json", "--w")
check(sorted(got) == ["--wait", "--work-dir"], "--json after the subcommand", str(got))
check(complete("--json", "ve") == ["verify"], "--json before the subcommand", str(complete("--json", "ve")))
check(complete("dump", "--manage-cgroups", "s") == ["soft", "strict"], "--manage-cgroups offers its modes",
      str(complete("dump", "--manage-cgroups", "s")))
check(sorted(complete("sign", "--format", "")) == ["chunked", "manifest", "seed"], "sign --format offers the formats",
      str(complete("sign", "--format", "")))
check(complete("dump", "--pid", "") == [], "--pid offers nothing (not the flags)", str(complete("dump", "--pid", "")))

tmp = tempfile.mkdtemp(prefix="cli-docs-")
try:
    os.mkdir(os.path.join(tmp, "ckpt-folder"))
    open(os.path.join(tmp, "ckpt-file"), "w").close()
    stem = os.path.join(tmp, "ckpt-")
    for words in [("restore", "--dir"), ("dump", "--dir"), ("dump", "--work-dir"), ("restore", "--root"),
                  ("inspect", "--dir")]:
        got = complete(*words, stem)
        check(got == [os.path.join(tmp, "ckpt-folder")], f"{' '.join(words)} completes folders only", str(got))
    got = complete("dump", "--criu", stem)
    check(sorted(got) == sorted([os.path.join(tmp, "ckpt-file"), os.path.join(tmp, "ckpt-folder")]),
          "--criu completes files", str(got))
finally:
    shutil.rmtree(tmp)

finish("cli_docs")
