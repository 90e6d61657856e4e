"""A small model of random module edits, shared by the warm-vs-cold property tests.

Every operator has the same length, so consecutive versions of the module often have the
same size and are written within the same second: the stale-.pyc trap from NOTES.
"""

from __future__ import annotations

from hypothesis import strategies as st

OPERATORS = ["a + b", "a - b", "a * b", "b - a", "a ++b", "a / 0", "a +* b"]
CASES = {"f": [(2, 3, 5), (10, 4, 14)], "g": [(6, 3, 18), (1, 0, 0)]}


def module_source(ops: dict[str, str]) -> str:
    return "".join(f"def {name}(a, b):\n    return {op}\n\n" for name, op in ops.items())


def mathx_tests() -> str:
    lines = ["from mathx import f, g", ""]
    for name, cases in CASES.items():
        for i, (a, b, want) in enumerate(cases):
            lines += [f"def test_{name}_{i}():", f"    assert {name}({a}, {b}) == {want}", ""]
    return "\n".join(lines)


def expected_failures(ops: dict[str, str], test_path: str) -> tuple[str, ...] | None:
    """Failing test ids computed on the host; None when the module does not compile."""
    try:
        compile(module_source(ops), "mathx.py", "exec")
    except SyntaxError:
        return None
    failing = []
    for name, cases in CASES.items():
        for i, (a, b, want) in enumerate(cases):
            try:
                ok = eval(ops[name], {"a": a, "b": b}) == want
            except ZeroDivisionError:
                ok = False
            if not ok:
                failing.append(f"{test_path}::test_{name}_{i}")
    return tuple(failing)


versions = st.lists(
    st.tuples(
        st.fixed_dictionaries({"f": st.sampled_from(OPERATORS), "g": st.sampled_from(OPERATORS)}),
        st.sampled_from(["test_mathx.py", "tests/test_mathx.py"]),
    ),
    min_size=1,
    max_size=3,
)
