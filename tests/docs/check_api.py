#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Suite docs: every public name a header declares is mentioned in the docs,
and every options struct's fields are listed in declaration order.

Usage:
  check_api.py SOURCE_DIR              check include/parallax against docs/ and README.md
  check_api.py --list SOURCE_DIR       print every public name found, with header and line
  check_api.py --self-test             run the extractor and both checks on small fake
                                       headers and docs, and fail if they miss a defect

Public names (a heuristic over tokens, conservative by construction):
  - in namespace parallax and its sub-namespaces, except `detail` and anonymous
    namespaces (and anything outside parallax);
  - at namespace scope: classes, structs, unions, enums (and their enumerators),
    aliases (`using X =`, typedef), concepts, functions and variables declared
    with an unqualified name (out-of-class definitions `A<T>::f(...)` repeat a
    declaration and are skipped; operators, friends, static_assert,
    using-declarations and namespace aliases are skipped);
  - inside a public class or struct: its public members (functions, data
    members, nested types and aliases); constructors and destructors are the
    class itself. A struct's members are public until a private:/protected:
    label, a class's are private until public:.
  - macros `#define PARALLAX_*` in headers outside a detail/ folder.
Function bodies, initialisers, lambdas and requires-expressions are skipped
as balanced braces. A name is "mentioned" when it appears as a whole word
(letters, digits, _) in some docs/*.md or README.md; a member counts by its
bare name.

Options structs are the public structs named *_options or *_limits. A field
table for one is a Markdown table whose header row names the struct, or
whose nearest non-blank line above names it in backticks; its rows whose
first cell is a backticked identifier are fields. Every field table must
list fields of the struct in declaration order (designated initialisers
follow it), and at least one must list all of them.
"""
import pathlib
import re
import sys

KEYWORDS_NOT_NAMES = {
    "if", "for", "while", "switch", "return", "sizeof", "alignof", "alignas", "decltype", "noexcept",
    "static_assert", "requires", "operator", "throw", "new", "delete", "explicit", "template", "typename",
}
TOKEN = re.compile(r"""
    (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>[0-9][0-9A-Za-z_.']*)
  | (?P<op>::|->|<<=|>>=|<<|>>|<=|>=|==|!=|&&|\|\||\.\.\.|[{}()\[\]<>;:,=~&*+\-/%!^|?.#@])
""", re.X)


def strip_source(text):
    """Comments and preprocessor lines replaced by blanks (newlines kept, so
    lines stay right); returns the text and the PARALLAX_ macros defined."""
    macros = []
    out = []
    i, n = 0, len(text)
    line_start = True
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"' or (c == "'" and not (i and text[i - 1].isalnum())):
            m = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'').match(text, i)
            if m is None:
                out.append(c)
                i += 1
            else:
                out.append('""' + " " * (m.end() - i - 2))
                i = m.end()
        elif c == "#" and line_start:
            j = i
            while True:  # a directive with its continuation lines
                k = text.find("\n", j)
                k = n if k < 0 else k
                if k > j and text[k - 1] == "\\":
                    j = k + 1
                    continue
                break
            directive = text[i:k]
            m = re.match(r"#\s*define\s+(PARALLAX_[A-Za-z0-9_]*)", directive)
            if m:
                macros.append((m.group(1), text.count("\n", 0, i) + 1))
            out.append(re.sub(r"[^\n]", " ", directive))
            i = k
        else:
            out.append(c)
            if c == "\n":
                line_start = True
            elif not c.isspace():
                line_start = False
            i += 1
    return "".join(out), macros


def tokenize(text):
    toks = []
    line = 1
    pos = 0
    for m in TOKEN.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        kind = m.lastgroup
        toks.append((kind, m.group(), line))
    return toks


def skip_balanced(toks, i, open_, close):
    """toks[i] is `open_`; returns the index after its match."""
    depth = 0
    while i < len(toks):
        t = toks[i][1]
        if t == open_:
            depth += 1
        elif t == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def skip_angles(stmt, i):
    """stmt[i] is `<` of a template argument list; returns the index after its `>`."""
    depth = 0
    while i < len(stmt):
        t = stmt[i][1]
        if t in "([":
            i = skip_balanced(stmt, i, t, ")" if t == "(" else "]")
            continue
        if t == "<":
            depth += 1
        elif t == ">":
            depth -= 1
        elif t == ">>":
            depth -= 2
        i += 1
        if depth <= 0:
            return i
    return i


def strip_heads(stmt):
    """Drops leading template heads, attributes and requires-clauses."""
    i = 0
    while i < len(stmt):
        t = stmt[i][1]
        if t == "template" and i + 1 < len(stmt) and stmt[i + 1][1] == "<":
            i = skip_angles(stmt, i + 1)
        elif t == "[" and i + 1 < len(stmt) and stmt[i + 1][1] == "[":
            i = skip_balanced(stmt, i, "[", "]")
        elif t == "requires":
            i += 1
            while i < len(stmt):
                if stmt[i][1] == "requires":  # a requires-expression: requires (params) { ... }
                    i += 1
                    if i < len(stmt) and stmt[i][1] == "(":
                        i = skip_balanced(stmt, i, "(", ")")
                    if i < len(stmt) and stmt[i][1] == "{":
                        i = skip_balanced(stmt, i, "{", "}")
                elif stmt[i][1] == "(":
                    i = skip_balanced(stmt, i, "(", ")")
                else:
                    while i < len(stmt) and (stmt[i][0] == "id" or stmt[i][1] in ("::", "!")):
                        i += 1
                    if i < len(stmt) and stmt[i][1] == "<":
                        i = skip_angles(stmt, i)
                if i < len(stmt) and stmt[i][1] in ("&&", "||"):
                    i += 1
                    continue
                break
        else:
            break
    return stmt[i:]


def top_level_index(stmt, wanted):
    """Index of the first token in `wanted` outside (), [], {} and template <>."""
    i = 0
    while i < len(stmt):
        kind, t, _ = stmt[i]
        if t in wanted:
            return i
        if t == "(":
            i = skip_balanced(stmt, i, "(", ")")
        elif t == "[":
            i = skip_balanced(stmt, i, "[", "]")
        elif t == "{":
            i = skip_balanced(stmt, i, "{", "}")
        elif t == "<" and i > 0 and stmt[i - 1][0] == "id" and stmt[i - 1][1] != "operator":
            i = skip_angles(stmt, i)
        else:
            i += 1
    return -1


def declared_name(stmt):
    """(name, line) a declaration statement introduces, or None."""
    stmt = strip_heads(stmt)
    if not stmt:
        return None
    words = [t for _, t, _ in stmt]
    first = words[0]
    if first in ("friend", "static_assert", "namespace", "public", "private", "protected"):
        return None
    if "operator" in words:
        return None
    if first == "using":
        if len(words) >= 3 and stmt[1][0] == "id" and words[2] == "=" and words[1] != "namespace":
            return words[1], stmt[1][2]
        return None  # using-declaration or using-directive
    if first == "concept" and len(words) > 1:
        return words[1], stmt[1][2]
    if first in ("class", "struct", "union", "enum"):
        j = 1
        if j < len(words) and words[j] in ("class", "struct"):
            j += 1
        if j < len(words) and stmt[j][0] == "id" and (j + 1 == len(words) or words[j + 1] in (";", ":", "{", "<")):
            return words[j], stmt[j][2]
    if first == "typedef":
        ids = [s for s in stmt if s[0] == "id"]
        return (ids[-1][1], ids[-1][2]) if ids else None
    # A function or a variable: the identifier before the first top-level
    # `(` (function), else before a top-level `=`, `{`, `[` or the end.
    k = top_level_index(stmt, {"(", "=", "{", ";", ":"})
    if k < 0:
        k = len(stmt)
    if k == 0 or stmt[k - 1][0] != "id":
        return None
    name, line = stmt[k - 1][1], stmt[k - 1][2]
    if name in KEYWORDS_NOT_NAMES:
        return None
    if k >= 2 and words[k - 2] in ("::", "~"):
        return None  # A<T>::f(...): a definition of something declared already
    if k < len(words) and words[k] == ":" and not (k == 1 or first in ("unsigned", "int")):
        return None
    return name, line


def class_head(stmt):
    """For the statement before a `{`: ('class'|'struct'|'union'|'enum', name) or None."""
    stmt = strip_heads(stmt)
    words = [t for _, t, _ in stmt]
    if not words:
        return None
    if words[0] == "enum":
        j = 2 if len(words) > 1 and words[1] in ("class", "struct") else 1
        return ("enum", words[j] if j < len(words) and stmt[j][0] == "id" else None)
    if words[0] in ("class", "struct", "union"):
        # `struct X final : Base`, `struct X<int>` (a specialisation)
        if len(words) > 1 and stmt[1][0] == "id":
            if top_level_index(stmt, {"(", "="}) < 0:
                return (words[0], words[1])
    return None


class Scope:
    def __init__(self, kind, name, public, access="public"):
        self.kind, self.name, self.public, self.access = kind, name, public, access


def extract(path, text):
    """[(name, line, qualified_owner, kind)] of public names in one header."""
    clean, macros = strip_source(text)
    toks = tokenize(clean)
    found = []
    in_detail_dir = "detail" in pathlib.PurePath(path).parts
    for name, line in macros:
        if not in_detail_dir:
            found.append((name, line, "", "macro"))
    stack = [Scope("file", "", False)]  # the global namespace is not parallax's
    stmt = []

    def owner():
        return "::".join(s.name for s in stack if s.name)

    def emit(decl, kind):
        scope = stack[-1]
        if decl and scope.public and scope.access == "public":
            if scope.kind in ("class", "struct", "union") and decl[0] == scope.name:
                return  # a constructor
            found.append((decl[0], decl[1], owner(), kind))

    i = 0
    while i < len(toks):
        kind, t, line = toks[i]
        scope = stack[-1]
        if t in ("public", "private", "protected") and not stmt and i + 1 < len(toks) and toks[i + 1][1] == ":":
            scope.access = t
            i += 2
            continue
        if t == ";":
            if scope.kind == "enum":
                stmt = []
            else:
                emit(declared_name(stmt), "declaration")
                stmt = []
            i += 1
            continue
        if t == "}":
            if scope.kind == "enum":
                for entry in split_commas(stmt):
                    if entry and entry[0][0] == "id" and scope.public:
                        found.append((entry[0][1], entry[0][2], owner(), "enumerator"))
            elif stmt:
                emit(declared_name(stmt), "declaration")
            stmt = []
            stack.pop()
            if len(stack) == 0:
                stack.append(Scope("file", "", False))
            i += 1
            continue
        if t == "{":
            words = [w for _, w, _ in stmt]
            if words[:1] == ["namespace"]:
                names = [w for w in words[1:] if w != "::" and w != "inline"]
                public = stack[-1].public or (names[:1] == ["parallax"] and stack[-1].kind == "file")
                if not names or "detail" in names:
                    public = False
                if stack[-1].kind == "file" and names[:1] != ["parallax"]:
                    public = False
                stack.append(Scope("namespace", "::".join(names), public))
                stmt = []
                i += 1
                continue
            if words[:1] == ["extern"]:
                stack.append(Scope("linkage", "", stack[-1].public))
                stmt = []
                i += 1
                continue
            if scope.kind in ("namespace", "class", "struct", "union", "file", "linkage"):
                head = class_head(stmt)
                if head:
                    kind_, name = head
                    visible = scope.public and scope.access == "public" and name is not None
                    if name is not None:
                        emit((name, line_of(stmt, name)), kind_)
                    stack.append(Scope(kind_, name or "", visible, "private" if kind_ == "class" else "public"))
                    stmt = []
                    i += 1
                    continue
            # A body, an initialiser, a lambda or a requires-expression.
            end = skip_balanced(toks, i, "{", "}")
            open_parens = sum(1 for _, w, _ in stmt if w in "([") - sum(1 for _, w, _ in stmt if w in ")]")
            is_requires = open_parens > 0 or len(stmt) >= 1 and (stmt[-1][1] == "requires" or
                                              (stmt[-1][1] == ")" and requires_before_group(stmt)))
            has_eq = top_level_index(strip_heads(stmt), {"="}) >= 0
            has_call = top_level_index(strip_heads(stmt), {"("}) >= 0
            if is_requires or has_eq or not has_call:
                stmt = stmt + [("op", "{", line), ("op", "}", line)]
                i = end
                continue
            emit(declared_name(stmt), "function")
            stmt = []
            i = end
            continue
        stmt.append(toks[i])
        i += 1
    return found


def line_of(stmt, name):
    for _, t, line in stmt:
        if t == name:
            return line
    return stmt[0][2]


def requires_before_group(stmt):
    """stmt ends with `)`: is its group `requires (...)`?"""
    depth = 0
    for j in range(len(stmt) - 1, -1, -1):
        t = stmt[j][1]
        if t == ")":
            depth += 1
        elif t == "(":
            depth -= 1
            if depth == 0:
                return j > 0 and stmt[j - 1][1] == "requires"
    return False


def split_commas(stmt):
    out, cur, depth = [], [], 0
    for tok in stmt:
        if tok[1] in "([{":
            depth += 1
        elif tok[1] in ")]}":
            depth -= 1
        if tok[1] == "," and depth == 0:
            out.append(cur)
            cur = []
        else:
            cur.append(tok)
    out.append(cur)
    return out


def options_fields(path, text):
    """{struct: [fields in declaration order]} for *_options / *_limits structs."""
    out = {}
    for name, line, owner, kind in extract(path, text):
        if kind == "declaration":
            parts = owner.split("::")
            if parts and re.search(r"_(options|limits)$", parts[-1]):
                out.setdefault(parts[-1], [])
                if name not in out[parts[-1]]:
                    out[parts[-1]].append(name)
    return out


def field_tables(doc_text, struct):
    """Lists of backticked first-column names of each field table for struct."""
    lines = doc_text.splitlines()
    tables = []
    mention = re.compile(r"`(?:[A-Za-z_:]*::)?" + re.escape(struct) + r"(?:\{[^`]*\})?`")
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and (i == 0 or not lines[i - 1].lstrip().startswith("|")):
            start = i
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                i += 1
            rows = lines[start:i]
            above = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            if mention.search(rows[0]) or mention.search(above):
                fields = []
                for row in rows[2:]:
                    cells = row.strip().strip("|").split("|")
                    m = re.fullmatch(r"\s*`([A-Za-z_][A-Za-z0-9_]*)`\s*", cells[0])
                    if m:
                        fields.append(m.group(1))
                tables.append((start + 1, fields))
        else:
            i += 1
    return tables


def check(headers, docs):
    """Prints the verdict per check; returns the number of failures."""
    corpus = "\n".join(text for _, text in docs)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", corpus))
    failed = passed = 0
    seen = set()
    for path, text in headers:
        for name, line, owner, kind in extract(path, text):
            if name in seen:
                continue
            seen.add(name)
            if name in words:
                passed += 1
            else:
                failed += 1
                where = f"{owner}::{name}" if owner else name
                print(f"FAILED: {path}:{line}: {where} ({kind}) is mentioned in no doc")
    for path, text in headers:
        for struct, fields in options_fields(path, text).items():
            tables = [(doc, line, f) for doc, dtext in docs for line, f in field_tables(dtext, struct)]
            complete = False
            for doc, line, listed in tables:
                unknown = [f for f in listed if f not in fields]
                order = [f for f in fields if f in listed]
                if unknown:
                    failed += 1
                    print(f"FAILED: {doc}:{line}: the table of {struct} lists {', '.join(unknown)}, "
                          f"which {path} does not declare")
                elif listed != order:
                    failed += 1
                    print(f"FAILED: {doc}:{line}: the table of {struct} lists {', '.join(listed)}; "
                          f"the declaration order ({path}) is {', '.join(order)}")
                elif listed == fields:
                    complete = True
            if complete:
                passed += 1
                print(f"ok: {struct}: its fields are listed in declaration order")
            else:
                failed += 1
                print(f"FAILED: {path}: no doc has a table of all the fields of {struct} "
                      f"({', '.join(fields)})")
    return passed, failed


def read_tree(root):
    headers = [(str(p.relative_to(root)), p.read_text()) for p in sorted((root / "include" / "parallax").rglob("*.hpp"))]
    docs = [(str(p.relative_to(root)), p.read_text()) for p in sorted((root / "docs").glob("*.md"))]
    docs.append(("README.md", (root / "README.md").read_text()))
    return headers, docs


FAKE_HEADER = """#pragma once
// A comment naming hidden_in_comment()
#define PARALLAX_FAKE_MACRO 1
namespace parallax {
namespace detail { struct not_public {}; inline int helper() { return 1; } }
namespace { int anonymous_one = 0; }
struct fake_options {
  int alpha = 1;
  std::function<void(int)> beta{};
  double gamma = std::size_t{16} << 20;
};
template <class M>
  requires requires(M& m) { m.f(); }
class Documented {
 public:
  explicit Documented(int x, fake_options o = {}, int z = 2);
  int visible_member() const { return 1; }
  template <class D> requires Thing<D> void undocumented_member(const D&);
 private:
  int hidden_member();
};
enum class fake_kind { first_value, second_value = 3 };
template <class T> concept FakeConcept = requires(T t) { t.f(); };
template <class M> Documented<M>::Documented(int x) : y_(x) {}
inline void undocumented_free(int a = 1) {}
using fake_alias = int;
}  // namespace parallax
namespace other { struct not_parallax {}; }
"""
FAKE_EXPECTED = {"PARALLAX_FAKE_MACRO", "fake_options", "alpha", "beta", "gamma", "Documented", "visible_member",
                 "undocumented_member", "fake_kind", "first_value", "second_value", "FakeConcept",
                 "undocumented_free", "fake_alias"}
FAKE_DOC = """`fake_options`:

| field | |
| --- | --- |
| `alpha` | a |
| `gamma` | g |
| `beta` | b |

PARALLAX_FAKE_MACRO Documented visible_member fake_kind first_value second_value FakeConcept fake_alias
"""


def self_test():
    """The extractor finds exactly the public names of a fake header, and
    both checks fail on a fake doc that omits two names and misorders a table."""
    results = []

    def expect(holds, ok, failed):
        results.append(holds)
        print(f"ok: self-test: {ok}" if holds else f"FAILED: self-test: {failed}")

    names = {n for n, *_ in extract("fake.hpp", FAKE_HEADER)}
    expect(names == FAKE_EXPECTED, "the extractor finds exactly the fake header's public names",
           f"extracted {sorted(names)}; expected {sorted(FAKE_EXPECTED)}")
    headers = [("fake.hpp", FAKE_HEADER)]
    # undocumented_member, undocumented_free, the misordered table, no complete table
    _, failed = check(headers, [("fake.md", FAKE_DOC)])
    expect(failed == 4, "the check fails on two undocumented names and on a misordered table",
           f"the fake doc gave {failed} failures; expected 4")
    fixed = FAKE_DOC.replace("| `gamma` | g |\n| `beta` | b |", "| `beta` | b |\n| `gamma` | g |")
    fixed += "undocumented_member undocumented_free\n"
    _, failed = check(headers, [("fake.md", fixed)])
    expect(failed == 0, "the check passes once the fake doc is complete",
           f"the fixed fake doc gave {failed} failures; expected 0")
    return results.count(False)


def main(argv):
    if argv[1:2] == ["--self-test"]:
        failures = self_test()
        print(f"parallax-test-cases: {3 - failures} passed, {failures} failed (docs)")
        return 1 if failures else 0
    if argv[1:2] == ["--list"]:
        root = pathlib.Path(argv[2])
        headers, _ = read_tree(root)
        for path, text in headers:
            for name, line, owner, kind in extract(path, text):
                print(f"{path}:{line}: {owner}::{name} ({kind})")
        return 0
    root = pathlib.Path(argv[1])
    headers, docs = read_tree(root)
    passed, failed = check(headers, docs)
    print(f"parallax-test-cases: {passed} passed, {failed} failed (docs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
