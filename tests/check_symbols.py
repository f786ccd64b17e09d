#!/usr/bin/env python3
"""The library exports exactly the checked-in symbol list, and nothing of std::, fmt:: or
rapidjson:: (the harfbuzz check-symbols test). Usage: check_symbols.py LIBRARY SYMBOLS_FILE"""
import subprocess
import sys

library, listing = sys.argv[1], sys.argv[2]
nm = subprocess.run(["nm", "-D", "--defined-only", library], check=True, capture_output=True, text=True).stdout
exported = sorted({line.split()[2].split("@")[0] for line in nm.splitlines()
                   if len(line.split()) == 3 and line.split()[1] != "A"})
demangled = subprocess.run(["c++filt"], input="\n".join(exported), check=True, capture_output=True, text=True).stdout
leaks = [d for d in demangled.splitlines() if not (d.startswith("nc_") or "nucleus::checkpoint::" in d)]
with open(listing, encoding="utf-8") as f:
    expected = sorted(line.strip() for line in f if line.strip() and not line.startswith("#"))

ok = True
if leaks:
    ok = False
    print("symbols that are not the library's ABI leave the .so:\n  " + "\n  ".join(leaks))
if exported != expected:
    ok = False
    print("the exported symbols differ from " + listing + ":")
    for s in sorted(set(expected) - set(exported)):
        print("  removed: " + s + "  (a removal breaks the ABI: raise the soname)")
    for s in sorted(set(exported) - set(expected)):
        print("  added:   " + s)
    print("if the change is intended, run scripts/update-abi.sh and commit the result")
print(f"{len(exported)} symbols exported" + ("" if ok else "; check failed"))
sys.exit(0 if ok else 1)
