#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Sums test cases over every meson test in a testlog.json.

Each parallax test binary prints 'parallax-test-cases: P passed, F failed'.
A test that printed no such line counts as one case. A test meson did not
see succeed (fail, timeout, crash) counts at least one failed case even if
its line says otherwise. Skipped tests count as neither, and are listed.
Prints one final line 'N passed, M failed'; exits 1 when M > 0 or nothing ran.
"""
import json
import re
import sys

LINE = re.compile(r"^parallax-test-cases: (\d+) passed, (\d+) failed", re.M)

def main(path):
    passed = failed = 0
    skipped = []
    with open(path) as log:
        for raw in log:
            test = json.loads(raw)
            result = test["result"]
            if result == "SKIP":
                skipped.append(test["name"])
                continue
            found = LINE.findall(test.get("stdout") or "")
            p, f = (int(found[-1][0]), int(found[-1][1])) if found else (1 if result == "OK" else 0, 0)
            if result != "OK" and f == 0:
                f, p = 1, max(p - 1, 0) if found else 0
                print(f"counted as failed: {test['name']} ({result})")
            passed += p
            failed += f
    for name in skipped:
        print(f"skipped (not counted): {name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/meson-logs/testlog.json"))
