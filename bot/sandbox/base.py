"""The sandbox contract every backend implements: run pytest over a workspace, return counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bot.sandbox.pytest_run import PytestConfig

# A workspace is the candidate files plus the test files, as relative path -> text.
Workspace = dict[str, str]

# One test's outcome in pytest's own words (a setup/teardown failure is an "error").
Outcome = Literal["passed", "failed", "error", "skipped"]
OUTCOMES: tuple[str, ...] = ("passed", "failed", "error", "skipped")


@dataclass(frozen=True)
class TestResult:
    """What one pytest run inside a sandbox produced."""

    __test__ = False  # keeps pytest from collecting this class

    exit_code: int
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failing: tuple[str, ...] = ()
    output: str = ""
    duration: float = 0.0
    timed_out: bool = False
    output_truncated: bool = False
    # Set when the backend itself broke (not the code under test): the run proves nothing.
    sandbox_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Proof for the PR, from the report plugin: each test's outcome by pytest node id (a
    # file's node id for a collection error), how many tests pytest collected (None: no
    # report said), and the interpreter and pytest versions that ran them.
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    collected: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    # The exact pytest command line (shell-quoted), as run inside the sandbox.
    command: str = ""

    @property
    def ok(self) -> bool:
        """Green: pytest exited 0, collected something, and nothing failed."""
        return (
            self.exit_code == 0
            and not self.timed_out
            and self.sandbox_error is None
            and self.failed == 0
            and self.errors == 0
            and self.passed > 0
        )

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors

    def summary(self) -> str:
        """One line, e.g. `3 passed, 1 failed (0.41s)`."""
        if self.sandbox_error:
            return f"sandbox error: {self.sandbox_error}"
        parts = [f"{self.passed} passed", f"{self.failed} failed"]
        if self.errors:
            parts.append(f"{self.errors} errors")
        if self.timed_out:
            parts.append("timed out")
        return ", ".join(parts) + f" ({self.duration:.2f}s)"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failing"] = list(self.failing)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestResult:
        """Inverse of to_dict; journals written before a field existed load with its default,
        and keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        data = {key: value for key, value in data.items() if key in known}
        data["failing"] = tuple(data.get("failing", ()))
        return cls(**data)


class Sandbox(Protocol):
    """A place to run untrusted code and its tests."""

    def run_tests(
        self, workspace: Workspace, *, pytest_config: PytestConfig | str | None = None
    ) -> TestResult:
        """Run pytest over `workspace` (relative path -> text) in a fresh directory.

        `pytest_config` is the configuration pytest runs with (e.g. the repository's own at
        the base commit; a str is read as a pytest.ini); None keeps the sandbox's default.
        Configuration files in the workspace are never read.
        """
        ...

    def close(self) -> None:
        """Release whatever the backend holds (processes, remote sandboxes)."""
        ...


@runtime_checkable
class RemoteSandbox(Sandbox, Protocol):
    """A backend with a long-lived remote machine a resumed run can reattach to."""

    def attach(self, sandbox_id: str) -> None:
        """Use this existing sandbox (if still alive) instead of creating one."""
        ...

    def start(self) -> str:
        """Create or reattach now; returns the id to record in the journal."""
        ...
