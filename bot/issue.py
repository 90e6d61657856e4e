"""Turning a GitHub issue into a task: tests, target module and task text (pure, no I/O).

The issue format a maintainer writes:

- prose describing the change (it becomes the task text);
- pytest tests in fenced ```python / ```py blocks, committed with the code as
  `tests/test_<target>.py` (then `_2`, …) unless the fence names the file
  (```python title="tests/test_roman.py"``` or a first line `# tests/test_roman.py`); a block
  named `conftest.py` is kept as test support;
- and/or a line `Tests: tests/test_a.py, tests/test_b.py` (also `Test file:`) naming test
  files already on the default branch;
- optionally a line `Target: roman.py` naming the module to write; without it, the target is
  inferred from what the tests import.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from bot.agent.context import Task
from bot.agent.targets import target_candidates
from bot.errors import IssueError, NoTarget, NoTests
from bot.paths import relative_path

INLINE_TEST_NAME = "test_issue.py"
GUIDANCE_HEADING = "## Guidance from a maintainer (/retry)"

_PYTHON_INFOS = frozenset({"python", "py", "python3", "py3", "pytest"})
_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_INFO_NAME = re.compile(
    r"""\b(?:title|file|filename|name|path)\s*=\s*(?:"([^"]*)"|'([^']*)'|(\S+))""", re.I
)
_COMMENT_NAME = re.compile(r"^#\s*(?:(?:file|filename|path)\s*:\s*)?(?P<path>\S+\.py)\s*$", re.I)
# Optional list bullet and bold/italic around the key, as maintainers format these lines.
_DIRECTIVE = re.compile(
    r"^\s*(?:[-*+]\s+)?[*_]{0,2}(?P<key>tests?|test[ _-]?files?|target)[*_]{0,2}\s*:"
    r"[*_]{0,2}\s*(?P<value>.*?)\s*$",
    re.I,
)
_INLINE_COMMENT = re.compile(r"<!--.*?-->", re.S)


@dataclass(frozen=True)
class IssueSpec:
    """What an issue asks for, as written; `build_task` checks it against the repository."""

    title: str
    text: str
    inline_tests: dict[str, str] = field(default_factory=dict)
    test_paths: tuple[str, ...] = ()
    target: str | None = None
    # Inline tests the issue did not name: they go to tests/test_<target>.py once the
    # target is known.
    unnamed_tests: tuple[str, ...] = ()

    @property
    def has_tests(self) -> bool:
        """Whether the issue gives any tests at all (inline or named)."""
        return bool(self.inline_tests or self.test_paths)


@dataclass
class _Block:
    kind: Literal["prose", "fence", "comment"]
    raw: list[str]
    info: str = ""
    content: str = ""


def _split_blocks(lines: list[str]) -> list[_Block]:
    """Prose lines, fenced code blocks and HTML comment blocks, in order (CommonMark-ish)."""
    blocks: list[_Block] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        m = _FENCE_OPEN.match(line)
        if m and not (m["fence"][0] == "`" and "`" in m["info"]):
            fence = m["fence"]
            close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
            j = i + 1
            while j < n and not close.match(lines[j]):
                j += 1
            # Content lines lose the fence's own indentation (fences inside list items).
            width = len(m["indent"].expandtabs(4))
            body = [_strip_indent(text, width) for text in lines[i + 1 : j]]
            content = textwrap.dedent("\n".join(body))
            # An unclosed fence runs to the end of the body, as GitHub renders it.
            blocks.append(_Block("fence", lines[i : j + 1], m["info"].strip(), content))
            i = j + 1
            continue
        start = line.find("<!--")
        if line.lstrip().startswith("<!--") and "-->" not in line[start + 4 :]:
            # An issue template's multi-line instructions: invisible on GitHub, noise to
            # the model, and its examples must not count as tests or directives.
            j = i + 1
            while j < n and "-->" not in lines[j]:
                j += 1
            blocks.append(_Block("comment", lines[i : j + 1]))
            i = j + 1
            continue
        text = _INLINE_COMMENT.sub("", line)
        if blocks and blocks[-1].kind == "prose":
            blocks[-1].raw.append(text)
        else:
            blocks.append(_Block("prose", [text]))
        i += 1
    return blocks


