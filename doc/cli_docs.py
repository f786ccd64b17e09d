#!/usr/bin/env python3
"""Writes nucleus-checkpoint's man page or its bash completion from the program's own --help, so
that neither can miss an option the program has. Fails, rather than write a thinner page, when the
help is not laid out as CLI11 2.x lays it out.
Usage: cli_docs.py man CLI VERSION OUTPUT
       cli_docs.py bash-completion CLI OUTPUT"""
import re
import subprocess
import sys
from dataclasses import dataclass, field

PROGRAM = "nucleus-checkpoint"
# CLI11's help is two columns: an entry's names (and an option's type) from column 2, padded to
# COLUMN, or alone on their line when longer; its description from COLUMN, continued there.
COLUMN = 30
EXIT_CODE_PREFIX = "Exit code: "
# How each value is completed. The help gives a type (TEXT), not whether it names a folder or a
# file, so that comes from the name; choices ({a,b}) come from the help itself.
DIRECTORY_OPTIONS = {"--dir", "--work-dir", "--root", "--cgroup-yard", "--freeze-cgroup"}


def completes_files(name, type_):
    return type_ == "TEXT" and (name == "--criu" or name.endswith("-file"))  # not NAME=PATH ones


class HelpFormatError(Exception):
    pass


@dataclass
class Option:
    names: list          # ["-h", "--help"]
    type: str            # CLI11's type, e.g. "TEXT", "INT:INT in [0 - 4]"; "" for a flag
    description: str
    required: bool = False
    repeatable: bool = False
    notes: str = ""      # e.g. "Needs: --restore-sibling"

    @property
    def choices(self):
        """{a,b} or ENUM's {a->1,b->2} in the type: the values the option accepts."""
        found = re.search(r"\{([^}]*)\}", self.type)
        return [c.split("->")[0] for c in found.group(1).split(",")] if found else []

    @property
    def is_help(self):
        return "--help" in self.names


@dataclass
class Command:
    name: str
    description: list            # its lines
    options: list = field(default_factory=list)
    subcommands: list = field(default_factory=list)  # of (name, description)
    positionals: list = field(default_factory=list)  # of (name, description): push's and pull's REF


def read_help(cli, *args):
    # --help goes to stdout with status 0; a usage error would say the help changed.
    return subprocess.run([cli, *args, "--help"], check=True, capture_output=True, text=True).stdout


def two_column_entries(lines):
    """(left, description) per entry of an Options: or Subcommands: list."""
    entries = []
    for i, line in enumerate(lines):
        if line.startswith(" " * COLUMN):
            if not entries:
                raise HelpFormatError(f"a description with no entry: {line!r}")
            entries[-1][1].append(line.strip())
        elif line.startswith("  ") and line[2] != " ":
            # Padded to COLUMN, the description follows on the line; longer, it starts on the next.
            # A longer one with a space just before COLUMN (--inherit-fd TEXT:fd[N]:KEY ...) looks
            # padded by one space: the next line continuing it says which.
            padded = len(line) > COLUMN and line[COLUMN - 1] == " " and line[COLUMN] != " "
            continued = i + 1 < len(lines) and lines[i + 1].startswith(" " * COLUMN)
            if padded and not (continued and line[COLUMN - 2] != " "):
                entries.append((line[:COLUMN].strip(), [line[COLUMN:].strip()]))
            else:
                entries.append((line.strip(), []))
        else:
            raise HelpFormatError(f"not an entry of CLI11's lists: {line!r}")
    return [(left, " ".join(description)) for left, description in entries]


