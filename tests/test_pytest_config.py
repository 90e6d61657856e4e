"""The repository's pytest configuration is used, minus the options that steer the verdict."""

from __future__ import annotations

import pytest

from bot.pytest_config import repository_pytest_config

PYPROJECT = """\
[project]
name = "x"

[tool.pytest.ini_options]
addopts = "-x -k fast"
pythonpath = ["src"]
markers = ["slow: slow tests"]
xfail_strict = true
"""


@pytest.mark.parametrize(
    ("files", "expected", "absent"),
    [
        ({"pytest.ini": "[pytest]\naddopts = -x\npythonpath = src\n"}, "pythonpath = src", "-x"),
        (
            {"pyproject.toml": PYPROJECT},
            "pythonpath = \n    src",
            "fast",
        ),
        ({"tox.ini": "[tox]\n\n[pytest]\nmarkers = a\naddopts = --lf\n"}, "markers = a", "--lf"),
        ({"setup.cfg": "[tool:pytest]\ntestpaths = tests\n"}, "testpaths = tests", "addopts"),
        # pytest.ini wins over the others, as in pytest.
        (
            {"pytest.ini": "[pytest]\nmarkers = m\n", "setup.cfg": "[tool:pytest]\nx = 1\n"},
            "markers = m",
            "x = 1",
        ),
    ],
    ids=["pytest.ini", "pyproject", "tox", "setup.cfg", "precedence"],
)
def test_the_repositorys_config_is_kept_without_addopts(
    files: dict[str, str], expected: str, absent: str
) -> None:
    config = repository_pytest_config(files)
    assert config is not None and config.filename == "pytest.ini"
    assert config.text.startswith("[pytest]\n")
    assert expected in config.text and absent not in config.text
    assert "addopts" not in config.text


def test_no_configuration_or_unrelated_files_give_none() -> None:
    assert repository_pytest_config({}) is None
    assert repository_pytest_config({"pyproject.toml": "[project]\nname = 'x'\n"}) is None
    assert repository_pytest_config({"setup.cfg": "[metadata]\nname = x\n"}) is None
    assert repository_pytest_config({"pyproject.toml": "not = [toml"}) is None
    assert repository_pytest_config({"pytest.ini": ""}) is not None