def _strip_indent(line: str, width: int) -> str:
    expanded = line.expandtabs(4)
    stripped = len(expanded) - len(expanded.lstrip(" "))
    return expanded[min(width, stripped) :]


def _is_test_module(source: str) -> bool:
    """True when `source` parses and defines pytest tests at top level (pytest's prefixes)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            return True
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            return True
    return False


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def _clean_path(value: str) -> str:
    """`\\`./tests\\\\test_x.py\\`` -> `tests/test_x.py`; validity is checked in build_task."""
    value = value.strip().strip("`'\"").rstrip(".,;:").strip("`'\"")
    value = value.replace("\\", "/")
    while value.startswith("./"):
        value = value[2:]
    return str(PurePosixPath(value)) if value else value


def _block_name(info: str, content: str) -> str | None:
    m = _INFO_NAME.search(info)
    if m:
        return _clean_path(next(g for g in m.groups() if g is not None))
    for token in info.split()[1:]:
        if token.endswith(".py"):
            return _clean_path(token)
    first = content.lstrip("\n").split("\n", 1)[0].strip()
    m = _COMMENT_NAME.match(first)
    return _clean_path(m["path"]) if m else None


def _language(info: str) -> str:
    first = info.split()[0] if info.split() else ""
    return first.lstrip("{.").rstrip("}").lower()


def _directive(line: str) -> tuple[str, list[str]] | None:
    """`("tests", [paths])` or `("target", [path])` when `line` is a directive, else None.

    A line counts only when every value looks like a .py path, so prose such as
    "Tests: should cover negative numbers" stays in the text.
    """
    m = _DIRECTIVE.match(line)
    if not m:
        return None
    items = [t for t in re.split(r"[,\s]+", m["value"]) if t and t.lower() != "and"]
    paths = [_clean_path(t) for t in items]
    if not paths or not all(p.endswith(".py") for p in paths):
        return None
    key = "target" if m["key"].lower() == "target" else "tests"
    if key == "target" and len(paths) != 1:
        return None
    return key, paths


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    stem, suffix = name[: -len(".py")], ".py"
    k = 2
    while f"{stem}_{k}{suffix}" in taken:
        k += 1
    return f"{stem}_{k}{suffix}"


def _name_blocks(named: list[str | None], test_paths: list[str]) -> list[str]:
    """File names for the test blocks, in order: given names first, then test_issue*.py.

    A repeated given name gets a suffix; a default name avoids every given name and every
    `Tests:` path, so it never replaces a named repository file.
    """
    names: list[str | None] = []
    taken: set[str] = set()
    for name in named:
        if name is not None:
            name = _unique_name(name, taken)
            taken.add(name)
        names.append(name)
    taken |= set(test_paths)
    result: list[str] = []
    for name in names:
        if name is None:
            name = _unique_name(INLINE_TEST_NAME, taken)
            taken.add(name)
        result.append(name)
    return result


def parse_issue(title: str, body: str | None) -> IssueSpec:
    """Read tests, test paths, target and task text out of an issue's title and body."""
    title = (title or "").strip()
    text = (body or "").replace("\r\n", "\n").replace("\r", "\n")
    test_paths: list[str] = []
    target: str | None = None
    out: list[str] = []
    # (index of the block's pointer line in `out`, given name, code)
    blocks: list[tuple[int, str | None, str]] = []
    for block in _split_blocks(text.split("\n")):
        if block.kind == "comment":
            continue
        if block.kind == "prose":
            for line in block.raw:
                found = _directive(line)
                if found is None:
                    out.append(line)
                elif found[0] == "target":
                    # The first Target line wins; a later one is most likely a quote.
                    target = target or found[1][0]
                else:
                    test_paths.extend(p for p in found[1] if p not in test_paths)
            continue
        name = _block_name(block.info, block.content)
        is_support = name is not None and PurePosixPath(name).name == "conftest.py"
        python = _language(block.info) in _PYTHON_INFOS
        if python and (_is_test_module(block.content) or (is_support and _parses(block.content))):
            blocks.append((len(out), name, block.content.strip("\n") + "\n"))
            out.append("")
            continue
        out.extend(block.raw)
    given = [name for _, name, _ in blocks]
    names = _name_blocks(given, test_paths)
    inline: dict[str, str] = {}
    for (index, _, code), name in zip(blocks, names, strict=True):
        inline[name] = code
        # The tests reach the model in full after the text; a pointer keeps the prose
        # readable without sending the same code twice.
        out[index] = f"(Tests: `{name}`, shown below.)"
    prose = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()
    task_text = f"{title}\n\n{prose}".strip() if prose else title
    return IssueSpec(
        title=title,
        text=task_text,
        inline_tests=inline,
        test_paths=tuple(test_paths),
        target=target,
        unnamed_tests=tuple(n for n, g in zip(names, given, strict=True) if g is None),
    )


