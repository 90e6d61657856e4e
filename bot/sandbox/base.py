"""The sandbox contract every backend implements: run pytest over a workspace, return counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

# A workspace is the candidate files plus the test files, as relative path -> text.
Workspace = dict[str, str]


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
        data = dict(data)
        data["failing"] = tuple(data.get("failing", ()))
        return cls(**data)


class Sandbox(Protocol):
    """A place to run untrusted code and its tests."""

    def run_tests(self, workspace: Workspace) -> TestResult:
        """Run pytest over `workspace` (relative path -> text) in a fresh directory."""
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
