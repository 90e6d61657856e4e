"""What candidate code may write and call, so only the tests decide the verdict (pure).

Two checks keep the model from steering or forging a test run: `write_refusal` says which
paths it may not write (tests, pytest configuration, import-shadowing modules, ...), and
`escape_hatches` finds process-level escape hatches in Python source it wants to write.
Both are defence in depth: the sandbox and the verdict (bot.verdict) must still assume the
candidate code is hostile.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Literal

PLUGIN_MODULE = "tdd_report_plugin"

# pytest and what it imports while it runs: a module of that name decides the verdict.
PYTEST_MODULES = frozenset(
    {"pytest", "_pytest", "pluggy", "py", "iniconfig", "packaging", "pygments"}
)

# Import names no candidate module may take, whatever the test environment holds.
PROTECTED_MODULES = (
    frozenset(sys.stdlib_module_names)
    | PYTEST_MODULES
    | {PLUGIN_MODULE, "conftest", "sitecustomize", "usercustomize"}
)

# Files pytest, setuptools or tox read as configuration, wherever they are: pytest looks
# for its ini file from the test paths upwards, so `tests/pytest.ini` counts too.
CONFIG_FILES = frozenset(
    {
        "pytest.ini",
        ".pytest.ini",
        "pytest.toml",
        ".pytest.toml",
        "tox.ini",
        "setup.cfg",
        "pyproject.toml",
        "setup.py",
        "noxfile.py",
        "conftest.py",
    }
)

# Python runs these at interpreter start-up, before pytest and our plugin.
STARTUP_FILES = frozenset({"sitecustomize.py", "usercustomize.py"})

# Plain data only: configuration formats (.ini .cfg .toml) are refused as a class so no
# tool can pick them up, and anything Python can import (.pyc .so .pth) is out.
DATA_EXTENSIONS = frozenset(
    {
        ".json",
        ".jsonl",
        ".txt",
        ".csv",
        ".tsv",
        ".md",
        ".rst",
        ".yaml",
        ".yml",
        ".xml",
        ".html",
        ".sql",
    }
)

_TEST_INSTEAD = "Change the code under test instead; the tests are correct as given."


def _normalize(path: str) -> str:
    return str(PurePosixPath(path))


def _is_test_name(name: str) -> bool:
    lower = name.lower()
    # pytest's default python_files, plus test*.txt which its doctest plugin collects.
    return (
        (lower.startswith("test_") and lower.endswith(".py"))
        or lower.endswith("_test.py")
        or (lower.startswith("test") and lower.endswith(".txt"))
    )


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = _normalize(pattern).split("/")
    out: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_segment_regex(part) + ("" if last else "/"))
    try:
        return re.compile("".join(out))
    except re.error:
        # A malformed class such as `[z-a]` matches only itself, like a plain name.
        return re.compile(re.escape(_normalize(pattern)))


def _segment_regex(part: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        ch = part[i]
        if ch == "*":
            out.append("[^/]*")
            while i + 1 < len(part) and part[i + 1] == "*":
                i += 1
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (end := part.find("]", i + 2)) != -1:
            body = part[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            # A literal `^` or `\` must not change the meaning of the regex class.
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[^{body}/]" if negate else f"[{body}]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def matches_glob(path: str, pattern: str) -> bool:
    """Whether `path` or a parent directory matches `pattern` (`*` within a segment, `**`
    across segments)."""
    regex = _glob_regex(pattern)
    parts = PurePosixPath(path).parts
    return any(regex.fullmatch("/".join(parts[:n])) for n in range(len(parts), 0, -1))


def _import_names(path: str, test_dirs: Iterable[str]) -> set[str]:
    """Top-level import names `path` (a .py file) can be imported as."""
    # pytest's default import mode puts each test file's directory on sys.path, so a module
    # next to the tests is top-level there as well as relative to the workspace root.
    names: set[str] = set()
    parts = PurePosixPath(path).parts
    for base in {"", *test_dirs}:
        base_parts = PurePosixPath(base).parts if base else ()
        if parts[: len(base_parts)] != base_parts or len(parts) == len(base_parts):
            continue
        rest = parts[len(base_parts) :]
        top = rest[0] if len(rest) > 1 else PurePosixPath(rest[0]).stem
        if top != "__init__":
            names.add(top)
    return names


def write_refusal(
    path: str,
    *,
    tests: frozenset[str],
    shadowed: frozenset[str] = frozenset(),
    writable: tuple[str, ...] = (),
    protected: tuple[str, ...] = (),
) -> str | None:
    """Why the model may not write `path`, saying what to do instead; None when it may.

    `shadowed`: import names installed for the tests; `protected`, `writable`: globs (`**`)."""
    if not path or "\\" in path or any(ord(ch) < 32 for ch in path):
        return (
            f"{path!r} is not a usable path: give a relative POSIX path such as "
            "`roman.py` or `pkg/roman.py` (forward slashes, no control characters)."
        )
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return (
            f"{path!r} is not a relative path inside the workspace: give a path relative to "
            "the repository root without `..`, such as `roman.py`."
        )
    norm = str(p)
    name = p.name
    lower = name.lower()
    test_paths = {_normalize(t) for t in tests}
    if norm in test_paths:
        return f"{norm} is one of the issue's tests and is read-only. {_TEST_INSTEAD}"
    if any(part.startswith(".") for part in p.parts):
        return (
            f"{norm} is hidden (a dot file or inside a dot directory such as .github or .git); "
            "those belong to the repository's tooling. Write your code in an ordinary module."
        )
    for pattern in protected:
        if matches_glob(norm, pattern):
            return (
                f"{norm} is protected by the repository's configuration ({pattern}) and "
                "may not be changed. Put your change in another module."
            )
    if lower == "conftest.py" or _is_test_name(name):
        return (
            f"{norm} would be collected by pytest as a test file or test configuration; only "
            f"the issue's tests may define tests. {_TEST_INSTEAD}"
        )
    if lower in CONFIG_FILES:
        return (
            f"{norm} is pytest or packaging configuration, which decides how the tests run. "
            f"Leave the configuration alone. {_TEST_INSTEAD}"
        )
    if lower in STARTUP_FILES or lower.endswith(".pth"):
        return (
            f"{norm} would run at interpreter start-up, before the tests. Put the code in the "
            "module the tests import."
        )
    if p.suffix != ".py" and p.suffix.lower() not in DATA_EXTENSIONS:
        allowed = " ".join(sorted(DATA_EXTENSIONS))
        return (
            f"{norm} has a file type the agent may not write. Write Python modules (.py) or "
            f"plain data files ({allowed})."
        )
    if p.suffix == ".py":
        test_dirs = {str(PurePosixPath(t).parent) for t in test_paths}
        test_dirs = {"" if d == "." else d for d in test_dirs}
        parent = "" if str(p.parent) == "." else str(p.parent)
        if name == "__init__.py" and (parent in test_dirs or not parent):
            return (
                f"{norm} would change how pytest imports the tests (it makes their directory "
                "a package). Put your code in its own module, such as `roman.py`."
            )
        test_names = {PurePosixPath(t).stem for t in test_paths}
        for top in sorted(_import_names(norm, test_dirs)):
            if top in PROTECTED_MODULES or top in shadowed or top in test_names:
                return (
                    f"{norm} would be imported as `{top}`, which shadows "
                    f"{_shadow_kind(top, shadowed, test_names)}. Choose a module name of your "
                    f"own, such as `{top}_impl.py` or `my_{top}.py`."
                )
    if writable and not any(matches_glob(norm, pattern) for pattern in writable):
        return (
            f"{norm} is outside the paths the repository lets the agent write "
            f"({', '.join(writable)}). Write your code under one of them."
        )
    return None


def _shadow_kind(top: str, shadowed: frozenset[str], test_names: set[str]) -> str:
    if top in test_names:
        return "one of the issue's test modules"
    if top == PLUGIN_MODULE:
        return "the plugin that reports the test results"
    if top in PYTEST_MODULES or top == "conftest":
        return "pytest's own machinery"
    if top in sys.stdlib_module_names or top in {"sitecustomize", "usercustomize"}:
        return "a standard-library module"
    if top in shadowed:
        return "a package installed in the test environment"
    return "a protected module"


# ---------------------------------------------------------------------------------------
# Escape hatches: process-level APIs candidate code could use to steer or forge a test run.

How = Literal["use", "write", "attr", "dynamic", "namespace", "tests", "star", "monkeypatch"]


@dataclass(frozen=True)
class Hatch:
    """One refused API: how it is matched, why it is refused, what to do instead."""

    key: str
    how: How
    why: str
    instead: str
    names: tuple[str, ...] = ()

    @property
    def matched(self) -> tuple[str, ...]:
        return self.names or (self.key,)


_EXIT = "Return normally or raise an exception; pytest decides what happens next."
_FRAMES = "Work with the values passed to your functions, not with the caller's frames."
_PROC = "Compute the result in Python inside the function the tests call."
_TESTFW = "Write plain Python; only the tests use the test framework."
_LOAD = "Import ordinary .py modules with an import statement."
_MUTATORS = frozenset(
    {
        "update",
        "pop",
        "popitem",
        "setdefault",
        "clear",
        "append",
        "extend",
        "insert",
        "remove",
        "__setitem__",
        "__delitem__",
        "__setattr__",
        "__delattr__",
    }
)

HATCHES: tuple[Hatch, ...] = (
    # Ending or hijacking the process before or after pytest writes its report.
    Hatch("atexit", "use", "exit hooks run after pytest has reported and can rewrite it", _EXIT),
    Hatch("os._exit", "use", "os._exit ends the process without pytest's report", _EXIT),
    Hatch("os.kill", "use", "signals can kill or interrupt the test process", _EXIT),
    Hatch("os.killpg", "use", "signals can kill or interrupt the test process", _EXIT),
    Hatch("signal.signal", "use", "a signal handler hijacks the test process", _EXIT),
    Hatch("signal.setitimer", "use", "a timer signal interrupts the test process", _EXIT),
    Hatch("signal.alarm", "use", "an alarm signal interrupts the test process", _EXIT),
    Hatch("signal.raise_signal", "use", "signals can kill the test process", _EXIT),
    Hatch("signal.pthread_kill", "use", "signals can kill the test process", _EXIT),
    # Child processes run code this check cannot see and can outlive pytest.
    Hatch("subprocess", "use", "a child process can outlive or kill the test run", _PROC),
    Hatch("pty", "use", "a child process can outlive or kill the test run", _PROC),
    Hatch(
        "os.system",
        "use",
        "a child process can outlive or kill the test run",
        _PROC,
        ("os.system", "os.popen"),
    ),
    Hatch(
        "os.fork",
        "use",
        "a child process can outlive or kill the test run",
        _PROC,
        ("os.fork", "os.forkpty"),
    ),
    Hatch(
        "os.exec*",
        "use",
        "exec replaces the test process with another program",
        _PROC,
        tuple(f"os.exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
    ),
    Hatch(
        "os.spawn*",
        "use",
        "a child process can outlive or kill the test run",
        _PROC,
        (
            *(f"os.spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
            "os.posix_spawn",
            "os.posix_spawnp",
        ),
    ),
    Hatch(
        "asyncio.create_subprocess_*",
        "use",
        "a child process can outlive or kill the test run",
        _PROC,
        ("asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell"),
    ),
    # Reaching into other modules, including the test module while it is imported.
    Hatch(
        "sys.modules",
        "use",
        "sys.modules hands out (and replaces) other modules, the tests included",
        "Import what you need with an import statement; do not touch sys.modules.",
    ),
    Hatch(
        "builtins",
        "write",
        "changing builtins changes what the tests' own code does",
        "Define your own function instead of replacing a builtin.",
    ),
    Hatch(
        "__builtins__",
        "use",
        "__builtins__ exposes the builtins of every module, the tests included",
        "Call builtins directly; define your own helpers for anything else.",
    ),
    Hatch(
        "os.environ",
        "write",
        "the environment configures pytest and its report",
        "Read the environment with os.environ.get(...); pass settings as arguments.",
    ),
    Hatch(
        "os.putenv",
        "use",
        "the environment configures pytest and its report",
        "Read the environment with os.environ.get(...); pass settings as arguments.",
        ("os.putenv", "os.unsetenv"),
    ),
    Hatch(
        "sys",
        "write",
        "replacing sys attributes (sys.exit, sys.excepthook, sys.path, ...) changes how "
        "pytest runs",
        "Leave the interpreter's state alone; return values from your functions.",
    ),
    Hatch(
        "sys.settrace",
        "use",
        "a trace function can rewrite the tests while they run",
        _FRAMES,
        ("sys.settrace", "sys.setprofile", "threading.settrace", "threading.setprofile"),
    ),
    Hatch("sys.addaudithook", "use", "an audit hook can intercept pytest's own work", _FRAMES),
    Hatch(
        "sys._getframe",
        "use",
        "frame access reaches the tests' locals and globals",
        _FRAMES,
        ("sys._getframe", "sys._current_frames"),
    ),
    Hatch(
        "inspect.currentframe",
        "use",
        "frame access reaches the tests' locals and globals",
        _FRAMES,
        (
            "inspect.currentframe",
            "inspect.stack",
            "inspect.trace",
            "inspect.getouterframes",
            "inspect.getinnerframes",
            "inspect.getmembers",
        ),
    ),
    Hatch(
        "gc.get_objects",
        "use",
        "the garbage collector hands out every object, the tests' functions included",
        _FRAMES,
        ("gc.get_objects", "gc.get_referrers", "gc.get_referents"),
    ),
    Hatch(
        "frames",
        "attr",
        "frame, globals and subclass attributes reach code the tests own",
        _FRAMES,
        (
            "f_back",
            "f_globals",
            "f_locals",
            "f_code",
            "f_builtins",
            "tb_frame",
            "gi_frame",
            "cr_frame",
            "ag_frame",
            "__globals__",
            "__subclasses__",
        ),
    ),
    # The test framework and native code.
    Hatch("pytest", "use", "candidate code has no business with the test framework", _TESTFW),
    Hatch("_pytest", "use", "candidate code has no business with the test framework", _TESTFW),
    Hatch("pluggy", "use", "candidate code has no business with the test framework", _TESTFW),
    Hatch(PLUGIN_MODULE, "use", "candidate code has no business with the test report", _TESTFW),
    Hatch(
        "tests",
        "tests",
        "candidate code must not import or patch the tests",
        "Make the code under test correct; the tests import it, not the other way round.",
    ),
    Hatch("ctypes", "use", "native calls bypass every check", _PROC, ("ctypes", "_ctypes")),
    Hatch("cffi", "use", "native calls bypass every check", _PROC),
    # Code that is not in the source this check reads.
    Hatch(
        "exec",
        "dynamic",
        "exec of a computed string runs code this check cannot read",
        "Write the code out in the module.",
    ),
    Hatch(
        "eval",
        "dynamic",
        "eval of a computed string runs code this check cannot read",
        "Parse data with ast.literal_eval, json or explicit code.",
    ),
    Hatch(
        "compile",
        "dynamic",
        "compiling a computed string runs code this check cannot read",
        "Write the code out in the module.",
    ),
    Hatch(
        "__import__",
        "dynamic",
        "importing a computed name hides what is imported",
        "Use an import statement with the module's name.",
        ("__import__", "importlib.__import__"),
    ),
    Hatch(
        "importlib.import_module",
        "dynamic",
        "importing a computed name hides what is imported",
        "Use an import statement with the module's name.",
    ),
    Hatch(
        "getattr",
        "namespace",
        "computed access to a module's namespace hides which API is used",
        "Name the attribute you need directly (module.name).",
    ),
    Hatch("runpy", "use", "running a file loads code this check cannot read", _LOAD),
    Hatch(
        "importlib.util.spec_from_file_location",
        "use",
        "loading a module from an arbitrary file runs code this check cannot read",
        _LOAD,
        (
            "importlib.util.spec_from_file_location",
            "importlib.util.spec_from_loader",
            "importlib.util.module_from_spec",
            "importlib.machinery",
            "importlib.reload",
            "zipimport",
        ),
    ),
    Hatch(
        "marshal",
        "use",
        "marshal loads code objects this check cannot read",
        "Store data as JSON or text.",
    ),
    Hatch(
        "pickle.loads",
        "use",
        "unpickling can call any function, os._exit included",
        "Store data as JSON or text.",
        ("pickle.load", "pickle.loads", "pickle.Unpickler", "shelve"),
    ),
    Hatch(
        "import *",
        "star",
        "a star import from this module hides which of its APIs are used",
        "Import the names you need explicitly.",
    ),
    Hatch(
        "monkeypatch",
        "monkeypatch",
        "assigning to another module's attributes changes code the tests rely on",
        "Change your own module, or pass the behaviour in as an argument.",
    ),
)

_BY_HOW: dict[str, tuple[Hatch, ...]] = {
    how: tuple(h for h in HATCHES if h.how == how)
    for how in ("use", "write", "attr", "dynamic", "namespace", "tests", "star", "monkeypatch")
}
_DUNDER_SETTERS = ("__setattr__", "__delattr__")
_ATTRS = {name: h for h in _BY_HOW["attr"] for name in h.matched}
# Modules that host a refused API: a chain like `shutil.os._exit` is re-rooted at them.
_HOST_MODULES = frozenset(
    name.split(".")[0] for h in HATCHES if h.how in ("use", "write") for name in h.matched
)
# The builtins this check resolves; a local binding of the same name hides them.
_BUILTINS = frozenset(
    {"exec", "eval", "compile", "__import__", "setattr", "delattr", "getattr", "vars"}
    | {"__builtins__"}
) & (set(dir(builtins)) | {"__builtins__"})
_MAX_RESOLVE_DEPTH = 32


def refused_apis_markdown() -> str:
    """The refused-API table as Markdown, for the README and the model's instructions."""
    lines = ["| API | refused when | why | instead |", "| --- | --- | --- | --- |"]
    when = {
        "use": "imported or used",
        "write": "assigned, deleted or mutated",
        "attr": "the attribute is accessed",
        "dynamic": "called with anything but a string literal",
        "namespace": "getattr/vars/__dict__ on a module with a computed name",
        "tests": "a test module (test_*, *_test, conftest, tests.*) is imported",
        "star": "`from module import *` of a module hosting a refused API",
        "monkeypatch": "an imported module's attribute is assigned, deleted or set",
    }
    for h in HATCHES:
        names = ", ".join(f"`{n}`" for n in h.matched)
        lines.append(f"| {names} | {when[h.how]} | {h.why} | {h.instead} |")
    return "\n".join(lines)