def _is_test_file(path: str) -> bool:
    """Whether pytest's default patterns collect `path` (what the sandbox runs)."""
    name = PurePosixPath(path).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _checked(path: str, what: str) -> str:
    try:
        return relative_path(path)
    except ValueError as exc:
        raise IssueError(
            f"{what} `{path}` is not a relative path inside the repository; "
            "write it like `tests/test_roman.py`."
        ) from exc


def _module_files(repo_files: dict[str, str]) -> dict[str, str]:
    """Module path as `infer_target` spells it (`pkg/mod.py`) -> the repo file providing it.

    Covers packages (`pkg/mod/__init__.py`) and the src layout (`src/pkg/mod.py`).
    """
    provided: dict[str, str] = {}
    for path in sorted(repo_files, key=lambda p: p.startswith("src/")):
        if not path.endswith(".py"):
            continue
        module = path.removeprefix("src/")
        if module.endswith("/__init__.py"):
            module = module[: -len("/__init__.py")] + ".py"
        provided.setdefault(module, path)
    return provided


def _infer(
    tests: dict[str, str], repo_files: dict[str, str], installed: frozenset[str]
) -> str | None:
    """The module to write, preferring one the repository does not have yet.

    A module the tests import that does not exist is what the issue asks for; several such
    modules are a question for the maintainer (NoTarget), not a guess. When every imported
    module exists, the issue asks to change one: the most imported one, at the path that
    provides it (so a package's `__init__.py`, not a new `pkg.py` that Python would never
    import next to the package).
    """
    provided = _module_files(repo_files)
    new = target_candidates(tests, frozenset(provided), installed)
    if len(new) > 1:
        raise NoTarget(
            "The tests import several modules that do not exist yet ("
            + ", ".join(f"`{p}`" for p in new[:5])
            + "): add a line `Target: module.py` naming the one to write."
        )
    if new:
        top = provided.get(new[0].split("/")[0] + ".py")
        if "/" in new[0] and top is not None and top.startswith("src/"):
            return "src/" + new[0]  # a new submodule goes beside its package's siblings
        return new[0]
    changed = target_candidates(tests, frozenset(), installed)
    return provided.get(changed[0], changed[0]) if changed else None


def _hopeless(path: str, source: str) -> str | None:
    """Why a test file can never decide a run (caught before any model call), or None."""
    if not source.strip():
        return f"`{path}` is empty: it has no tests to pass."
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return f"`{path}` line {exc.lineno}: {exc.msg}. The tests must be valid Python."
    if not any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
        for node in ast.walk(tree)
    ):
        return (
            f"`{path}` defines no test: pytest collects functions named `test_*` "
            "(at module level or in a `Test*` class)."
        )
    return None


