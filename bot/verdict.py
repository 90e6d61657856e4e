"""Whether a verification run's report can be trusted, and the red → green proof (pure).

Candidate code runs in the same process as pytest, so a report alone proves nothing: it can
be cut short, filtered or forged. Before the run, canary tests the model never sees are
planted in every test file: one that must fail and one that must pass, named after a token
drawn per run. A trustworthy report has both with the right outcome, as many outcomes as
pytest collected, at least the tests each file statically defines, and exit status 1.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from bot.sandbox.base import TestResult

CANARY_PREFIX = "test_tdd_canary_"
OUTCOMES = frozenset({"passed", "failed", "error", "skipped"})
NOT_TRUSTWORTHY = "the test report was not trustworthy"

# pytest.ExitCode.TESTS_FAILED. The must-fail canary fails in every real run, so a run that
# exits 0 was cut short or forged, and a trustworthy run exits 1 whether or not the issue's
# tests pass; only the outcomes tell them apart.
TRUSTED_EXIT_CODE = 1
# pytest.ExitCode.INTERRUPTED: what pytest exits with when collecting a test file failed.
COLLECTION_ERROR_EXIT_CODE = 2

_TOKEN = re.compile(r"[0-9a-f]{16,64}")
_EXIT_MEANING = {
    0: "pytest exited 0, but a real run exits 1 because the planted must-fail canary fails",
    2: "pytest was interrupted (exit status 2)",
    3: "pytest hit an internal error (exit status 3)",
    4: "pytest was called wrongly (exit status 4)",
    5: "pytest collected no tests (exit status 5)",
}
# Decorators that keep a test function a collectable function. Anything else may turn it
# into something pytest does not collect, so it is left out of the static lower bound.
_KEEPS_TEST = frozenset(
    {"given", "settings", "example", "seed", "skip", "skipIf", "skipUnless", "expectedFailure"}
)

PROOF_LIMIT = 20_000
MAX_PROOF_ROWS = 200
_TABLE_BUDGET = 11_000
_HASH_BUDGET = 5_000
_MAX_NODEID_SHOWN = 150
_MAX_COMMAND_SHOWN = 2_000


def nodeid_file(nodeid: str) -> str:
    """The file part of a pytest nodeid (`tests/test_x.py::TestA::test_b` -> the path)."""
    return nodeid.split("::", 1)[0]


def is_canary(nodeid: str) -> bool:
    """Whether `nodeid` names a planted canary test (of any run's token)."""
    return "::" in nodeid and nodeid.rsplit("::", 1)[1].startswith(CANARY_PREFIX)


@dataclass(frozen=True)
class Canaries:
    """The nodeids of the planted canaries, per test file in the order given."""

    must_fail: tuple[str, ...]
    must_pass: tuple[str, ...]

    @property
    def nodeids(self) -> frozenset[str]:
        return frozenset(self.must_fail) | frozenset(self.must_pass)


def canary_names(token: str) -> tuple[str, str]:
    """The must-fail and must-pass canary function names for `token`."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("the canary token must be 16 to 64 lowercase hex digits")
    return f"{CANARY_PREFIX}{token}_must_fail", f"{CANARY_PREFIX}{token}_must_pass"


def plant_canaries(tests: dict[str, str], *, token: str) -> tuple[dict[str, str], Canaries]:
    """Append the two canary tests to every test module, leaving every line in place.

    `token` is random hex the caller draws per run, e.g. secrets.token_hex(16)."""
    fail_name, pass_name = canary_names(token)
    # Module level, no fixtures, no imports: nothing the candidate code provides is used.
    block = (
        f"\n\ndef {fail_name}():\n    assert False, 'planted canary: must fail'\n"
        f"\n\ndef {pass_name}():\n    pass\n"
    )
    planted: dict[str, str] = {}
    must_fail: list[str] = []
    must_pass: list[str] = []
    for path, source in tests.items():
        name = PurePosixPath(path).name
        # Only modules pytest collects: a canary in conftest.py would never run.
        if not (name.startswith("test_") or name.endswith("_test.py")) or not name.endswith(".py"):
            planted[path] = source
            continue
        separator = "" if not source or source.endswith("\n") else "\n"
        planted[path] = source + separator + block
        nodeid_path = str(PurePosixPath(path))
        must_fail.append(f"{nodeid_path}::{fail_name}")
        must_pass.append(f"{nodeid_path}::{pass_name}")
    return planted, Canaries(tuple(must_fail), tuple(must_pass))


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.insert(0, node.id)
    return ".".join(parts)


def _keeps_test(decorators: Iterable[ast.expr]) -> bool:
    for decorator in decorators:
        parts = _decorator_name(decorator).split(".")
        # pytest.mark.*, hypothesis and unittest decorators, mock.patch(.object).
        if not ("mark" in parts or "patch" in parts or parts[-1] in _KEEPS_TEST):
            return False
    return True


def _opts_out(body: Iterable[ast.stmt]) -> bool:
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            if "__test__" in names:
                return True
    return False


def _test_functions(body: Iterable[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for stmt in body:
        if (
            isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
            and stmt.name.startswith("test_")
            and not stmt.name.startswith(CANARY_PREFIX)
            and _keeps_test(stmt.decorator_list)
        ):
            names.add(stmt.name)
    return names


def _collectable_class(node: ast.ClassDef) -> bool:
    if not node.name.startswith("Test") or not _keeps_test(node.decorator_list):
        return False
    # A base class may bring an __init__, which makes pytest skip the class; only plain
    # classes and unittest.TestCase subclasses are certain to be collected.
    for base in node.bases:
        if _decorator_name(base) not in ("object", "TestCase", "unittest.TestCase"):
            return False
    if node.keywords or _opts_out(node.body):
        return False
    defined = {s.name for s in node.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)}
    return not defined & {"__init__", "__new__"}


def static_test_counts(tests: dict[str, str]) -> dict[str, int]:
    """A lower bound of the tests pytest collects per file (parametrized ones count once)."""
    counts: dict[str, int] = {}
    for raw_path, source in tests.items():
        path = str(PurePosixPath(raw_path))
        counts[path] = 0
        if not path.endswith(".py"):
            continue
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if _opts_out(tree.body):
            continue
        # A later definition with the same name replaces the earlier one: count names.
        total = len(_test_functions(tree.body))
        classes: dict[str, int] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef):
                classes[stmt.name] = (
                    len(_test_functions(stmt.body)) if _collectable_class(stmt) else 0
                )
        counts[path] = total + sum(classes.values())
    return counts


@dataclass(frozen=True)
class Verdict:
    """What a verification run proves; `outcomes` leaves the canaries out."""

    trusted: bool
    passed: bool
    reason: str
    outcomes: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Proof:
    """A verification run and what it proves, for the PR and the check run."""

    verdict: Verdict
    result: TestResult  # the verification run: command, versions, exit status
    hashes: dict[str, str] = field(default_factory=dict, hash=False)
    unchanged: bool = True


def _untrusted(why: str, outcomes: dict[str, str]) -> Verdict:
    return Verdict(False, False, f"{NOT_TRUSTWORTHY}: {why}", outcomes)


def _listing(nodeids: list[str], outcomes: Mapping[str, str], limit: int = 5) -> str:
    shown = ", ".join(f"{n} {outcomes[n]}" for n in nodeids[:limit])
    more = len(nodeids) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")


def _canary_problem(outcomes: Mapping[str, str], canaries: Canaries) -> str | None:
    if not canaries.must_fail or not canaries.must_pass:
        return "no canary tests were planted"
    for nodeid in canaries.must_fail:
        outcome = outcomes.get(nodeid)
        if outcome != "failed":
            did = "did not run" if outcome is None else outcome
            return f"the must-fail canary of {nodeid_file(nodeid)} {did}"
    for nodeid in canaries.must_pass:
        outcome = outcomes.get(nodeid)
        if outcome != "passed":
            did = "did not run" if outcome is None else outcome
            return f"the must-pass canary of {nodeid_file(nodeid)} {did}"
    return None


def judge(
    outcomes: Mapping[str, str],
    *,
    canaries: Canaries,
    minimum: Mapping[str, int],
    exit_code: int,
    collected: int | None,
) -> Verdict:
    """Whether the run's report can be trusted and, if so, whether every test passed.

    `outcomes`: nodeid -> passed/failed/error/skipped, a file nodeid per collection error."""
    real = {n: o for n, o in outcomes.items() if n not in canaries.nodeids}
    unknown = sorted(n for n, o in outcomes.items() if o not in OUTCOMES)
    if unknown:
        return _untrusted(f"{unknown[0]} has the unknown outcome {outcomes[unknown[0]]!r}", real)
    broken = sorted(n for n in real if "::" not in n)
    if broken:
        # A file that does not import runs none of its tests, canaries included; that is a
        # plain failure, and no report with one can pass, so there is nothing to forge.
        if exit_code not in (TRUSTED_EXIT_CODE, COLLECTION_ERROR_EXIT_CODE):
            return _untrusted(f"pytest exited {exit_code} after a collection error", real)
        reason = f"pytest could not collect {', '.join(broken[:5])}"
        more = f" (and {len(broken) - 5} more)" if len(broken) > 5 else ""
        return Verdict(True, False, reason + more, real)
    problem = _canary_problem(outcomes, canaries)
    if problem:
        return _untrusted(problem, real)
    if exit_code != TRUSTED_EXIT_CODE:
        meaning = _EXIT_MEANING.get(exit_code, f"pytest exited {exit_code} (killed or crashed)")
        return _untrusted(meaning, real)
    if collected is None:
        return _untrusted("it does not say how many tests pytest collected", real)
    if len(outcomes) != collected:
        return _untrusted(
            f"it has {len(outcomes)} test outcomes but pytest collected {collected} tests", real
        )
    known = set(minimum) | {nodeid_file(n) for n in canaries.nodeids}
    strangers = sorted({nodeid_file(n) for n in real} - known)
    if strangers:
        return _untrusted(f"it has results for {strangers[0]}, which is not a test file", real)
    ran = Counter(nodeid_file(n) for n in real)
    for path, least in sorted(minimum.items()):
        if ran[path] < least:
            return _untrusted(f"{path} ran {ran[path]} tests but defines at least {least}", real)
    if not real:
        return Verdict(True, False, "no test of the issue ran", real)
    # Skipped is not passed: candidate code can raise unittest.SkipTest from the code under test.
    bad = [n for n, o in real.items() if o != "passed"]
    if bad:
        reason = f"{len(bad)} of {len(real)} tests did not pass: {_listing(bad, real)}"
        return Verdict(True, False, reason, real)
    return Verdict(True, True, f"all {len(real)} tests passed", real)


def test_hashes(tests: dict[str, str]) -> dict[str, str]:
    """The sha256 hex digest of each test file's UTF-8 text, by path."""
    return {path: hashlib.sha256(text.encode("utf-8")).hexdigest() for path, text in tests.items()}


# Named like a test; keep pytest from collecting it when imported into a test module.
test_hashes.__test__ = False  # type: ignore[attr-defined]


def changed_tests(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Paths whose hash (or text) differs between the two maps, added and removed ones included."""
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


@dataclass(frozen=True)
class ProofRow:
    """One test's outcome at the base commit and at the head of the PR."""

    nodeid: str
    base: str
    head: str

    @property
    def already_green(self) -> bool:
        return self.base == "passed"


def proof_rows(base: Mapping[str, str] | None, head: Mapping[str, str]) -> list[ProofRow]:
    """One row per non-canary test of `head`, by file and then in the order given.

    A test the base run did not report (its module did not exist or import) is "missing"."""
    order = [n for n in head if not is_canary(n)]
    order.sort(key=nodeid_file)  # stable: keeps the order given within a file
    rows = []
    for nodeid in order:
        was = "missing" if base is None else base.get(nodeid, "missing")
        rows.append(ProofRow(nodeid, was, head[nodeid]))
    return rows


def all_green_at_base(base: Mapping[str, str], minimum: Mapping[str, int]) -> bool:
    """Whether the base commit already passes: every test passed and each file ran its minimum."""
    real = {n: o for n, o in base.items() if not is_canary(n)}
    if not real or any(o != "passed" or "::" not in n for n, o in real.items()):
        return False
    ran = Counter(nodeid_file(n) for n in real)
    return all(ran[path] >= least for path, least in minimum.items())


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _code(text: str) -> str:
    # A code span needs a fence longer than any backtick run inside it.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(nodeid: str) -> str:
    # GitHub splits table cells on `|` even inside code spans unless it is escaped.
    return _code(_one_line(nodeid, _MAX_NODEID_SHOWN)).replace("|", "\\|")


_SHOWN = {
    "passed": "✅ passed",
    "failed": "❌ failed",
    "error": "❌ error",
    "missing": "❌ missing",
}


def _outcome(outcome: str) -> str:
    if outcome in _SHOWN:
        return _SHOWN[outcome]
    if outcome == "skipped":
        return "➖ skipped"
    return f"❔ {_one_line(outcome, 20).replace('|', '/')}"


def render_proof(
    rows: list[ProofRow],
    *,
    command: str,
    python: str,
    pytest: str,
    exit_code: int,
    hashes: dict[str, str],
    unchanged: bool,
) -> str:
    """The red → green proof as GitHub Markdown, under PROOF_LIMIT characters."""
    red_to_green = sum(1 for r in rows if not r.already_green and r.head == "passed")
    green = sum(1 for r in rows if r.already_green)
    lines = [
        f"**Red → green:** {red_to_green} of {len(rows)} tests did not pass at the base commit "
        f"and pass now; {green} already passed at base.",
        "",
        "| test | base | head |",
        "| --- | --- | --- |",
    ]
    used = 0
    shown = 0
    for row in rows:
        base = _outcome(row.base) + (" (already green at base)" if row.already_green else "")
        line = f"| {_cell(row.nodeid)} | {base} | {_outcome(row.head)} |"
        if shown >= MAX_PROOF_ROWS or used + len(line) > _TABLE_BUDGET:
            break
        lines.append(line)
        used += len(line) + 1
        shown += 1
    hidden = rows[shown:]
    if hidden:
        hidden_green = sum(1 for r in hidden if r.already_green)
        lines += [
            "",
            f"… and {len(hidden)} more tests not shown ({len(hidden) - hidden_green} not "
            f"green at base, {hidden_green} already green at base).",
        ]
    command_shown = command if len(command) <= _MAX_COMMAND_SHOWN else command[:1999] + "…"
    longest = max((len(m) for m in re.findall(r"`+", command_shown)), default=0)
    fence = "`" * max(3, longest + 1)
    lines += [
        "",
        "Verified with:",
        "",
        f"{fence}console",
        f"$ {command_shown}",
        fence,
        "",
        f"Python {_code(_one_line(python, 100))}, pytest {_code(_one_line(pytest, 100))}; "
        f"the verification run exited with status {_code(str(exit_code))}"
        + (
            " (a trustworthy run always exits 1: a planted canary test must fail, and did)."
            if exit_code == TRUSTED_EXIT_CODE
            else "."
        ),
        "",
        (
            "The test files are unchanged from the issue; their sha256 hashes:"
            if unchanged
            else "⚠️ The test files changed during the run; their sha256 hashes now:"
        ),
        "",
    ]
    used = 0
    items = sorted(hashes.items())
    listed = 0
    for path, digest in items:
        line = f"- {_code(_one_line(path, 200))} {_code(_one_line(digest, 128))}"
        if used + len(line) > _HASH_BUDGET:
            break
        lines.append(line)
        used += len(line) + 1
        listed += 1
    if listed < len(items):
        lines.append(f"- … and {len(items) - listed} more test files")
    return "\n".join(lines) + "\n"