# Deferred binding: resolved lazily, in the scope chain where it was bound.
_Binding = str | ast.expr | None


@dataclass
class _Scope:
    kind: Literal["module", "function", "class", "comprehension"]
    bindings: dict[str, list[_Binding]]


def _literal_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _prefixes(dotted: str) -> Iterator[str]:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        yield ".".join(parts[:n])


def _hits(dotted: str, names: tuple[str, ...]) -> str | None:
    for name in names:
        if dotted == name or dotted.startswith(name + "."):
            return name
    return None


def _is_test_module(dotted: str) -> bool:
    return any(
        part.startswith("test_") or part.endswith("_test") or part in ("conftest", "tests", "test")
        for part in dotted.split(".")
    )


class _Bindings(ast.NodeVisitor):
    """Collects the names one scope binds, without entering nested scopes."""

    def __init__(self) -> None:
        self.found: dict[str, list[_Binding]] = {}
        self.declared: set[str] = set()

    def add(self, name: str, value: _Binding) -> None:
        self.found.setdefault(name, []).append(value)

    def scan(self, body: Iterable[ast.AST]) -> dict[str, list[_Binding]]:
        for node in body:
            self.visit(node)
        return {k: v for k, v in self.found.items() if k not in self.declared}

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.add(alias.asname, alias.name)
            else:
                top = alias.name.split(".")[0]
                self.add(top, top)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        prefix = "." * node.level + (node.module or "")
        for alias in node.names:
            if alias.name != "*":
                self.add(alias.asname or alias.name, f"{prefix}.{alias.name}".lstrip("."))
                if node.level:
                    # Relative imports are the candidate's own package: never a hatch.
                    self.found[alias.asname or alias.name][-1] = None

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.add(target.id, node.value)
            else:
                self.visit(target)
        self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.add(node.target.id, node.value)
        else:
            self.visit(node.target)
        if node.value:
            self.visit(node.value)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.add(node.target.id, node.value)
        self.visit(node.value)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.add(node.id, None)

    def visit_Global(self, node: ast.Global) -> None:
        self.declared.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.declared.update(node.names)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.add(node.name, None)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.add(node.name, None)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.add(node.name, None)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.add(node.rest, None)
        self.generic_visit(node)

    def _nested(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.add(node.name, None)

    visit_FunctionDef = _nested
    visit_AsyncFunctionDef = _nested
    visit_ClassDef = _nested

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return None

    def _comprehension(self, node: ast.AST) -> None:
        return None

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_DictComp = _comprehension
    visit_GeneratorExp = _comprehension


def _function_bindings(args: ast.arguments, body: Iterable[ast.AST]) -> dict[str, list[_Binding]]:
    found = _Bindings().scan(body)
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    pairs: list[tuple[ast.arg, ast.expr | None]] = list(zip(positional, defaults, strict=True))
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    pairs += [(a, None) for a in (args.vararg, args.kwarg) if a is not None]
    for arg, default in pairs:
        # A default is evaluated once, so `def f(o=os)` makes `o` an alias of `os`.
        found.setdefault(arg.arg, []).insert(0, default)
    return found


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str, allowed: frozenset[str], line: int | None, note: str) -> None:
        self.path = path
        self.allowed = allowed
        # Code inside an exec("...") literal is reported at the line of the exec call.
        self.fixed_line = line
        self.note = note
        self.scopes: list[_Scope] = []
        self.resolving: set[tuple[int, str]] = set()
        self.found: dict[tuple[int, str], str] = {}

    # -- reporting -------------------------------------------------------------------

    def report(self, node: ast.AST, hatch: Hatch, api: str, note: str = "") -> None:
        if hatch.key in self.allowed or any(p in self.allowed for p in _prefixes(api)):
            return
        line: int = self.fixed_line or int(getattr(node, "lineno", 0))
        key = (line, hatch.key)
        if key not in self.found:
            where = "".join(f" {n}" for n in (note, self.note) if n)
            self.found[key] = (
                f"{self.path} line {line}: `{api}`{where} is not allowed: {hatch.why}. "
                f"{hatch.instead}"
            )

    # -- name resolution -------------------------------------------------------------

    def lookup(self, name: str, depth: int = 0) -> str | None:
        for i in range(len(self.scopes) - 1, -1, -1):
            scope = self.scopes[i]
            if scope.kind == "class" and i != len(self.scopes) - 1:
                continue  # class bodies are not visible from their methods
            if name in scope.bindings:
                # `x = x.y` refers to itself: a cycle resolves to nothing.
                if (i, name) in self.resolving:
                    return None
                saved = self.scopes
                self.scopes = saved[: i + 1]
                self.resolving.add((i, name))
                try:
                    for binding in scope.bindings[name]:
                        resolved = self.resolve_binding(binding, depth + 1)
                        if resolved is not None:
                            return resolved
                finally:
                    self.resolving.discard((i, name))
                    self.scopes = saved
                return None
        return name if name in _BUILTINS else None

    def resolve_binding(self, binding: _Binding, depth: int) -> str | None:
        if binding is None or isinstance(binding, str):
            return binding
        return self.resolve(binding, depth)

    def resolve(self, node: ast.AST, depth: int = 0) -> str | None:
        """The dotted name `node` statically refers to (`o._exit` -> `os._exit`), or None."""
        if depth > _MAX_RESOLVE_DEPTH:
            return None
        if isinstance(node, ast.Name):
            return self.lookup(node.id, depth)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value, depth + 1)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call):
            return self.resolve_call(node, depth)
        return None

    def resolve_call(self, node: ast.Call, depth: int) -> str | None:
        func = self.resolve(node.func, depth + 1)
        first = _literal_str(node.args[0]) if node.args else None
        if func in ("__import__", "importlib.__import__") and first:
            fromlist = node.args[3] if len(node.args) > 3 else None
            for kw in node.keywords:
                if kw.arg == "fromlist":
                    fromlist = kw.value
            # Without a fromlist __import__("a.b") returns the top-level package `a`.
            empty = fromlist is None or (
                isinstance(fromlist, ast.List | ast.Tuple) and not fromlist.elts
            )
            return first.split(".")[0] if empty else first
        if func == "importlib.import_module" and first and not first.startswith("."):
            return first
        if func == "getattr" and len(node.args) >= 2:
            attr = _literal_str(node.args[1])
            base = self.resolve(node.args[0], depth + 1)
            if base and attr:
                return f"{base}.{attr}"
        return None

    def write_target(self, node: ast.AST) -> tuple[str, int] | None:
        """The dotted name a store into `node` writes (`os.environ["X"]` -> `os.environ`)."""
        attrs: list[str] = []
        while isinstance(node, ast.Attribute | ast.Subscript):
            if isinstance(node, ast.Subscript):
                attrs.clear()  # only the attributes between the root and a subscript name it
            else:
                attrs.insert(0, node.attr)
            node = node.value
        root = self.resolve(node)
        if root is None:
            return None
        return ".".join([root, *attrs]), len(attrs)

    # -- checks ----------------------------------------------------------------------

    def check_use(self, node: ast.AST, dotted: str) -> None:
        parts = dotted.split(".")
        # `shutil.os._exit` reaches os through another module: check from each host module.
        candidates = [dotted] + [
            ".".join(parts[i:]) for i in range(1, len(parts)) if parts[i] in _HOST_MODULES
        ]
        for candidate in candidates:
            for hatch in _BY_HOW["use"]:
                hit = _hits(candidate, hatch.matched)
                if hit:
                    self.report(node, hatch, hit)

    def check_write(self, node: ast.AST, dotted: str, attrs: int, *, generic: bool) -> None:
        specific = [h for h in (*_BY_HOW["use"], *_BY_HOW["write"]) if _hits(dotted, h.matched)]
        if specific:
            hatch = max(specific, key=lambda h: len(_hits(dotted, h.matched) or ""))
            self.report(node, hatch, dotted)
        elif generic and attrs and dotted.split(".")[0] not in _BUILTINS:
            self.report(node, _BY_HOW["monkeypatch"][0], dotted)

    def check_import(self, node: ast.AST, dotted: str) -> None:
        self.check_use(node, dotted)
        if _is_test_module(dotted):
            self.report(node, _BY_HOW["tests"][0], dotted)

    # -- visitors --------------------------------------------------------------------

    def visit_Module(self, node: ast.Module) -> None:
        self.scopes.append(_Scope("module", _Bindings().scan(node.body)))
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.check_import(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        for alias in node.names:
            if alias.name == "*":
                self.check_import(node, node.module)
                hosted = node.module in _HOST_MODULES or node.module == "builtins"
                if hosted:
                    self.report(node, _BY_HOW["star"][0], f"{node.module}.*")
            else:
                self.check_import(node, f"{node.module}.{alias.name}")

    def visit_Name(self, node: ast.Name) -> None:
        dotted = self.resolve(node)
        if dotted:
            self.check_use(node, dotted)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _ATTRS:
            self.report(node, _ATTRS[node.attr], node.attr)
        if isinstance(node.ctx, ast.Load):
            dotted = self.resolve(node)
            if dotted:
                self.check_use(node, dotted)
            if node.attr == "__dict__" and self.resolve(node.value):
                self.report(node, _BY_HOW["namespace"][0], f"{self.resolve(node.value)}.__dict__")
        else:
            target = self.write_target(node)
            if target:
                self.check_write(node, *target, generic=True)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load):
            target = self.write_target(node)
            if target:
                self.check_write(node, *target, generic=True)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        value = self.resolve(node)
        if value:
            self.check_use(node, value)
        func = self.resolve(node.func)
        first = node.args[0] if node.args else None
        for hatch in _BY_HOW["dynamic"]:
            if func and (api := _hits(func.removeprefix("builtins."), hatch.matched)):
                self.check_dynamic(node, hatch, api, first)
        if func in ("importlib.import_module", "__import__", "importlib.__import__"):
            name = _literal_str(first)
            if name and not name.startswith("."):
                self.check_import(node, name)
        if func and func.removeprefix("builtins.") in ("setattr", "delattr") and first:
            self.check_setattr(node, first, 1)
        if isinstance(node.func, ast.Attribute) and node.func.attr in _DUNDER_SETTERS:
            owner = node.func.value
            if self.write_target(owner) is not None:
                self.check_setattr(node, owner, 0)  # json.__setattr__("dumps", f)
            elif first is not None:
                self.check_setattr(node, first, 1)  # object.__setattr__(json, "dumps", f)
        if func and func.removeprefix("builtins.") in ("getattr", "vars") and first:
            base = self.resolve(first)
            attr = _literal_str(node.args[1]) if len(node.args) > 1 else None
            if base and attr is None:
                self.report(node, _BY_HOW["namespace"][0], f"{func}({base}, ...)")
            if attr in _ATTRS:
                self.report(node, _ATTRS[attr], attr)
        if isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
            target = self.write_target(node.func.value)
            if target:
                self.check_write(node, *target, generic=False)
        self.generic_visit(node)

    def check_setattr(self, node: ast.Call, obj: ast.expr, name_at: int) -> None:
        target = self.write_target(obj)
        if target is None:
            return
        attr = _literal_str(node.args[name_at]) if len(node.args) > name_at else None
        self.check_write(node, f"{target[0]}.{attr or '*'}", target[1] + 1, generic=True)

    def check_dynamic(self, node: ast.Call, hatch: Hatch, api: str, first: ast.expr | None) -> None:
        source = _literal_str(first)
        if source is None:
            self.report(node, hatch, api, "with a computed argument")
        elif hatch.key in ("exec", "eval", "compile"):
            # A literal is readable: check the code inside it like any other source.
            line = self.fixed_line or node.lineno
            for message in _check(source, self.path, self.allowed, line, f"(in the {api} string)"):
                self.found.setdefault((line, message), message)

    def _scoped(self, scope: _Scope, children: Iterable[ast.AST]) -> None:
        self.scopes.append(scope)
        for child in children:
            self.visit(child)
        self.scopes.pop()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for outer in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if outer is not None:
                self.visit(outer)
        if node.returns:
            self.visit(node.returns)
        self._scoped(_Scope("function", _function_bindings(node.args, node.body)), node.body)

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for outer in [*node.args.defaults, *node.args.kw_defaults]:
            if outer is not None:
                self.visit(outer)
        self._scoped(_Scope("function", _function_bindings(node.args, [node.body])), [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for outer in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(outer)
        self._scoped(_Scope("class", _Bindings().scan(node.body)), node.body)

    def _comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp
    ) -> None:
        bound: dict[str, list[_Binding]] = {}
        for gen in node.generators:
            for target in ast.walk(gen.target):
                if isinstance(target, ast.Name):
                    bound.setdefault(target.id, []).append(None)
        # The first iterable is evaluated in the enclosing scope.
        self.visit(node.generators[0].iter)
        rest: list[ast.AST] = [node.generators[0].target, *node.generators[0].ifs]
        for gen in node.generators[1:]:
            rest += [gen.target, gen.iter, *gen.ifs]
        if isinstance(node, ast.DictComp):
            rest += [node.key, node.value]
        else:
            rest.append(node.elt)
        self._scoped(_Scope("comprehension", bound), rest)

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_DictComp = _comprehension
    visit_GeneratorExp = _comprehension


def _check(
    source: str, path: str, allowed: frozenset[str], line: int | None, note: str = ""
) -> list[str]:
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    checker = _Checker(path, allowed, line, note)
    try:
        checker.visit(tree)
    except RecursionError:
        # Fail closed: code too deep to check is code we cannot vouch for.
        return [
            f"{path} line {line or 1}: the code is nested too deeply to check. Split deep "
            "expressions into smaller statements."
        ]
    return [checker.found[key] for key in sorted(checker.found)]


def escape_hatches(source: str, *, path: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """One message per process-level escape hatch in `source`, naming its line and the fix.

    `allowed` takes HATCHES keys or API names ("atexit", "os._exit", "ctypes", "exec",
    "signal.signal", "os.environ", "monkeypatch"); "os" also allows os._exit and the rest.
    """
    return _check(source, path, allowed, None)
