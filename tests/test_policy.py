"""The write rule and the escape-hatch check that keep candidate code from steering a run."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.policy import (
    DATA_EXTENSIONS,
    HATCHES,
    PLUGIN_MODULE,
    PROTECTED_MODULES,
    Hatch,
    escape_hatches,
    matches_glob,
    refused_apis_markdown,
    write_refusal,
)

TESTS = frozenset({"tests/test_roman.py", "check_words.py"})
INSTALLED = frozenset({"hypothesis", "numpy"})


def refusal(path: str, **kwargs: object) -> str | None:
    options: dict[str, object] = {"tests": TESTS, "shadowed": INSTALLED, **kwargs}
    return write_refusal(path, **options)  # type: ignore[arg-type]


# -- write_refusal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "roman.py",
        "./roman.py",
        "pkg/__init__.py",
        "pkg/roman.py",
        "pkg/json.py",  # imported as pkg.json, which shadows nothing
        "src/pkg/logging.py",
        "roman_impl.py",
        "data/cases.json",
        "data/table.csv",
        "NOTES.md",
        "words.txt",
        "config.yaml",
        "pkg.v2/mod.py",
    ],
)
def test_ordinary_modules_and_data_files_may_be_written(path: str) -> None:
    assert refusal(path) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Not a relative POSIX path inside the workspace.
        ("", "not a usable path"),
        ("a\\b.py", "not a usable path"),
        ("roman\x00.py", "not a usable path"),
        ("roman\n.py", "not a usable path"),
        ("/etc/roman.py", "not a relative path"),
        ("../roman.py", "not a relative path"),
        ("pkg/../../roman.py", "not a relative path"),
        (".", "not a relative path"),
        # The tests, and anything pytest would collect or load as tests.
        ("tests/test_roman.py", "one of the issue's tests"),
        ("tests//test_roman.py", "one of the issue's tests"),
        ("check_words.py", "one of the issue's tests"),
        ("test_extra.py", "collected by pytest"),
        ("pkg/roman_test.py", "collected by pytest"),
        ("Test_Roman.py", "collected by pytest"),
        ("conftest.py", "collected by pytest"),
        ("tests/conftest.py", "collected by pytest"),
        ("test_cases.txt", "collected by pytest"),  # pytest's doctest plugin: test*.txt
        # Configuration, at the root or next to the tests.
        ("pytest.ini", "configuration"),
        ("tests/pytest.ini", "configuration"),
        ("pytest.toml", "configuration"),
        ("tox.ini", "configuration"),
        ("setup.cfg", "configuration"),
        ("pyproject.toml", "configuration"),
        ("tests/pyproject.toml", "configuration"),
        ("setup.py", "configuration"),
        ("noxfile.py", "configuration"),
        # Hidden files and directories.
        (".pytest.ini", "hidden"),
        (".pytest.toml", "hidden"),
        (".github/workflows/ci.yml", "hidden"),
        (".git/hooks/pre-commit", "hidden"),
        ("pkg/.secret.json", "hidden"),
        # Code Python runs at start-up.
        ("sitecustomize.py", "start-up"),
        ("pkg/usercustomize.py", "start-up"),
        ("evil.pth", "start-up"),
        # File types that are neither modules nor plain data.
        ("roman.pyc", "file type"),
        ("_speedups.so", "file type"),
        ("settings.toml", "file type"),
        ("settings.ini", "file type"),
        ("Makefile", "file type"),
        ("run.sh", "file type"),
        # Import-name shadowing: stdlib, pytest's machinery, the report plugin, installed
        # packages and the tests' own modules.
        ("pytest.py", "pytest's own machinery"),
        ("_pytest/python.py", "pytest's own machinery"),
        ("pluggy.py", "pytest's own machinery"),
        ("py.py", "pytest's own machinery"),
        ("iniconfig.py", "pytest's own machinery"),
        ("packaging/version.py", "pytest's own machinery"),
        (f"{PLUGIN_MODULE}.py", "the plugin that reports"),
        ("json.py", "standard-library"),
        ("json/__init__.py", "standard-library"),
        ("unittest/mock.py", "standard-library"),
        ("atexit.py", "standard-library"),
        ("tests/json.py", "standard-library"),  # tests/ is on sys.path under pytest
        ("hypothesis/__init__.py", "installed in the test environment"),
        ("numpy.py", "installed in the test environment"),
        ("check_words/__init__.py", "test modules"),
        # Package markers that change how pytest imports the tests.
        ("__init__.py", "how pytest imports the tests"),
        ("tests/__init__.py", "how pytest imports the tests"),
    ],
)
def test_refused_paths_say_why(path: str, expected: str) -> None:
    message = refusal(path)
    assert message is not None
    assert expected in message


@pytest.mark.parametrize(
    ("path", "instead"),
    [
        ("pytest.ini", "Change the code under test"),
        ("tests/test_roman.py", "Change the code under test"),
        ("json.py", "`json_impl.py`"),
        ("x.toml", "Write Python modules (.py) or plain data files"),
        ("../x.py", "such as `roman.py`"),
        (".github/ci.yml", "Write your code in an ordinary module"),
    ],
)
def test_refusals_tell_the_model_what_to_do_instead(path: str, instead: str) -> None:
    assert instead in (refusal(path) or "")


@pytest.mark.parametrize(
    ("path", "writable", "protected", "allowed"),
    [
        ("src/roman.py", ("src/**",), (), True),
        ("roman.py", ("src/**",), (), False),
        ("src/deep/er/roman.py", ("src/**/*.py",), (), True),
        ("src/roman.json", ("src/**/*.py",), (), False),
        ("src/roman.py", ("src",), (), True),  # a directory pattern covers what is under it
        ("lib/roman.py", ("src/*", "lib/*"), (), True),
        ("vendor/six.py", (), ("vendor/**",), False),
        ("vendor/six.py", (), ("vendor",), False),
        ("pkg/generated_x.py", (), ("**/generated_*.py",), False),
        ("generated_x.py", (), ("**/generated_*.py",), False),
        ("pkg/handwritten.py", (), ("**/generated_*.py",), True),
        ("src/legacy.py", ("src/**",), ("src/legacy.py",), False),
    ],
)
def test_repository_globs_limit_where_the_model_writes(
    path: str, writable: tuple[str, ...], protected: tuple[str, ...], allowed: bool
) -> None:
    assert (refusal(path, writable=writable, protected=protected) is None) is allowed


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("a/b/c.py", "a/**", True),
        ("a/b/c.py", "**/c.py", True),
        ("c.py", "**/c.py", True),
        ("a/b/c.py", "a/*.py", False),
        ("a/c.py", "a/*.py", True),
        ("a/c.py", "a/?.py", True),
        ("a/cc.py", "a/?.py", False),
        ("a/c.py", "a/[abc].py", True),
        ("a/d.py", "a/[!abc].py", True),
        ("a/c.py", "a/[!abc].py", False),
        ("a/b", "a/b", True),
        ("a/b/c.py", "a/b", True),
        ("ab/c.py", "a", False),
        ("a.b/c.py", "a?b/**", True),
        ("a/b/c.py", "a[!x]b/c.py", False),  # a class never matches the separator
        ("a/^.py", "a/[^x].py", True),  # `^` is literal in a glob class
        ("a/[z-a].py", "a/[z-a].py", True),  # a malformed class is a plain name
    ],
)
def test_matches_glob(path: str, pattern: str, expected: bool) -> None:
    assert matches_glob(path, pattern) is expected


def test_protected_module_names_cover_stdlib_pytest_and_the_plugin() -> None:
    assert {"json", "os", "atexit", "pytest", "_pytest", "pluggy", PLUGIN_MODULE} <= (
        PROTECTED_MODULES
    )
    assert ".toml" not in DATA_EXTENSIONS and ".py" not in DATA_EXTENSIONS


@given(st.text(max_size=40))
def test_any_text_gets_an_answer_and_escaping_paths_are_refused(path: str) -> None:
    message = refusal(path)
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or "\\" in path or "\x00" in path:
        assert message is not None
    if message is None:
        assert path.endswith(".py") or any(path.lower().endswith(e) for e in DATA_EXTENSIONS)


# -- escape_hatches -----------------------------------------------------------------------

ATTACKS = [
    # The red team's runs, as written.
    (
        "atexit report forger",
        "import atexit, json, os\n"
        "def _green():\n"
        "    with open(os.environ['TDD_REPORT_PATH'], 'w') as fh:\n"
        "        json.dump({'passed': 9, 'failed': 0}, fh)\n"
        "    os._exit(0)\n"
        "atexit.register(_green)\n",
        {1: "atexit", 5: "os._exit", 6: "atexit"},
    ),
    (
        "patch the test module via sys.modules",
        "import sys\nsys.modules['tests.test_roman'].test_a = lambda: None\n",
        {2: "sys.modules"},
    ),
    (
        "patch the test module via a sys.modules read",
        "import sys\nmod = sys.modules.get('test_roman')\nmod.test_a = lambda: None\n",
        {2: "sys.modules"},
    ),
    (
        "patch the test module via gc",
        "import gc\nfor f in gc.get_objects():\n    pass\n",
        {2: "gc.get_objects"},
    ),
    ("gc referrers", "import gc\ngc.get_referrers(object)\n", {2: "gc.get_referrers"}),
    ("gc referents", "from gc import get_referents\n", {1: "gc.get_referents"}),
    (
        "patch the test module via frames",
        "import sys\nframe = sys._getframe(1)\nframe.f_globals['test_a'] = None\n",
        {2: "sys._getframe", 3: "f_globals"},
    ),
    ("inspect frames", "import inspect\ninspect.currentframe()\n", {2: "inspect.currentframe"}),
    ("inspect stack", "import inspect\ninspect.stack()\n", {2: "inspect.stack"}),
    ("inspect outer", "import inspect\ninspect.getouterframes(x)\n", {2: "inspect.getouterframes"}),
    ("inspect members", "import inspect\ninspect.getmembers(x)\n", {2: "inspect.getmembers"}),
    ("traceback frame", "def f(e):\n    return e.__traceback__.tb_frame\n", {2: "tb_frame"}),
    ("f_back", "def f(frame):\n    return frame.f_back\n", {2: "f_back"}),
    ("f_locals", "def f(frame):\n    return frame.f_locals\n", {2: "f_locals"}),
    ("f_code", "def f(frame):\n    return frame.f_code\n", {2: "f_code"}),
    ("generator frame", "def f(g):\n    return g.gi_frame\n", {2: "gi_frame"}),
    ("coroutine frame", "def f(c):\n    return c.cr_frame\n", {2: "cr_frame"}),
    ("getattr frame", "def f(x):\n    return getattr(x, 'f_back')\n", {2: "f_back"}),
    ("function globals", "def f(g):\n    g.__globals__['x'] = 1\n", {2: "__globals__"}),
    ("subclass gadget", "x = ().__class__.__base__.__subclasses__()\n", {1: "__subclasses__"}),
    # Ending the process or signalling it.
    ("os._exit", "import os\nos._exit(0)\n", {2: "os._exit"}),
    ("os.kill", "import os\nos.kill(os.getpid(), 9)\n", {2: "os.kill"}),
    ("os.killpg", "import os\nos.killpg(0, 9)\n", {2: "os.killpg"}),
    ("signal handler", "import signal\nsignal.signal(15, print)\n", {2: "signal.signal"}),
    ("itimer", "import signal\nsignal.setitimer(0, 1.0)\n", {2: "signal.setitimer"}),
    ("alarm", "import signal\nsignal.alarm(1)\n", {2: "signal.alarm"}),
    ("raise_signal", "import signal\nsignal.raise_signal(9)\n", {2: "signal.raise_signal"}),
    ("atexit use only", "import atexit as a\na.register(print)\n", {1: "atexit", 2: "atexit"}),
    # Child processes.
    ("subprocess", "import subprocess\n", {1: "subprocess"}),
    (
        "subprocess from",
        "from subprocess import run\nrun(['kill', '1'])\n",
        {1: "subprocess", 2: "subprocess"},
    ),
    ("os.system", "import os\nos.system('kill -9 $PPID')\n", {2: "os.system"}),
    ("os.popen", "import os\nos.popen('true')\n", {2: "os.popen"}),
    ("os.fork", "import os\nos.fork()\n", {2: "os.fork"}),
    ("os.execv", "import os\nos.execv('/bin/true', [])\n", {2: "os.execv"}),
    ("os.posix_spawn", "import os\nos.posix_spawn('x', [], {})\n", {2: "os.posix_spawn"}),
    ("pty", "import pty\n", {1: "pty"}),
    (
        "asyncio subprocess",
        "import asyncio\nasyncio.create_subprocess_shell('x')\n",
        {2: "asyncio.create_subprocess_shell"},
    ),
    # Interpreter state.
    ("settrace", "import sys\nsys.settrace(print)\n", {2: "sys.settrace"}),
    ("setprofile", "import sys\nsys.setprofile(print)\n", {2: "sys.setprofile"}),
    ("thread trace", "import threading\nthreading.settrace(print)\n", {2: "threading.settrace"}),
    ("thread profile", "import threading\nthreading.setprofile(print)\n", {2: "threading."}),
    ("audit hook", "import sys\nsys.addaudithook(print)\n", {2: "sys.addaudithook"}),
    ("excepthook", "import sys\nsys.excepthook = print\n", {2: "sys.excepthook"}),
    ("sys.exit hook", "import sys\nsys.exit = print\n", {2: "sys.exit"}),
    ("sys.path mutation", "import sys\nsys.path.insert(0, 'x')\n", {2: "sys.path"}),
    ("sys.modules assignment", "import sys\nsys.modules = {}\n", {2: "sys.modules"}),
    ("sys.modules item", "import sys\nsys.modules['json'] = None\n", {2: "sys.modules"}),
    ("sys.modules update", "import sys\nsys.modules.update({})\n", {2: "sys.modules"}),
    ("sys.modules pop", "import sys\nsys.modules.pop('json')\n", {2: "sys.modules"}),
    ("sys.modules del", "import sys\ndel sys.modules['json']\n", {2: "sys.modules"}),
    ("sys.modules setdefault", "import sys\nsys.modules.setdefault('x', 1)\n", {2: "sys.modules"}),
    ("builtins attribute", "import builtins\nbuiltins.len = print\n", {2: "builtins.len"}),
    ("builtins setattr", "import builtins\nsetattr(builtins, 'len', print)\n", {2: "builtins"}),
    ("builtins dict", "import builtins\nbuiltins.__dict__['len'] = print\n", {2: "builtins"}),
    ("__builtins__ item", "__builtins__['len'] = print\n", {1: "__builtins__"}),
    ("__builtins__ attr", "__builtins__.len = print\n", {1: "__builtins__"}),
    ("__builtins__ setattr", "setattr(__builtins__, 'len', print)\n", {1: "__builtins__"}),
    ("environ item", "import os\nos.environ['TDD_REPORT_PATH'] = '/dev/null'\n", {2: "os.environ"}),
    ("environ assignment", "import os\nos.environ = {}\n", {2: "os.environ"}),
    ("environ update", "import os\nos.environ.update(X='1')\n", {2: "os.environ"}),
    ("environ pop", "from os import environ\nenviron.pop('X')\n", {2: "os.environ"}),
    ("environ del", "import os\ndel os.environ['X']\n", {2: "os.environ"}),
    ("putenv", "import os\nos.putenv('X', '1')\n", {2: "os.putenv"}),
    # The test framework, the report plugin, the tests, native code.
    ("import pytest", "import pytest\n", {1: "pytest"}),
    ("from _pytest", "from _pytest.monkeypatch import MonkeyPatch\n", {1: "_pytest"}),
    ("import pluggy", "import pluggy\n", {1: "pluggy"}),
    ("report plugin", f"import {PLUGIN_MODULE}\n", {1: PLUGIN_MODULE}),
    ("report plugin state", f"from {PLUGIN_MODULE} import _state\n", {1: PLUGIN_MODULE}),
    ("import a test module", "import test_roman\n", {1: "test_roman"}),
    ("import from tests", "from tests.test_roman import test_a\n", {1: "tests.test_roman"}),
    ("import conftest", "import conftest\n", {1: "conftest"}),
    ("ctypes", "import ctypes\n", {1: "ctypes"}),
    ("ctypes util", "from ctypes.util import find_library\n", {1: "ctypes"}),
    ("cffi", "from cffi import FFI\n", {1: "cffi"}),
    # Code this check cannot read.
    ("exec computed", "code = 'x = 1'\nexec(code)\n", {2: "exec"}),
    ("eval computed", "def f(s):\n    return eval(s)\n", {2: "eval"}),
    ("compile computed", "def f(s):\n    return compile(s, 'f', 'exec')\n", {2: "compile"}),
    ("exec f-string", "n = 1\nexec(f'x = {n}')\n", {2: "exec"}),
    ("exec literal with a hatch", "exec('import os; os._exit(0)')\n", {1: "os._exit"}),
    ("builtins.exec", "import builtins\nbuiltins.exec(src)\n", {2: "exec"}),
    ("__import__ computed", "name = 'o' + 's'\n__import__(name)\n", {2: "__import__"}),
    (
        "import_module computed",
        "import importlib\nimportlib.import_module('o' + 's')\n",
        {2: "importlib.import_module"},
    ),
    ("dynamic getattr", "import os\ngetattr(os, '_ex' + 'it')(0)\n", {2: "getattr(os, ...)"}),
    ("vars of a module", "import os\nvars(os)['_exit'](0)\n", {2: "vars(os, ...)"}),
    ("module __dict__", "import os\nos.__dict__['_exit'](0)\n", {2: "os.__dict__"}),
    ("runpy", "import runpy\nrunpy.run_path('payload.txt')\n", {1: "runpy", 2: "runpy"}),
    (
        "load from a data file",
        "import importlib.util\nimportlib.util.spec_from_file_location('m', 'm.txt')\n",
        {2: "importlib.util.spec_from_file_location"},
    ),
    ("machinery", "from importlib.machinery import SourceFileLoader\n", {1: "importlib."}),
    ("marshal", "import marshal\n", {1: "marshal"}),
    ("pickle", "import pickle\npickle.loads(data)\n", {2: "pickle.loads"}),
    ("star import", "from os import *\n", {1: "os.*"}),
    # Monkeypatching another module.
    ("module attribute", "import json\njson.dumps = repr\n", {2: "json.dumps"}),
    ("module setattr", "import json\nsetattr(json, 'dumps', repr)\n", {2: "json.dumps"}),
    ("module delattr", "import json\ndelattr(json, 'dumps')\n", {2: "json.dumps"}),
    ("module del", "import json\ndel json.dumps\n", {2: "json.dumps"}),
    ("module augmented", "import roman\nroman.LIMIT += 1\n", {2: "roman.LIMIT"}),
    ("object.__setattr__", "import json\nobject.__setattr__(json, 'x', 1)\n", {2: "json.x"}),
    ("module __setattr__", "import json\njson.__setattr__('dumps', repr)\n", {2: "json.dumps"}),
    ("nested attribute", "import json\njson.decoder.scanstring = repr\n", {2: "json.decoder"}),
    ("item of a module global", "import roman\nroman.TABLE['I'] = 2\n", {2: "roman.TABLE"}),
    (
        "patch a test function",
        "import test_roman\ntest_roman.test_a = None\n",
        {1: "test_roman", 2: "test_roman.test_a"},
    ),
]

ALIASES = [
    ("import as", "import os as o\no._exit(0)\n", {2: "os._exit"}),
    ("from import", "from os import _exit\n_exit(0)\n", {1: "os._exit", 2: "os._exit"}),
    ("from import as", "from os import _exit as bye\nbye(0)\n", {1: "os._exit", 2: "os._exit"}),
    ("from atexit import", "from atexit import register\n", {1: "atexit"}),
    ("dotted import as", "import os.path as p\np.os._exit(0)\n", {2: "os._exit"}),
    ("assigned alias", "import os\no = os\no._exit(0)\n", {3: "os._exit"}),
    ("annotated alias", "import os\no: object = os\no._exit(0)\n", {3: "os._exit"}),
    ("walrus alias", "import os\nif (o := os):\n    o._exit(0)\n", {3: "os._exit"}),
    ("alias of a function", "import os\nbye = os._exit\nbye(0)\n", {2: "os._exit", 3: "os._"}),
    ("getattr literal", "import os\ngetattr(os, '_exit')(0)\n", {2: "os._exit"}),
    ("__import__ literal", "__import__('os')._exit(0)\n", {1: "os._exit"}),
    ("__import__ dotted", "__import__('os.path').kill(1, 9)\n", {1: "os.kill"}),
    ("__import__ atexit", "__import__('atexit').register(print)\n", {1: "atexit"}),
    (
        "import_module literal",
        "import importlib\nimportlib.import_module('os')._exit(0)\n",
        {2: ""},
    ),
    ("from importlib", "from importlib import import_module as im\nim('atexit')\n", {2: "atexit"}),
    ("via another module", "import shutil\nshutil.os._exit(0)\n", {2: "os._exit"}),
    ("default argument", "import os\ndef f(o=os):\n    o._exit(0)\n", {3: "os._exit"}),
    ("used in a method", "import os\nclass A:\n    def m(self):\n        os._exit(0)\n", {4: ""}),
    ("used in a lambda", "import os\nf = lambda: os._exit(0)\n", {2: "os._exit"}),
    ("used in a comprehension", "import os\n[os._exit(i) for i in range(1)]\n", {2: "os._exit"}),
    (
        "import inside a function",
        "def f():\n    import os as q\n    q.kill(1, 9)\n",
        {3: "os.kill"},
    ),
    ("global from a function", "import os\ndef f():\n    global os\n    os._exit(0)\n", {4: ""}),
    ("alias in exec literal", "exec('import os as o\\no._exit(0)')\n", {1: "os._exit"}),
    ("setattr via alias", "import json as j\nsetattr(j, 'dumps', repr)\n", {2: "json.dumps"}),
    ("environ via alias", "import os as o\ne = o.environ\ne['X'] = '1'\n", {3: "os.environ"}),
]


def _found(source: str, allowed: frozenset[str] = frozenset()) -> dict[int, list[str]]:
    by_line: dict[int, list[str]] = {}
    for message in escape_hatches(source, path="roman.py", allowed=allowed):
        head, _, _ = message.partition(":")
        assert head.startswith("roman.py line ")
        by_line.setdefault(int(head.removeprefix("roman.py line ")), []).append(message)
    return by_line


@pytest.mark.parametrize(
    ("source", "expected"),
    [(s, e) for _, s, e in ATTACKS + ALIASES],
    ids=[name for name, _, _ in ATTACKS + ALIASES],
)
def test_escape_hatches_are_reported_on_their_line(source: str, expected: dict[int, str]) -> None:
    found = _found(source)
    for line, api in expected.items():
        assert line in found, f"nothing reported on line {line}: {found}"
        assert any(api in message for message in found[line]), found[line]
    assert set(found) <= set(expected), f"unexpected lines: {found}"


CLEAN = [
    ("string formatting", "def f(n):\n    return f'{n:>5}' + '%d' % n + '{}'.format(n)\n"),
    (
        "dataclasses",
        "from dataclasses import dataclass, field\n"
        "@dataclass(frozen=True)\nclass P:\n    x: int\n"
        "    tags: list[str] = field(default_factory=list)\n"
        "    def __post_init__(self):\n        object.__setattr__(self, 'x', abs(self.x))\n",
    ),
    (
        "regexes",
        "import re\nWORD = re.compile(r'\\w+')\ndef words(s):\n    return WORD.findall(s)\n",
    ),
    ("json calls", "import json\ndef dump(x):\n    return json.dumps(x, indent=2)\n"),
    ("os.path", "import os\ndef where(a):\n    return os.path.join(os.getcwd(), a)\n"),
    ("environment reads", "import os\nHOME = os.environ.get('HOME', '')\nU = os.environ['USER']\n"),
    ("getenv", "import os\nDEBUG = os.getenv('DEBUG') == '1'\n"),
    ("eval of a literal", "X = eval('1 + 2')\n"),
    ("exec of a clean literal", "exec('y = [i * i for i in range(3)]')\n"),
    ("compile of a literal", "C = compile('1 + 1', '<x>', 'eval')\n"),
    ("literal import", "json = __import__('json')\nj = __import__('json').dumps([])\n"),
    ("import_module literal", "import importlib\nm = importlib.import_module('json')\n"),
    ("relative import", "from . import helpers\nhelpers.CACHE = {}\n"),
    (
        "local named like a module",
        "def f():\n    sys = {}\n    sys['modules'] = 1\n    return sys\n",
    ),
    ("parameter named like a module", "import os\ndef f(os):\n    os._exit = 1\n    return os\n"),
    ("comprehension variable", "import json\nout = [json for json in range(3)]\n"),
    ("method named exit", "class R:\n    def exit(self):\n        return 0\nR().exit()\n"),
    (
        "own modules attribute",
        "class R:\n    def __init__(self):\n        self.modules = {}\n"
        "    def add(self, x, y):\n        self.modules[x] = y\n",
    ),
    ("methods named like hatches", "def f(proc, frame):\n    proc.kill()\n    return frame.x\n"),
    ("sys.exit call", "import sys\ndef main():\n    sys.exit(1)\n"),
    ("sys reads", "import sys\nV = sys.version_info\nM = sys.maxsize\nsys.stdout.write('x')\n"),
    ("getattr on own objects", "def f(o, name):\n    return getattr(o, name, None)\n"),
    ("setattr on own objects", "def f(o, name):\n    setattr(o, name, 1)\n"),
    ("own class attribute", "class C:\n    n = 0\nC.n = 1\n"),
    ("threads", "import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\n"),
    (
        "collections",
        "from collections import Counter, defaultdict\nc = Counter('abc')\nc.update('d')\n",
    ),
    ("typing", "from typing import Any\nimport typing\nX: typing.Optional[int] = None\n"),
    ("logging", "import logging\nlog = logging.getLogger(__name__)\nlog.setLevel(10)\n"),
    ("math", "import math\nfrom math import *\nR = math.sqrt(2) + pi\n"),
    ("self-referential name", "x = x.y\nx = x.z\nx.w = 1\n"),
    ("unparseable source", "def f(:\n    import atexit\n"),
]


@pytest.mark.parametrize("source", [s for _, s in CLEAN], ids=[n for n, _ in CLEAN])
def test_ordinary_code_passes_clean(source: str) -> None:
    assert escape_hatches(source, path="roman.py") == []


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("import atexit\natexit.register(print)\n", {"atexit"}),
        ("import os\nos._exit(0)\n", {"os._exit"}),
        ("import os\nos._exit(0)\nos.kill(1, 9)\n", {"os"}),
        ("import ctypes\n", {"ctypes"}),
        ("def f(s):\n    exec(s)\n", {"exec"}),
        ("import signal\nsignal.signal(2, print)\n", {"signal.signal"}),
        ("import subprocess\nsubprocess.run(['true'])\n", {"subprocess"}),
        ("import os\nos.execv('x', [])\n", {"os.exec*"}),
        ("import os\nos.environ['X'] = '1'\n", {"os.environ"}),
        ("import json\njson.dumps = repr\n", {"monkeypatch"}),
        ("import json\njson.dumps = repr\n", {"json.dumps"}),
        ("import sys\nsys.path.insert(0, 'x')\n", {"sys.path"}),
        ("import sys\nM = sys.modules[__name__]\n", {"sys.modules"}),
        ("def f(frame):\n    return frame.f_back\n", {"f_back"}),
        ("def f(frame):\n    return frame.f_back.f_globals\n", {"frames"}),
        ("import test_roman\n", {"tests"}),
        ("from os import *\n", {"os"}),
        ("import os\ngetattr(os, name)\n", {"getattr"}),
    ],
)
def test_allowed_apis_are_not_reported(source: str, allowed: set[str]) -> None:
    assert escape_hatches(source, path="roman.py", allowed=frozenset(allowed)) == []
    assert escape_hatches(source, path="roman.py") != []


def _sample(hatch: Hatch, name: str) -> str:
    """A minimal source that uses `name` the way `hatch` refuses it."""
    if hatch.how == "use":
        return f"import {name.split('.')[0]}\n{name}\n"
    if hatch.how == "write":
        return f"import {name.split('.')[0]}\n{name}.x = 1\n"
    if hatch.how == "attr":
        return f"def f(x):\n    return x.{name}\n"
    if hatch.how == "dynamic":
        module = f"import {name.rpartition('.')[0]}\n" if "." in name else ""
        return f"{module}def f(s):\n    return {name}(s)\n"
    if hatch.how == "namespace":
        return "import os\ndef f(s):\n    return getattr(os, s)\n"
    if hatch.how == "tests":
        return "import test_roman\n"
    if hatch.how == "star":
        return "from os import *\n"
    return "import json\njson.dumps = repr\n"


HATCH_CASES = [(h, name) for h in HATCHES for name in h.matched]


@pytest.mark.parametrize(("hatch", "name"), HATCH_CASES, ids=[n for _, n in HATCH_CASES])
def test_every_row_of_the_table_is_enforced_and_can_be_allowed(hatch: Hatch, name: str) -> None:
    source = _sample(hatch, name)
    messages = escape_hatches(source, path="m.py")
    assert messages, source
    assert all(m.startswith("m.py line ") for m in messages)
    assert any(hatch.why in m and hatch.instead in m for m in messages)
    assert escape_hatches(source, path="m.py", allowed=frozenset({hatch.key})) == []
    if hatch.how in ("use", "write", "attr", "dynamic"):
        assert escape_hatches(source, path="m.py", allowed=frozenset({name})) == []


def test_the_table_renders_every_refused_api() -> None:
    table = refused_apis_markdown()
    assert table.count("\n") == len(HATCHES) + 1
    for hatch in HATCHES:
        for name in hatch.matched:
            assert f"`{name}`" in table


def test_code_too_deep_to_check_fails_closed() -> None:
    source = "import os\ny = os" + ".a" * 600 + "\n"
    [message] = escape_hatches(source, path="m.py")
    assert "nested too deeply" in message


@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_check(source: str) -> None:
    assert isinstance(escape_hatches(source, path="m.py"), list)
