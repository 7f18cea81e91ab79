#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Suite docs: every code block in README.md marked with
<!-- example: PATH --> must equal the file PATH (an example that the tests
build and run), so the README's programs cannot rot; every command line in a
block marked <!-- runs in: PATH --> (blank and # lines aside) must be a line
of the test script PATH, so the README shows what the test runs.
Usage: check_readme.py SOURCE_DIR"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
text = (root / "README.md").read_text()
marks = list(re.finditer(r"<!-- example: (\S+) -->\s*```[a-z+]*\n(.*?)```", text, re.S))
passed = failed = 0
if not marks:
    print("FAILED: README.md has no <!-- example: ... --> block")
    failed += 1
for m in marks:
    path, block = m.group(1), m.group(2)
    source = (root / path).read_text() if (root / path).is_file() else None
    if source is None:
        print(f"FAILED: README.md quotes {path}, which does not exist")
        failed += 1
    elif source.rstrip("\n") != block.rstrip("\n"):
        print(f"FAILED: README.md's copy of {path} differs from the file")
        failed += 1
    else:
        print(f"ok: README.md quotes {path} exactly")
        passed += 1
for m in re.finditer(r"<!-- runs in: (\S+) -->\s*```[a-z]*\n(.*?)```", text, re.S):
    path = m.group(1)
    script = (root / path).read_text().splitlines() if (root / path).is_file() else None
    for line in m.group(2).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if script is None:
            print(f"FAILED: README.md names {path}, which does not exist")
            failed += 1
        elif line.strip() in (s.strip() for s in script):
            print(f"ok: {path} runs README.md's line {line.split()[0]} ...")
            passed += 1
        else:
            print(f"FAILED: {path} does not run README.md's line: {line}")
            failed += 1
print(f"parallax-test-cases: {passed} passed, {failed} failed (docs)")
sys.exit(1 if failed else 0)
