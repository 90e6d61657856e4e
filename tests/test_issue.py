"""Issue parsing and task building, with issue bodies as maintainers write them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import IssueError, NoTarget
from bot.issue import (
    GUIDANCE_HEADING,
    IssueSpec,
    build_task,
    no_tests_message,
    parse_issue,
)

ROMAN_ISSUE = """\
We keep hand-writing Roman numerals in the changelog generator. Please add a
`to_roman(n)` function that converts a positive integer (1–3999) to a Roman numeral.

It should raise `ValueError` for 0 and negative numbers.

```python
import pytest

from roman import to_roman


def test_simple_numbers():
    assert to_roman(1) == "I"
    assert to_roman(4) == "IV"
    assert to_roman(9) == "IX"


def test_large_number():
    assert to_roman(1994) == "MCMXCIV"


def test_rejects_zero():
    with pytest.raises(ValueError):
        to_roman(0)
```

Target: roman.py

Thanks!
"""

REPO = {
    "README.md": "# changelog tools\n",
    "changelog.py": "def render(entries):\n    return '\\n'.join(entries)\n",
    "tests/test_changelog.py": "from changelog import render\n\ndef test_render():\n    ...\n",
    "tests/conftest.py": "import pytest\n",
}


def test_maintainer_issue_with_inline_tests_and_target() -> None:
    spec = parse_issue("Add a Roman numeral converter", ROMAN_ISSUE)

    assert spec.title == "Add a Roman numeral converter"
    assert list(spec.inline_tests) == ["test_issue.py"]
    source = spec.inline_tests["test_issue.py"]
    assert source.startswith("import pytest\n\nfrom roman import to_roman\n")
    assert "def test_rejects_zero():" in source
    assert "```" not in source
    assert spec.target == "roman.py"
    assert spec.test_paths == ()
    # The prose stays, the directive goes, the test code is replaced by a pointer.
    assert spec.text.startswith("Add a Roman numeral converter\n\nWe keep hand-writing")
    assert "It should raise `ValueError` for 0 and negative numbers." in spec.text
    assert "(Tests: `test_issue.py`, shown below.)" in spec.text
    assert "Target:" not in spec.text
    assert "def test_simple_numbers" not in spec.text
    assert spec.text.rstrip().endswith("Thanks!")


def test_build_task_from_inline_tests() -> None:
    spec = parse_issue("Add a Roman numeral converter", ROMAN_ISSUE)
    task = build_task(spec, REPO)

    # An unnamed block goes where the repository keeps tests, named after the target.
    assert task.tests == {"tests/test_roman.py": spec.inline_tests["test_issue.py"]}
    assert task.new_tests == ("tests/test_roman.py",)
    assert task.target == "roman.py"
    assert task.title == "Add a Roman numeral converter"
    assert task.text == spec.text.replace("`test_issue.py`", "`tests/test_roman.py`")
    # Other test files of the repository would be collected by the sandbox's pytest run,
    # so only the issue's tests are in the workspace; conftest.py files stay.
    assert task.context_files == {
        "README.md": REPO["README.md"],
        "changelog.py": REPO["changelog.py"],
        "tests/conftest.py": REPO["tests/conftest.py"],
    }


def test_tests_lines_name_files_in_the_repository() -> None:
    body = (
        "The slug function mangles unicode titles; make these tests pass.\r\n"
        "\r\n"
        "tests: tests/test_slug.py, `tests/test_slug_unicode.py`\r\n"
        "Test file: ./tests/test_slug_edge.py\r\n"
    )
    repo = {
        "slugs.py": "def slugify(s):\n    return s.lower()\n",
        "tests/test_slug.py": "from slugs import slugify\n\ndef test_a():\n    ...\n",
        "tests/test_slug_unicode.py": "from slugs import slugify\n\ndef test_b():\n    ...\n",
        "tests/test_slug_edge.py": "from slugs import slugify\n\ndef test_c():\n    ...\n",
        "tests/test_other.py": "def test_other():\n    ...\n",
    }
    spec = parse_issue("Fix slugify for unicode", body)

    assert spec.test_paths == (
        "tests/test_slug.py",
        "tests/test_slug_unicode.py",
        "tests/test_slug_edge.py",
    )
    assert spec.inline_tests == {}
    assert spec.target is None
    assert spec.text == (
        "Fix slugify for unicode\n\n"
        "The slug function mangles unicode titles; make these tests pass."
    )

    task = build_task(spec, repo)
    assert set(task.tests) == set(spec.test_paths)
    assert task.tests["tests/test_slug.py"] == repo["tests/test_slug.py"]
    # slugs.py exists: the issue asks to change it, so it is still the target.
    assert task.target == "slugs.py"
    assert task.context_files == {"slugs.py": repo["slugs.py"]}


def test_tests_line_with_and_and_markdown_emphasis() -> None:
    body = "- **Tests:** `tests/test_a.py` and `tests/test_b.py`\n- **Target:** `pkg/mod.py`\n"
    spec = parse_issue("t", body)
    assert spec.test_paths == ("tests/test_a.py", "tests/test_b.py")
    assert spec.target == "pkg/mod.py"
    assert spec.text == "t"


def test_issue_without_tests() -> None:
    spec = parse_issue("Make the CLI faster", "Startup takes 2s. Please make it faster.")
    assert spec.inline_tests == {}
    assert spec.test_paths == ()
    with pytest.raises(IssueError, match=r"no tests.*```python.*Tests: tests/test_x\.py"):
        build_task(spec, REPO)


def test_python_block_that_is_not_a_test_stays_in_the_text() -> None:
    body = (
        "Calling the parser like this crashes:\n\n"
        "```python\nfrom config import parse\nparse('a = [1, 2')\n```\n\n"
        "It should raise `ConfigError` instead.\n"
    )
    spec = parse_issue("Parser crashes on unclosed list", body)
    assert spec.inline_tests == {}
    assert "```python\nfrom config import parse\nparse('a = [1, 2')\n```" in spec.text
    with pytest.raises(IssueError, match="no tests"):
        build_task(spec, {"config.py": ""})


def test_block_that_does_not_parse_is_not_a_test() -> None:
    body = "```python\ndef test_broken(:\n    assert add(1, 2) == 3\n```\n"
    spec = parse_issue("Broken", body)
    assert spec.inline_tests == {}
    assert "def test_broken(:" in spec.text


def test_class_based_tests_and_other_languages() -> None:
    body = (
        "```py\nfrom stack import Stack\n\nclass TestStack:\n"
        "    def test_push(self):\n        assert Stack().push(1) is None\n```\n\n"
        "```javascript\nfunction test_js() {}\n```\n"
    )
    spec = parse_issue("Stack", body)
    assert list(spec.inline_tests) == ["test_issue.py"]
    assert "class TestStack:" in spec.inline_tests["test_issue.py"]
    assert "```javascript\nfunction test_js() {}\n```" in spec.text


def test_crlf_tilde_fence_and_indented_fence_in_a_list() -> None:
    body = (
        "Steps:\r\n\r\n"
        "1. Add `mean()`:\r\n\r\n"
        "   ```python\r\n"
        "   from stats import mean\r\n"
        "\r\n"
        "   def test_mean():\r\n"
        "       assert mean([1, 2, 3]) == 2\r\n"
        "   ```\r\n"
        "2. Add `median()`:\r\n\r\n"
        "~~~python\r\n"
        "from stats import median\r\n"
        "\r\n"
        "def test_median():\r\n"
        "    assert median([3, 1, 2]) == 2\r\n"
        "~~~\r\n"
    )
    spec = parse_issue("Stats helpers\r\n", body)
    assert spec.title == "Stats helpers"
    assert spec.inline_tests == {
        "test_issue.py": (
            "from stats import mean\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n"
        ),
        "test_issue_2.py": (
            "from stats import median\n\ndef test_median():\n    assert median([3, 1, 2]) == 2\n"
        ),
    }
    assert "\r" not in spec.text
    task = build_task(spec, {})
    assert task.target == "stats.py"


def test_file_names_from_the_fence_or_a_first_line_comment() -> None:
    body = (
        '```python title="tests/test_roman.py"\n'
        "from roman import to_roman\n\ndef test_one():\n    assert to_roman(1) == 'I'\n```\n\n"
        "```python\n# tests/test_roman_parse.py\n"
        "from roman import parse\n\ndef test_parse():\n    assert parse('I') == 1\n```\n\n"
        "```python tests/test_roman.py\n"
        "from roman import to_roman\n\ndef test_two():\n    assert to_roman(2) == 'II'\n```\n\n"
        "```python\nfrom roman import to_roman\n\ndef test_three():\n    assert to_roman(3)\n```\n"
    )
    spec = parse_issue("Roman", body)
    assert list(spec.inline_tests) == [
        "tests/test_roman.py",
        "tests/test_roman_parse.py",
        "tests/test_roman_2.py",  # the same name twice: the second gets a suffix
        "test_issue.py",
    ]
    assert spec.inline_tests["tests/test_roman_parse.py"].startswith("# tests/test_roman_parse.py")
    assert "def test_two" in spec.inline_tests["tests/test_roman_2.py"]


def test_named_conftest_block_is_kept_as_test_support() -> None:
    body = (
        '```python title="conftest.py"\nimport pytest\n\n@pytest.fixture\n'
        "def numbers():\n    return [1, 2, 3]\n```\n\n"
        "```python\nfrom stats import total\n\ndef test_total(numbers):\n"
        "    assert total(numbers) == 6\n```\n"
    )
    task = build_task(parse_issue("total", body), {})
    assert set(task.tests) == {"conftest.py", "tests/test_stats.py"}
    assert task.target == "stats.py"


def test_only_conftest_is_not_enough() -> None:
    body = '```python title="conftest.py"\nimport pytest\n```\n'
    with pytest.raises(IssueError, match=r"only test support files"):
        build_task(parse_issue("x", body), {})


def test_html_comments_from_issue_templates_are_ignored() -> None:
    body = (
        "<!--\nDescribe the change. Example:\n\n"
        "```python\ndef test_example():\n    assert 1\n```\n\n"
        "Target: example.py\n-->\n"
        "Add `double(x)` to `maths.py`. <!-- keep it short -->\n\n"
        "Tests: tests/test_maths.py\n"
    )
    spec = parse_issue("double", body)
    assert spec.inline_tests == {}
    assert spec.target is None
    assert spec.test_paths == ("tests/test_maths.py",)
    assert spec.text == "double\n\nAdd `double(x)` to `maths.py`."


def test_prose_after_a_directive_key_is_not_a_directive() -> None:
    body = "Tests: should cover negative numbers too.\nTarget: the parser, mostly.\n"
    spec = parse_issue("x", body)
    assert spec.test_paths == ()
    assert spec.target is None
    assert "Tests: should cover negative numbers too." in spec.text
    assert "Target: the parser, mostly." in spec.text


def test_directives_inside_code_blocks_are_not_read() -> None:
    body = "```\nTarget: wrong.py\nTests: tests/test_wrong.py\n```\n"
    spec = parse_issue("x", body)
    assert spec.target is None
    assert spec.test_paths == ()


def test_nested_fence_examples_are_not_tests() -> None:
    body = (
        "Our docs should show this example:\n\n````markdown\n```python\n"
        "def test_doc():\n    assert True\n```\n````\n"
    )
    spec = parse_issue("docs", body)
    assert spec.inline_tests == {}
    assert "def test_doc()" in spec.text


@pytest.mark.parametrize("body", [None, "", "   \r\n\r\n  "])
def test_empty_bodies(body: str | None) -> None:
    spec = parse_issue("  Just a title  ", body)
    assert spec == IssueSpec(title="Just a title", text="Just a title")


def test_missing_named_test_file_is_reported_by_name() -> None:
    spec = parse_issue("x", "Tests: tests/test_a.py, tests/test_missing.py")
    repo = {"tests/test_a.py": "from a import f\n\ndef test_f():\n    ...\n"}
    with pytest.raises(IssueError, match=r"`tests/test_missing\.py`") as info:
        build_task(spec, repo)
    assert "tests/test_a.py" not in str(info.value)


def test_inline_block_wins_over_a_repository_file_of_the_same_path() -> None:
    body = (
        "Tests: tests/test_a.py\n\n"
        '```python title="tests/test_a.py"\nfrom a import f\n\ndef test_new():\n    ...\n```\n'
    )
    repo = {"tests/test_a.py": "def test_old():\n    ...\n", "a.py": "def f(): ...\n"}
    task = build_task(parse_issue("x", body), repo)
    assert list(task.tests) == ["tests/test_a.py"]
    assert "test_new" in task.tests["tests/test_a.py"]


@pytest.mark.parametrize("path", ["/etc/test_x.py", "../test_x.py", "tests/../../test_x.py"])
def test_test_paths_must_be_relative(path: str) -> None:
    spec = IssueSpec(title="x", text="x", test_paths=(path,))
    with pytest.raises(IssueError, match="not a relative path"):
        build_task(spec, {path: "def test_x(): ..."})


def test_inline_names_must_be_relative_too() -> None:
    spec = IssueSpec(title="x", text="x", inline_tests={"/tmp/test_x.py": "def test_x(): ..."})
    with pytest.raises(IssueError, match=r"`/tmp/test_x\.py` is not a relative path"):
        build_task(spec, {})


def test_test_file_pytest_would_not_collect_is_refused() -> None:
    spec = IssueSpec(
        title="x",
        text="x",
        inline_tests={"roman_checks.py": "from roman import f\n\ndef test_x(): ..."},
    )
    with pytest.raises(IssueError, match=r"`roman_checks\.py`.*test_\*\.py"):
        build_task(spec, {})


def test_target_cannot_be_inferred() -> None:
    body = "```python\nimport json\n\ndef test_json():\n    assert json.loads('1') == 1\n```\n"
    with pytest.raises(IssueError, match=r"`Target: module\.py`"):
        build_task(parse_issue("x", body), {})


def test_target_must_not_be_a_test_file() -> None:
    body = "Target: tests/test_roman.py\n\n" + ROMAN_ISSUE.replace("Target: roman.py", "")
    with pytest.raises(IssueError, match=r"`tests/test_roman\.py` is a test file"):
        build_task(parse_issue("x", body), {})


def test_explicit_target_overrides_inference() -> None:
    body = ROMAN_ISSUE.replace("Target: roman.py", "Target: `numerals/roman.py`.")
    task = build_task(parse_issue("x", body), {})
    assert task.target == "numerals/roman.py"


TWO_IMPORTS = (
    "```python\nfrom shop.cart import Cart\nfrom shop.discount import apply_discount\n\n"
    "def test_discount():\n    assert apply_discount(Cart([10]), 0.5).total == 5\n```\n"
)


def test_a_missing_module_is_preferred_over_an_existing_one() -> None:
    repo = {"shop/__init__.py": "", "shop/cart.py": "class Cart: ..."}
    task = build_task(parse_issue("discounts", TWO_IMPORTS), repo)
    assert task.target == "shop/discount.py"


def test_new_submodule_in_a_src_layout_goes_beside_its_package() -> None:
    repo = {"src/shop/__init__.py": "", "src/shop/cart.py": "class Cart: ..."}
    task = build_task(parse_issue("discounts", TWO_IMPORTS), repo)
    assert task.target == "src/shop/discount.py"


def test_existing_package_module_is_targeted_at_its_init() -> None:
    body = "```python\nfrom shop import total\n\ndef test_total():\n    assert total([1]) == 1\n```"
    repo = {"shop/__init__.py": "def total(xs): ...\n"}
    task = build_task(parse_issue("total", body), repo)
    assert task.target == "shop/__init__.py"
    assert "shop/__init__.py" in (task.context_files or {})


def test_guidance_is_appended_under_a_heading() -> None:
    spec = parse_issue("Add a Roman numeral converter", ROMAN_ISSUE)
    task = build_task(spec, {}, guidance="  Use a table of (value, symbol) pairs.\n")
    text = spec.text.replace("`test_issue.py`", "`tests/test_roman.py`")
    assert task.text == f"{text}\n\n{GUIDANCE_HEADING}\n\nUse a table of (value, symbol) pairs."
    assert build_task(spec, {}, guidance="   ").text == text


def test_no_tests_message_example_is_itself_a_valid_issue() -> None:
    message = no_tests_message("agent:tdd")
    assert "`agent:tdd`" in message
    assert "apply it again" in message
    assert "Tests: tests/test_roman.py" in message
    # The example body, as a maintainer would copy it, parses into tests and a target.
    example = re.search(r"````markdown\n(.*?)\n````", message, re.S)
    assert example is not None
    spec = parse_issue("Roman numerals", example.group(1))
    task = build_task(spec, {})
    assert list(task.tests) == ["tests/test_roman.py"]
    assert "def test_large_number" in task.tests["tests/test_roman.py"]
    assert task.target == "roman.py"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400), st.text(max_size=40))
def test_parse_issue_never_raises(body: str, title: str) -> None:
    spec = parse_issue(title, body)
    assert isinstance(spec.text, str)
    assert "\r" not in spec.text or "\r" in title
    for name in spec.inline_tests:
        assert name.endswith(".py")


def test_default_names_avoid_named_test_paths() -> None:
    body = (
        "Tests: test_issue.py\n\n"
        "```python\nfrom calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n```\n"
    )
    repo = {"test_issue.py": "from calc import sub\n\ndef test_sub():\n    ...\n"}
    spec = parse_issue("calc", body)
    assert list(spec.inline_tests) == ["test_issue_2.py"]
    assert "(Tests: `test_issue_2.py`, shown below.)" in spec.text
    task = build_task(spec, repo)
    assert task.tests == {
        "test_issue.py": repo["test_issue.py"],
        "tests/test_calc.py": spec.inline_tests["test_issue_2.py"],
    }
    # Only the issue's own tests are committed; the repository's stay untouched.
    assert task.new_tests == ("tests/test_calc.py",)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "is empty"),
        ("   \n\n", "is empty"),
        ("from calc import add\n\ndef test_add(:\n    pass\n", "line 3"),
        ("from calc import add\n\nx = add(1, 2)\n", "defines no test"),
    ],
    ids=["empty", "blank", "syntax-error", "no-test-items"],
)
def test_hopeless_test_files_are_refused_naming_the_file(source: str, message: str) -> None:
    body = "Tests: tests/test_calc.py\n\nTarget: calc.py\n"
    with pytest.raises(IssueError, match=message) as caught:
        build_task(parse_issue("calc", body), {"tests/test_calc.py": source})
    assert "tests/test_calc.py" in str(caught.value)


def test_target_inference_never_picks_an_installed_package_and_asks_when_unsure() -> None:
    tests = {
        "test_x.py": "import requests\nimport yaml\nfrom slugs import slugify\n\n"
        "def test_x():\n    assert slugify\n"
    }
    spec = IssueSpec(title="t", text="t", inline_tests=tests)
    installed = frozenset({"requests", "yaml"})
    assert build_task(spec, {}, installed=installed).target == "slugs.py"
    two = IssueSpec(
        title="t",
        text="t",
        inline_tests={"test_x.py": "import alpha\nimport beta\n\ndef test_x():\n    pass\n"},
    )
    with pytest.raises(NoTarget, match=r"several modules.*`alpha.py`.*`beta.py`.*Target:"):
        build_task(two, {})
    # `import pkg` beside `from pkg.mod import f` is one target, the submodule.
    one = IssueSpec(
        title="t",
        text="t",
        inline_tests={"test_x.py": "import pkg\nfrom pkg.mod import f\n\ndef test_f():\n    f()\n"},
    )
    assert build_task(one, {}).target == "pkg/mod.py"