def parse_option(left, description):
    names, _, rest = left.partition(" ")
    if not names.startswith("-"):
        raise HelpFormatError(f"an option that does not start with '-': {left!r}")
    # CLI11 writes the type first, then " ...", " REQUIRED", then the relations (Needs:, Excludes:,
    # (Env:...)); a flag has no type, so its text, if any, starts with a relation.
    relation = re.search(r"(^| )(Needs:|Excludes:|\(Env:)", rest)
    kind, notes = (rest[:relation.start()], rest[relation.start():].strip()) if relation else (rest, "")
    words = kind.split()
    if words and not re.match(r"\[?[A-Z]", words[0]):  # CLI11's types: TEXT, INT:..., [TEXT,TEXT]
        raise HelpFormatError(f"{names}: '{words[0]}' is not where its help puts a type")
    return Option(names.split(","), " ".join(w for w in words if w not in ("REQUIRED", "...")), description,
                  required="REQUIRED" in words, repeatable="..." in words, notes=notes)


def parse_help(name, text):
    """A Command from one --help: description lines, then Usage:, then titled lists."""
    lines = text.rstrip("\n").split("\n")
    usage = next((i for i, line in enumerate(lines) if line.startswith("Usage:")), None)
    if usage is None:
        raise HelpFormatError(f"{name}: no Usage: line in its help")
    command = Command(name, [line for line in lines[:usage] if line.strip()])
    lists, title = {}, None
    for line in lines[usage + 1:]:
        if not line.strip():
            title = None
        elif not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            lists[title] = []
        elif title is None:
            raise HelpFormatError(f"{name}: a line outside any list: {line!r}")
        else:
            lists[title].append(line)
    if "Options" not in lists:
        raise HelpFormatError(f"{name}: no Options: list in its help")
    command.options = [parse_option(*entry) for entry in two_column_entries(lists.pop("Options"))]
    command.subcommands = two_column_entries(lists.pop("Subcommands", []))
    command.positionals = [(left.split()[0], text) for left, text in two_column_entries(lists.pop("Positionals", []))]
    if lists:
        raise HelpFormatError(f"{name}: lists this script does not know: {', '.join(lists)}")
    return command


def read_program(cli):
    """The program's Command and one per subcommand, in its help's order."""
    program = parse_help(PROGRAM, read_help(cli))
    if not program.subcommands:
        raise HelpFormatError("the help lists no subcommands")
    return program, [parse_help(name, read_help(cli, name)) for name, _ in program.subcommands]


# --- the man page ---