def build_task(
    spec: IssueSpec,
    repo_files: dict[str, str],
    *,
    guidance: str | None = None,
    installed: frozenset[str] = frozenset(),
) -> Task:
    """The task for the loop; `repo_files` is the repository at its default branch.

    Tests are the inline blocks plus the named files (an inline block wins over a repo file
    of the same path). Context is the rest of the repository minus other test files: the
    sandbox runs every test file in the workspace, and only the issue's tests may decide.
    An existing target stays in the context; seed the loop's `initial_files` with it so the
    model can edit it in place. Raises IssueError with what to fix in the issue.
    """
    inline = {_checked(p, "Test file"): src for p, src in spec.inline_tests.items()}
    named = [_checked(p, "Test file") for p in spec.test_paths]
    if not spec.has_tests:
        raise NoTests(
            "The issue has no tests: add pytest tests in a ```python block, or a line "
            "`Tests: tests/test_x.py` naming test files in the repository."
        )
    missing = [p for p in named if p not in inline and p not in repo_files]
    if missing:
        raise IssueError(
            "The issue names test files that are not on the default branch: "
            + ", ".join(f"`{p}`" for p in missing)
            + ". Fix the `Tests:` line, push the tests first, or paste them into a "
            "```python block."
        )
    tests = {p: repo_files[p] for p in named if p not in inline}
    tests.update(inline)
    uncollected = [
        p for p in tests if not _is_test_file(p) and PurePosixPath(p).name != "conftest.py"
    ]
    if uncollected:
        raise IssueError(
            "pytest would not collect "
            + ", ".join(f"`{p}`" for p in uncollected)
            + ": name test files `test_*.py` or `*_test.py`."
        )
    if not any(_is_test_file(p) for p in tests):
        raise NoTests(
            "The issue has only test support files (conftest.py) and no tests: add pytest "
            "tests in a ```python block, or a `Tests: tests/test_x.py` line."
        )
    for path in sorted(p for p in tests if _is_test_file(p)):
        problem = _hopeless(path, tests[path])
        if problem:
            raise IssueError(problem)
    if spec.target is not None:
        target = _checked(spec.target, "Target")
        name = PurePosixPath(target).name
        if target in tests or _is_test_file(target) or name == "conftest.py":
            raise IssueError(
                f"Target `{target}` is a test file; the target is the module the tests "
                "import, e.g. `Target: roman.py`."
            )
    else:
        inferred = _infer(tests, repo_files, installed)
        if inferred is None:
            raise NoTarget(
                "Cannot tell which module to write: the tests import nothing outside the "
                "standard library and the tests themselves. Add a line `Target: module.py` "
                "to the issue."
            )
        target = inferred
    text = spec.text
    for old in spec.unnamed_tests:
        stem = PurePosixPath(target).stem
        if stem == "__init__":
            stem = PurePosixPath(target).parent.name or "package"
        new = _unique_name(f"tests/test_{stem}.py", set(tests) | set(repo_files))
        tests = {(new if p == old else p): src for p, src in tests.items()}
        text = text.replace(f"(Tests: `{old}`, shown below.)", f"(Tests: `{new}`, shown below.)")
    context = {p: t for p, t in repo_files.items() if p not in tests and not _is_test_file(p)}
    if guidance and guidance.strip():
        text = f"{text}\n\n{GUIDANCE_HEADING}\n\n{guidance.strip()}"
    return Task(
        text=text,
        tests=tests,
        target=target,
        context_files=context,
        title=spec.title,
        # The issue's own tests are committed with the code; the repository's stay as they are.
        new_tests=tuple(sorted(p for p in tests if p not in repo_files)),
    )


def no_tests_message(trigger_label: str) -> str:
    """The comment on a labeled issue that has no tests: how to add them, with an example."""
    return f"""\
👋 I need tests to work from, and I couldn't find any in this issue.

Add pytest tests to the issue body in a fenced `python` block, and name the module to write \
(optional: I infer it from the tests' imports). For example:

````markdown
Add `to_roman(n)` that converts a positive integer to Roman numerals.

```python
from roman import to_roman

def test_small_numbers():
    assert to_roman(4) == "IV"
    assert to_roman(9) == "IX"

def test_large_number():
    assert to_roman(1994) == "MCMXCIV"
```

Target: roman.py
````

Or, when the tests are already on the default branch, name them:

````markdown
Tests: tests/test_roman.py
Target: roman.py
````

To give a block a file name, write ```` ```python title="tests/test_roman.py" ```` or make \
its first line `# tests/test_roman.py`.

Then remove the `{trigger_label}` label and apply it again to start a new run.
"""
