"""The repository's own pytest configuration, as the sandbox will use it (pure).

pytest reads the first of pytest.ini, .pytest.ini, pyproject.toml ([tool.pytest.ini_options]),
tox.ini ([pytest]) and setup.cfg ([tool:pytest]) at the repository root. We take the same
file from the base commit (never from the candidate's workspace) and keep its options but
`addopts`: options such as `-k`, `-x`, `--lf` or `-p` would choose which tests run or how
they report, and the verdict must not depend on them.
"""

from __future__ import annotations

import configparser
import tomllib
from collections.abc import Mapping

from bot.sandbox.pytest_run import PytestConfig

# Options that steer which tests run or how a run reports: never from the repository.
DROPPED = frozenset({"addopts"})
_INI_SECTIONS = (
    ("pytest.ini", "pytest"),
    (".pytest.ini", "pytest"),
    ("pyproject.toml", None),
    ("tox.ini", "pytest"),
    ("setup.cfg", "tool:pytest"),
)


def _ini_value(value: object) -> str:
    if isinstance(value, list):
        return "\n" + "\n".join(f"    {v}" for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _render(options: Mapping[str, object]) -> str:
    lines = ["[pytest]"]
    lines += [f"{k} = {_ini_value(v)}" for k, v in options.items() if k not in DROPPED]
    return "\n".join(lines) + "\n"


def _ini_options(text: str, section: str) -> dict[str, str] | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    if not parser.has_section(section):
        return None
    return dict(parser.items(section))


def repository_pytest_config(files: Mapping[str, str]) -> PytestConfig | None:
    """The configuration pytest would read at the root of `files`, minus `addopts`."""
    for name, section in _INI_SECTIONS:
        text = files.get(name)
        if text is None:
            continue
        if section is None:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                continue
            options = data.get("tool", {}).get("pytest", {}).get("ini_options")
            if isinstance(options, dict):
                return PytestConfig(text=_render(options))
            continue
        found = _ini_options(text, section)
        if found is not None:
            return PytestConfig(text=_render(found))
        if name in ("pytest.ini", ".pytest.ini"):
            return PytestConfig()  # pytest uses the file even without a [pytest] section
    return None