def roff(text):
    """Text for roff: backslashes, minus signs and a control character at a line's start escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def metavar(option):
    value = "|".join(option.choices) if option.choices else option.type
    # Unbreakable spaces: the whole of a .TP tag stays on its line (INT:INT in [0 - 4]).
    return f"\\fI{roff(value)}\\fR".replace(" ", "\\ ") + ("\\ ..." if option.repeatable else "")


def option_entry(option):
    names = ", ".join(f"\\fB{roff(n)}\\fR" for n in option.names)
    head = names + (" " + metavar(option) if option.type else "")
    body = roff(option.description)
    if option.required:
        body += " (required)"
    if option.notes:
        body += f" ({roff(option.notes)})"
    return [".TP", head, body]


def global_flags(program):
    return [o for o in program.options if not o.is_help]


def man_page(program, commands, version):
    exit_lines = [line for line in program.description if line.startswith(EXIT_CODE_PREFIX)]
    if len(exit_lines) != 1:
        raise HelpFormatError(f"the help has {len(exit_lines)} '{EXIT_CODE_PREFIX}' lines, not one")
    description = [line for line in program.description if line not in exit_lines]
    summary = description[0].split(";")[0].rstrip(".")
    bold_program = f"\\fB{roff(PROGRAM)}\\fR"
    out = [f'.\\" Generated from {PROGRAM} --help by doc/cli_docs.py: edit the program or the script.',
           f'.TH {roff(PROGRAM.upper())} 1 "" "{roff(PROGRAM)} {roff(version)}" "User Commands"',
           # Left-aligned, unhyphenated: an option or a path split across lines cannot be pasted.
           ".ad l", ".nh",
           ".SH NAME", f"{roff(PROGRAM)} \\- {roff(summary[0].lower() + summary[1:])}",
           ".SH SYNOPSIS"]
    flags = " ".join(f"[\\fB{roff(o.names[-1])}\\fR]" for o in global_flags(program))
    out += [f"{bold_program} {flags} \\fIcommand\\fR [\\fIoptions\\fR]"]
    for command in commands:
        required = " ".join(f"\\fB{roff(o.names[-1])}\\fR \\fI{roff(o.names[-1].lstrip('-').upper())}\\fR"
                            for o in command.options if o.required)
        optional = any(not o.required and not o.is_help for o in command.options)
        positionals = " ".join(f"\\fI{roff(name)}\\fR" for name, _ in command.positionals)
        out += [".br", " ".join(filter(None, [f"{bold_program} \\fB{command.name}\\fR", required,
                                              "[\\fIoptions\\fR]" if optional else "", positionals]))]
    out += [".SH DESCRIPTION", *(roff(line) for line in description)]
    out += [".SH OPTIONS"]
    for option in program.options:
        out += option_entry(option)
    out += [".SH COMMANDS", "Each command also takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR."]
    for command in commands:
        if not any(o.is_help for o in command.options):
            raise HelpFormatError(f"{command.name} has no --help, which the page says every command has")
        out += [f".SS {command.name}", *(roff(line) for line in command.description)]
        for name, text in command.positionals:
            out += [".TP", f"\\fI{roff(name)}\\fR", roff(text)]
        for option in command.options:
            if not option.is_help:
                out += option_entry(option)
    exit_status = exit_lines[0][len(EXIT_CODE_PREFIX):]
    out += [".SH EXIT STATUS", roff(exit_status[0].upper() + exit_status[1:])]
    # The key's places, as KeyStore::default_path looks for them (README, "The key").
    out += [".SH FILES",
            ".TP", "\\fI/var/lib/nucleus/checkpoint\\-hmac.key\\fR",
            "This machine's checkpoint key when run as root, unless \\fBNUCLEUS_CHECKPOINT_HMAC_KEY_FILE\\fR "
            "is set.",
            ".TP", "\\fI$XDG_DATA_HOME/nucleus/checkpoint\\-hmac.key\\fR",
            "The key otherwise (\\fI~/.local/share/nucleus/checkpoint\\-hmac.key\\fR without "
            "\\fBXDG_DATA_HOME\\fR). In either place the first dump, or \\fBkeygen\\fR, creates it: "
            "32 random bytes, mode 0600. The key and its folder must belong to the effective user, with no "
            "group or other permissions, and must not be symlinks. To restore on another machine, copy the "
            "key there (mode 0600).",
            ".TP", "\\fIcheckpoint\\-ed25519.key\\fR, \\fItrusted\\-keys/\\fR beside the key",
            "This machine's Ed25519 signing key (\\fBkeygen \\-\\-ed25519\\fR, \\fBdump \\-\\-sign ed25519\\fR; "
            "under the key's rules, and never copied), and the folder of public keys whose Ed25519 signatures "
            "verify here (\\fBtrust add\\fR; owned by root or the effective user, not writable by others, "
            "no symlinks).",
            ".TP", "\\fIDIR\\fR\\fI/checkpoint.hmac\\fR",
            "A checkpoint's signature, written by \\fBdump\\fR and \\fBsign\\fR, checked by \\fBverify\\fR "
            "and \\fBrestore\\fR.",
            ".TP", "\\fIDIR\\fR\\fI/metadata.json\\fR",
            "What \\fBdump\\fR recorded of the tree (container id, PID, command, time), signed with the rest."]
    # The variables the library reads (tests/cli_docs_test.py checks lib/ has no other).
    out += [".SH ENVIRONMENT",
            ".TP", "\\fBNUCLEUS_CHECKPOINT_HMAC_KEY_FILE\\fR",
            "The key file to use instead of the places under \\fBFILES\\fR.",
            ".TP", "\\fBNUCLEUS_CHECKPOINT_ED25519_KEY_FILE\\fR",
            "The Ed25519 signing key file to use instead of \\fIcheckpoint\\-ed25519.key\\fR beside the key.",
            ".TP", "\\fBNUCLEUS_CHECKPOINT_TRUSTED_KEYS\\fR",
            "The trust folder to use instead of \\fItrusted\\-keys/\\fR beside the key.",
            ".TP", "\\fBNUCLEUS_CHECKPOINT_SIGNERS\\fR",
            "\\fBed25519\\fR: accept Ed25519 signatures only, refusing every HMAC-signed checkpoint "
            "(a host that should trust public keys alone); \\fBany\\fR (the default): both.",
            ".TP", "\\fBNUCLEUS_CHECKPOINT_MAX_BYTES\\fR",
            "The most bytes of files a checkpoint may hold to be signed or verified, a decimal number "
            "(default 1 TiB).",
            ".TP", "\\fBNUCLEUS_CHECKPOINT_HMAC_ENGINE\\fR",
            "\\fBsodium\\fR hashes with libsodium rather than OpenSSL (the signatures are the same).",
            ".SH SEE ALSO", ".BR criu (8)"]
    return "\n".join(out) + "\n"


# --- the bash completion ---

def value_completion(option):
    """The shell code that completes option's value."""
    name = option.names[-1]
    if option.choices:
        return f"words='{' '.join(option.choices)}'"
    if name in DIRECTORY_OPTIONS:
        return "compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- \"$cur\"); return"
    if completes_files(name, option.type):
        return "compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- \"$cur\"); return"
    return "return"  # free text: nothing to offer


