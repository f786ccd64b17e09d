#!/usr/bin/env python3
"""Counts test cases in meson test logs (testlog.json, or the same format from scripts/lib-extra-log.sh):
Catch2's test cases, the C tests' and other "NAME: N checks, M failed" lines, and any other test as
one. Sums every log given, a missing one counting as one failure. Prints the closing line
"N passed, N failed"; exits 1 if anything failed."""
import json
import re
import sys


def log_lines(paths):
    """Every line of every log; a missing log reads as one failed test."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as log:
                yield from log
        except FileNotFoundError:
            print(f"count-tests: {path} is missing: that part did not run", file=sys.stderr)
            yield json.dumps({"name": path, "result": "FAIL"})


passed = failed = 0
for line in log_lines(sys.argv[1:]):
    test = json.loads(line)
    out = test.get("stdout", "") or ""
    ok = test.get("result") == "OK"
    catch_all = re.search(r"All tests passed \(\d+ assertions? in (\d+) test cases?\)", out)
    catch_some = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed", out)
    c_checks = re.search(r"^\w+: (\d+) checks, (\d+) failed$", out, re.M)
    if catch_all:
        n = int(catch_all.group(1))
        passed, failed = (passed + n, failed) if ok else (passed, failed + n)
    elif catch_some:
        passed += int(catch_some.group(2))
        failed += int(catch_some.group(3)) or (0 if ok else 1)
    elif c_checks:
        total, bad = int(c_checks.group(1)), int(c_checks.group(2))
        passed += total - bad
        failed += bad or (0 if ok else 1)
    elif ok:
        passed += 1
    else:
        failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
