"""Trusting a verification run's report: canaries, static minimums, the red → green proof."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from bot import verdict
from bot.verdict import (
    CANARY_PREFIX,
    NOT_TRUSTWORTHY,
    PROOF_LIMIT,
    Canaries,
    ProofRow,
    all_green_at_base,
    changed_tests,
    judge,
    plant_canaries,
    proof_rows,
    render_proof,
    static_test_counts,
)

TOKEN = "0123456789abcdef0123456789abcdef"
FILE = "tests/test_roman.py"
FAIL = f"{FILE}::{CANARY_PREFIX}{TOKEN}_must_fail"
PASS = f"{FILE}::{CANARY_PREFIX}{TOKEN}_must_pass"
CANARIES = Canaries(must_fail=(FAIL,), must_pass=(PASS,))
REAL = {
    f"{FILE}::test_a[1]": "passed",
    f"{FILE}::test_a[2]": "passed",
    f"{FILE}::T::test_b": "passed",
}
MINIMUM = {FILE: 2}


def run(outcomes: dict[str, str], *, exit_code: int = 1, collected: int | None = -1, **kw: object):
    count = len(outcomes) if collected == -1 else collected
    options: dict[str, object] = {"canaries": CANARIES, "minimum": MINIMUM, **kw}
    return judge(outcomes, exit_code=exit_code, collected=count, **options)  # type: ignore[arg-type]


def honest(**real: str) -> dict[str, str]:
    return {**{f"{FILE}::{k}": v for k, v in real.items()}, FAIL: "failed", PASS: "passed"}


# -- plant_canaries -----------------------------------------------------------------------

SOURCES = [
    "from roman import to_roman\n\ndef test_a():\n    assert to_roman(1) == 'I'\n",
    "def test_a():\n    assert True",  # no newline at the end
    "",
    "class TestA:\n    def test_b(self):\n        pass\n",  # ends inside a class body
    "def test_a():\n    pass\n\nif __name__ == '__main__':\n    test_a()\n",
    "# only a comment\r\n",
]


@pytest.mark.parametrize("source", SOURCES)
def test_canaries_are_appended_without_touching_a_line(source: str) -> None:
    planted, canaries = plant_canaries({FILE: source, "tests/data.json": "{}"}, token=TOKEN)
    text = planted[FILE]
    assert text.splitlines()[: len(source.splitlines())] == source.splitlines()
    assert text.startswith(source)
    module = ast.parse(text)
    top = {f.name: f for f in module.body if isinstance(f, ast.FunctionDef)}
    assert f"{CANARY_PREFIX}{TOKEN}_must_fail" in top and f"{CANARY_PREFIX}{TOKEN}_must_pass" in top
    assert canaries == CANARIES
    assert planted["tests/data.json"] == "{}"


def test_each_test_file_gets_its_own_canaries() -> None:
    _, canaries = plant_canaries({"a/test_x.py": "", "test_y.py": ""}, token=TOKEN)
    assert [n.split("::")[0] for n in canaries.must_fail] == ["a/test_x.py", "test_y.py"]
    assert len(canaries.nodeids) == 4


@pytest.mark.parametrize(
    "token", ["", "abc", "0123456789ABCDEF", "0123456789abcdeg", "x" * 20, "0" * 65, "a b" * 8]
)
def test_a_canary_token_must_be_long_random_hex(token: str) -> None:
    with pytest.raises(ValueError, match="hex"):
        plant_canaries({FILE: ""}, token=token)


# -- static_test_counts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def test_a(): pass\nasync def test_b(): pass\n", 2),
        ("def test_a(): pass\ndef test_a(): pass\n", 1),  # redefined: pytest sees one
        ("import pytest\n@pytest.mark.parametrize('x', [1, 2, 3])\ndef test_a(x): pass\n", 1),
        ("from hypothesis import given\n@given(x=1)\n@settings()\ndef test_a(x): pass\n", 1),
        ("import unittest\n@unittest.skip('no')\ndef test_a(): pass\n", 1),
        ("@mock.patch('x')\n@mock.patch.object(a, 'b')\ndef test_a(m, n): pass\n", 1),
        ("import pytest\n@pytest.fixture\ndef test_data(): return 1\n", 0),
        ("@my_decorator\ndef test_a(): pass\n", 0),  # might not stay a function
        ("def helper(): pass\ndef check_a(): pass\ntest_b = 1\n", 0),
        ("class TestA:\n    def test_a(self): pass\n    def test_b(self): pass\n", 2),
        ("class TestA:\n    def __init__(self): pass\n    def test_a(self): pass\n", 0),
        ("class TestA:\n    def __new__(cls): pass\n    def test_a(self): pass\n", 0),
        ("class Suite:\n    def test_a(self): pass\n", 0),
        ("class TestA(unittest.TestCase):\n    def test_a(self): pass\n", 1),
        ("class TestA(Base):\n    def test_a(self): pass\n", 0),  # Base may define __init__
        ("@dataclass\nclass TestA:\n    def test_a(self): pass\n", 0),
        ("class TestA:\n    __test__ = False\n    def test_a(self): pass\n", 0),
        ("__test__ = False\ndef test_a(): pass\n", 0),
        ("if True:\n    def test_a(): pass\n", 0),  # not at module level: not counted
        (f"def test_a(): pass\ndef {CANARY_PREFIX}{TOKEN}_must_fail(): pass\n", 1),
        ("def test_a(:\n", 0),
        ("def test_a(): pass\nclass TestB:\n    def test_c(self): pass\n", 2),
    ],
)
def test_static_counts_are_a_lower_bound(source: str, expected: int) -> None:
    assert static_test_counts({FILE: source}) == {FILE: expected}


def test_static_counts_cover_every_file_and_ignore_non_python() -> None:
    counts = static_test_counts({"./a/test_x.py": "def test_a(): pass\n", "test_data.txt": ""})
    assert counts == {"a/test_x.py": 1, "test_data.txt": 0}


# -- judge --------------------------------------------------------------------------------


def test_an_honest_green_run_passes() -> None:
    v = run({**REAL, FAIL: "failed", PASS: "passed"})
    assert (v.trusted, v.passed) == (True, True)
    assert v.reason == "all 3 tests passed"
    assert v.outcomes == REAL


@pytest.mark.parametrize(
    ("outcomes", "reason"),
    [
        (honest(test_a="failed", test_b="passed"), "1 of 2 tests did not pass: "),
        (honest(test_a="error", test_b="passed"), "tests/test_roman.py::test_a error"),
        (honest(test_a="skipped", test_b="passed"), "tests/test_roman.py::test_a skipped"),
        ({FAIL: "failed", PASS: "passed"}, "no test of the issue ran"),
    ],
)
def test_a_trustworthy_red_run_does_not_pass(outcomes: dict[str, str], reason: str) -> None:
    v = run(outcomes, minimum={FILE: 0})
    assert (v.trusted, v.passed) == (True, False)
    assert reason in v.reason
    assert FAIL not in v.outcomes and PASS not in v.outcomes


def test_a_collection_error_is_a_plain_failure() -> None:
    for exit_code in (1, 2):
        v = run({FILE: "error"}, exit_code=exit_code, collected=0)
        assert (v.trusted, v.passed) == (True, False)
        assert v.reason == f"pytest could not collect {FILE}"
    v = run({FILE: "error"}, exit_code=0, collected=0)
    assert (v.trusted, v.passed) == (False, False)


GREEN = {**REAL, FAIL: "failed", PASS: "passed"}
OF_FILE = f"canary of {FILE}"
UNTRUSTED = [
    ("forged all-green report", {**REAL, FAIL: "passed", PASS: "passed"}, {}, "must-fail canary"),
    ("forged report without canaries", REAL, {}, f"must-fail {OF_FILE} did not run"),
    ("must-fail skipped", {**GREEN, FAIL: "skipped"}, {}, f"must-fail {OF_FILE} skipped"),
    ("must-pass missing", {**REAL, FAIL: "failed"}, {}, f"must-pass {OF_FILE} did not run"),
    ("must-pass failed", {**GREEN, PASS: "failed"}, {}, f"must-pass {OF_FILE} failed"),
    ("os._exit(0): exit 0", GREEN, {"exit_code": 0}, "exited 0"),
    ("interrupted", GREEN, {"exit_code": 2}, "interrupted"),
    ("internal error", GREEN, {"exit_code": 3}, "internal error"),
    ("killed", GREEN, {"exit_code": 137}, "exited 137"),
    ("no collected count", GREEN, {"collected": None}, "how many tests"),
    ("outcomes dropped", GREEN, {"collected": 9}, "has 5 test outcomes but pytest collected 9"),
    (
        "-k deselected tests",
        {f"{FILE}::test_a[1]": "passed", FAIL: "failed", PASS: "passed"},
        {"minimum": {FILE: 2}},
        "ran 1 tests but defines at least 2",
    ),
    (
        "a whole file deselected",
        GREEN,
        {"minimum": {FILE: 2, "tests/test_other.py": 1}},
        "tests/test_other.py ran 0 tests",
    ),
    ("results for another file", {**GREEN, "evil_test.py::test_x": "passed"}, {}, "evil_test.py"),
    ("unknown outcome", {**GREEN, f"{FILE}::test_a[1]": "xpassed"}, {}, "unknown outcome"),
    ("no canaries planted", GREEN, {"canaries": Canaries((), ())}, "no canary tests"),
]


@pytest.mark.parametrize(
    ("outcomes", "options", "why"),
    [(o, kw, why) for _, o, kw, why in UNTRUSTED],
    ids=[name for name, *_ in UNTRUSTED],
)
def test_untrustworthy_reports_never_pass(
    outcomes: dict[str, str], options: dict[str, object], why: str
) -> None:
    v = run(outcomes, **options)
    assert (v.trusted, v.passed) == (False, False)
    assert v.reason.startswith(f"{NOT_TRUSTWORTHY}: ")
    assert why in v.reason


NAMES = st.from_regex(r"test_[a-z]{1,8}(\[[0-9]{1,2}\])?", fullmatch=True)
FILES = st.sampled_from([FILE, "tests/test_other.py", "test_top.py"])
KINDS = st.sampled_from(["passed", "failed", "error", "skipped"])


@st.composite
def forged_reports(draw: st.DrawFn) -> dict[str, str]:
    """What a forger could write without the token: any names, any outcomes."""
    keys = draw(st.lists(st.tuples(FILES, NAMES), max_size=12))
    report = {f"{f}::{n}": draw(KINDS) for f, n in keys}
    # A forger may also guess the canary naming scheme, just not the token.
    guess = draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True).filter(lambda t: t != TOKEN))
    if draw(st.booleans()):
        report[f"{FILE}::{CANARY_PREFIX}{guess}_must_fail"] = "failed"
        report[f"{FILE}::{CANARY_PREFIX}{guess}_must_pass"] = "passed"
    return report


@given(
    report=forged_reports(),
    with_canaries=st.booleans(),
    exit_code=st.sampled_from([0, 1, 2, 5]),
    collected=st.one_of(st.none(), st.integers(0, 20)),
    minimum=st.dictionaries(FILES, st.integers(0, 3)),
)
def test_a_forger_without_the_token_never_gets_a_pass(
    report: dict[str, str],
    with_canaries: bool,
    exit_code: int,
    collected: int | None,
    minimum: dict[str, int],
) -> None:
    # `with_canaries` stands for the real run's canaries showing up with the right outcomes.
    outcomes = {**report, FAIL: "failed", PASS: "passed"} if with_canaries else report
    v = judge(
        outcomes, canaries=CANARIES, minimum=minimum, exit_code=exit_code, collected=collected
    )
    if v.passed:
        assert with_canaries and exit_code == 1 and collected == len(outcomes)
    if not v.trusted:
        assert v.reason.startswith(NOT_TRUSTWORTHY)
    if not with_canaries:
        assert not v.passed


@given(
    real=st.dictionaries(st.tuples(FILES, NAMES), KINDS, min_size=1, max_size=12),
    data=st.data(),
)
def test_a_real_failure_is_never_a_pass(
    real: dict[tuple[str, str], str], data: st.DataObject
) -> None:
    outcomes = {f"{f}::{n}": o for (f, n), o in real.items()}
    if all(o == "passed" for o in outcomes.values()):
        victim = data.draw(st.sampled_from(sorted(outcomes)))
        outcomes[victim] = data.draw(st.sampled_from(["failed", "error", "skipped"]))
    files = {FILE, "tests/test_other.py", "test_top.py"}
    v = judge(
        {**outcomes, FAIL: "failed", PASS: "passed"},
        canaries=CANARIES,
        minimum={f: 0 for f in files},
        exit_code=1,
        collected=len(outcomes) + 2,
    )
    assert v.trusted and not v.passed
    assert v.outcomes == outcomes


# -- hashes -------------------------------------------------------------------------------


def test_test_hashes_are_sha256_of_the_utf8_text() -> None:
    hashes = verdict.test_hashes({FILE: "é\n", "b.py": ""})
    assert hashes == {
        FILE: hashlib.sha256(b"\xc3\xa9\n").hexdigest(),
        "b.py": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ({"a": "1", "b": "2"}, {"a": "1", "b": "2"}, []),
        ({"a": "1", "b": "2"}, {"a": "1", "b": "3"}, ["b"]),
        ({"a": "1"}, {"a": "1", "c": "0"}, ["c"]),
        ({"a": "1", "z": "0"}, {"a": "1"}, ["z"]),
        ({"b": "1", "a": "1"}, {"a": "2", "b": "2"}, ["a", "b"]),
    ],
)
def test_changed_tests(before: dict[str, str], after: dict[str, str], changed: list[str]) -> None:
    assert changed_tests(before, after) == changed
    assert changed_tests(verdict.test_hashes(before), verdict.test_hashes(after)) == changed


# -- the red → green proof ----------------------------------------------------------------


def test_proof_rows_pair_base_and_head_outcomes() -> None:
    head = {
        "tests/test_b.py::test_z": "passed",
        FAIL: "failed",
        "tests/test_a.py::test_y": "passed",
        "tests/test_b.py::test_a": "passed",
        "tests/test_a.py::test_x": "passed",
    }
    base = {"tests/test_b.py::test_z": "failed", "tests/test_a.py::test_x": "passed"}
    rows = proof_rows(base, head)
    assert rows == [
        ProofRow("tests/test_a.py::test_y", "missing", "passed"),
        ProofRow("tests/test_a.py::test_x", "passed", "passed"),
        ProofRow("tests/test_b.py::test_z", "failed", "passed"),
        ProofRow("tests/test_b.py::test_a", "missing", "passed"),
    ]
    assert [r.already_green for r in rows] == [False, True, False, False]
    assert {r.base for r in proof_rows(None, head)} == {"missing"}


def render(rows: list[ProofRow], **kw: object) -> str:
    options: dict[str, object] = {
        "command": "python -m pytest -q tests/test_roman.py",
        "python": "3.11.7",
        "pytest": "9.2.0",
        "exit_code": 1,
        "hashes": {FILE: "ab" * 32},
        "unchanged": True,
        **kw,
    }
    return render_proof(rows, **options)  # type: ignore[arg-type]


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of each body row of the first table, as GitHub would parse them."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    rows: list[list[str]] = []
    cells: list[str] | None = None
    in_body = False
    for token in tokens:
        if token.type == "tbody_open":
            in_body = True
        elif token.type == "tr_open" and in_body:
            cells = []
        elif token.type == "inline" and cells is not None:
            cells.append(token.content)
        elif token.type == "tr_close" and cells is not None:
            rows.append(cells)
            cells = None
    return rows


def test_the_proof_shows_red_to_green_and_how_it_was_verified() -> None:
    rows = [
        ProofRow(f"{FILE}::test_a[a|b]", "failed", "passed"),
        ProofRow(f"{FILE}::test_`tick`", "missing", "passed"),
        ProofRow(f"{FILE}::test_c", "passed", "passed"),
    ]
    text = render(rows)
    assert "| test | base | head |" in text
    body = table_rows(text)
    assert [len(r) for r in body] == [3, 3, 3]
    assert body[0] == ["`tests/test_roman.py::test_a[a|b]`", "❌ failed", "✅ passed"]
    assert body[1][1] == "❌ missing"
    assert body[2][1] == "✅ passed (already green at base)"
    assert "2 of 3 tests did not pass at the base commit and pass now; 1 already passed" in text
    assert "$ python -m pytest -q tests/test_roman.py" in text
    assert "Python `3.11.7`, pytest `9.2.0`" in text
    assert "exited with status `1`" in text and "canary" in text
    assert f"- `{FILE}` `{'ab' * 32}`" in text
    assert "unchanged" in text


def test_the_proof_says_when_the_tests_changed() -> None:
    text = render([ProofRow("t.py::test_a", "failed", "passed")], unchanged=False, exit_code=0)
    assert "⚠️ The test files changed" in text
    assert "status `0`." in text


@pytest.mark.parametrize(("count", "width"), [(201, 10), (5_000, 40), (300, 400), (20, 5_000)])
def test_large_suites_are_collapsed_under_the_limit(count: int, width: int) -> None:
    rows = [ProofRow(f"t.py::test_{i:05}_{'x' * width}", "failed", "passed") for i in range(count)]
    hashes = {f"tests/test_{i:05}_{'y' * width}.py": "cd" * 32 for i in range(count)}
    text = render(rows, hashes=hashes, command="pytest " + "`x` " * 3_000)
    assert len(text) < PROOF_LIMIT
    shown = len(table_rows(text))
    assert shown <= 200
    if shown < count:
        assert f"… and {count - shown} more tests not shown" in text
    assert "```" in text  # the command is fenced even when it contains backticks


@given(
    st.lists(
        st.builds(ProofRow, st.text(max_size=300), KINDS | st.just("missing"), KINDS),
        max_size=400,
    ),
    st.dictionaries(st.text(max_size=300), st.text(max_size=80), max_size=300),
    st.text(max_size=3_000),
)
def test_the_proof_always_fits(rows: list[ProofRow], hashes: dict[str, str], command: str) -> None:
    text = render(rows, hashes=hashes, command=command, python="3\n11", pytest="9|2")
    assert len(text) < PROOF_LIMIT


@pytest.mark.parametrize(
    ("base", "minimum", "green"),
    [
        ({f"{FILE}::test_a": "passed", f"{FILE}::test_b": "passed"}, {FILE: 2}, True),
        ({f"{FILE}::test_a": "passed", FAIL: "failed", PASS: "passed"}, {FILE: 1}, True),
        ({f"{FILE}::test_a": "passed", f"{FILE}::test_b": "failed"}, {FILE: 2}, False),
        ({f"{FILE}::test_a": "passed", f"{FILE}::test_b": "skipped"}, {FILE: 2}, False),
        ({f"{FILE}::test_a": "passed"}, {FILE: 2}, False),  # fewer than the file defines
        ({f"{FILE}::test_a": "passed"}, {FILE: 1, "tests/test_b.py": 1}, False),
        ({FILE: "error"}, {FILE: 0}, False),
        ({}, {FILE: 0}, False),
    ],
)
def test_all_green_at_base(base: dict[str, str], minimum: dict[str, int], green: bool) -> None:
    assert all_green_at_base(base, minimum) is green


# -- against a real pytest ----------------------------------------------------------------

RECORDER = """
import json, os
outcomes = {}
def pytest_runtest_logreport(report):
    if report.when == "call":
        outcomes[report.nodeid] = report.outcome
    elif report.failed:
        outcomes[report.nodeid] = "error"
    elif report.skipped and report.when == "setup":
        outcomes[report.nodeid] = "skipped"