def bash_completion(program, commands):
    # One case per option name across the commands: a name must take the same kind of value in each.
    values = {}
    for command in commands:
        for option in command.options:
            if option.type:
                code = value_completion(option)
                if values.setdefault(option.names[-1], code) != code:
                    raise HelpFormatError(f"{option.names[-1]} takes a different value in {command.name}: "
                                          "complete it per command")
    by_code = {}
    for name, code in values.items():
        by_code.setdefault(code, []).append(name)
    flags = [n for o in global_flags(program) for n in o.names]
    top_words = " ".join(n for o in program.options for n in o.names)
    out = [f"# bash completion for {PROGRAM}, generated from its --help by doc/cli_docs.py.",
           f"_{PROGRAM.replace('-', '_')}() {{",
           '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]} command= words i',
           "    COMPREPLY=()",
           "    # The command is the first word that is not an option: the options before it take no value.",
           "    for ((i = 1; i < COMP_CWORD; i++)); do",
           '        [[ ${COMP_WORDS[i]} == -* ]] || { command=${COMP_WORDS[i]}; break; }',
           "    done",
           "    case $prev in  # an option's value: a folder, a file, one of its choices, or free text"]
    for code, names in by_code.items():
        out += [f"        {'|'.join(names)})", f"            {code} ;;"]
    out += ["        *)",
            "            case $command in",
            f"                '') [[ $cur == -* ]] && words='{top_words}' || "
            f"words='{' '.join(c.name for c in commands)}' ;;"]
    # The program's own flags (--json) are accepted after the command too: its subcommands fall through.
    for command in commands:
        words = " ".join([n for o in command.options for n in o.names] + flags)
        out += [f"                {command.name}) words='{words}' ;;"]
    out += ["                *) return ;;",
            "            esac ;;",
            "    esac",
            '    mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")',
            "}",
            f"complete -F _{PROGRAM.replace('-', '_')} {PROGRAM}"]
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) == 5 and argv[1] == "man":
        text = man_page(*read_program(argv[2]), argv[3])
    elif len(argv) == 4 and argv[1] == "bash-completion":
        text = bash_completion(*read_program(argv[2]))
    else:
        sys.exit(__doc__)
    with open(argv[-1], "w", encoding="utf-8") as out:
        out.write(text)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except HelpFormatError as e:
        sys.exit(f"cli_docs.py: {e}")
