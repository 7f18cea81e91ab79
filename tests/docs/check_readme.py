#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Suite docs: every code block in README.md marked with
<!-- example: PATH --> must equal the file PATH (an example that the tests
build and run), so the README's programs cannot rot.
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
print(f"parallax-test-cases: {passed} passed, {failed} failed (docs)")
sys.exit(1 if failed else 0)