def pytest_collectreport(report):
    if report.failed:
        outcomes[report.nodeid] = "error"
def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["RECORD_TO"], "w") as fh:
        json.dump({"outcomes": outcomes, "collected": session.testscollected}, fh)
"""

ISSUE_TESTS = {
    "tests/test_roman.py": (
        "import pytest\nfrom roman import to_roman\n\n"
        "@pytest.mark.parametrize('n', [1, 2, 3])\ndef test_small(n):\n"
        "    assert to_roman(n) == 'I' * n\n\n"
        "class TestRoman:\n    def test_four(self):\n        assert to_roman(4) == 'IV'"
    ),
    "tests/test_more.py": (
        "from roman import to_roman\n\ndef test_zero():\n    assert not to_roman(0)\n"
    ),
}
PYTEST = [sys.executable, "-B", "-m", "pytest", "-q", "-o", "addopts=", "-o", "pythonpath=."]
PYTEST += ["-p", "no:cacheprovider", "-p", "no:xdist", "-p", "recorder"]
CANDIDATES = [
    ("green", "def to_roman(n):\n    return 'IV' if n == 4 else 'I' * n\n", True, True),
    ("red", "def to_roman(n):\n    return 'I' * n\n", True, False),
    ("missing module", None, True, False),
    (
        "os._exit(0) after the tests",
        "import atexit, os\natexit.register(lambda: os._exit(0))\n"
        "def to_roman(n):\n    return 'I' * n\n",
        False,
        False,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "trusted", "passed"), [c[1:] for c in CANDIDATES], ids=[c[0] for c in CANDIDATES]
)
def test_judge_agrees_with_a_real_pytest_run(
    tmp_path: Path, code: str | None, trusted: bool, passed: bool
) -> None:
    planted, canaries = plant_canaries(ISSUE_TESTS, token=TOKEN)
    for path, text in planted.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    if code is not None:
        (tmp_path / "roman.py").write_text(code)
    plugin_dir = tmp_path.parent / f"{tmp_path.name}-plugin"
    plugin_dir.mkdir()
    (plugin_dir / "recorder.py").write_text(RECORDER)
    record = plugin_dir / "record.json"
    env = {**os.environ, "PYTHONPATH": str(plugin_dir), "RECORD_TO": str(record)}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [*PYTEST, *sorted(ISSUE_TESTS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(record.read_text())
    minimum = static_test_counts(ISSUE_TESTS)
    v = judge(
        report["outcomes"],
        canaries=canaries,
        minimum=minimum,
        exit_code=done.returncode,
        collected=report["collected"],
    )
    assert (v.trusted, v.passed) == (trusted, passed), (v, done.stdout)
    if code is not None:
        ran = {f: sum(1 for n in v.outcomes if n.startswith(f + "::")) for f in minimum}
        assert all(ran[f] >= least for f, least in minimum.items())
    assert all(not re.search(TOKEN, n) for n in v.outcomes)


def test_canaries_go_only_into_modules_pytest_collects() -> None:
    tests = {"conftest.py": "import pytest\n", "tests/test_a.py": "def test_a():\n    pass\n"}
    planted, canaries = plant_canaries(tests, token="ab" * 8)
    assert planted["conftest.py"] == tests["conftest.py"]
    assert all(n.startswith("tests/test_a.py::") for n in canaries.nodeids)
