"""One exception tree for the whole bot; messages say what to fix.

TddAgentError
├── ConfigError            the operator's settings are missing or wrong
│   └── ModelAuthError     the model server rejected the API key (401/403)
├── UsageError             bad command-line input (exit 2)
├── IssueError             an issue cannot become a task (what to change in it)
│   ├── NoTests            the issue has no tests at all
│   └── NoTarget           nothing says which module to write
├── WebhookRejected        a delivery the intake refuses (carries the HTTP status)
│   ├── BodyTooLarge       over GitHub's 25 MB cap
│   ├── BodyTimeout        the body did not arrive within the deadline (408)
│   ├── IntakeBusy         too many bodies still arriving (503, Retry-After)
│   └── MalformedPayload   a trigger whose routed fields have the wrong shape (400)
├── SandboxUnavailable     the sandbox backend cannot run on this machine
├── SandboxError           a backend failed while running (not the code under test)
│   ├── StreamLost         an E2B command's stream ended without its end event
│   └── ServerFailed       the warm server died or hung: the run goes cold
├── JournalError           the run journal refuses an operation
│   ├── JournalMismatch    replayed inputs differ: the code or prompt changed
│   └── LeaseLost          another process owns the run now
├── ModelError             the model API failed after retries
│   ├── ModelRateLimited   still rate limited after retries (carries `retry_after`)
│   ├── ModelContextTooLong  the request cannot fit the model's context window
│   └── ModelServerError   the model server failed (5xx) after retries
└── GitHubError            the GitHub API failed after retries
    ├── PublishFailed      a result could not be published (the step that failed)
    └── ConversionFailed   the app manifest code could not be exchanged
"""

from __future__ import annotations


class TddAgentError(Exception):
    """Base of every error the bot raises on purpose."""


class ConfigError(TddAgentError):
    """The configuration is missing or wrong; the message names the fix."""


class UsageError(TddAgentError):
    """Bad command-line input; exit 2."""


class IssueError(TddAgentError):
    """The issue cannot become a task; the message says what to change in the issue."""


class NoTests(IssueError):
    """The issue has no tests at all: the reply is the how-to with an example."""


class NoTarget(IssueError):
    """The tests do not say which module to write, and nothing names it."""


class WebhookRejected(TddAgentError):
    """A delivery the intake refuses; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyTooLarge(WebhookRejected):
    """A delivery over GitHub's own 25 MB payload cap."""

    def __init__(self) -> None:
        super().__init__(413, "payload larger than GitHub's 25 MB limit")


class BodyTimeout(WebhookRejected):
    """The body did not arrive within the intake's deadline: a stalled or hostile client."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s")


class IntakeBusy(WebhookRejected):
    """Too many request bodies are still arriving; `retry_after` is in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(503, "too many request bodies still arriving; retry later")
        self.retry_after = retry_after


class MalformedPayload(WebhookRejected):
    """A signed delivery that would become a job has a field of the wrong shape; `field` is
    its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, message)
        self.field = field


class SandboxUnavailable(TddAgentError):
    """The sandbox backend cannot run at all on this machine (e.g. no user namespaces)."""


class SandboxError(TddAgentError):
    """A sandbox backend failed while running (not the code under test)."""


class StreamLost(SandboxError):
    """A command's output stream ended without its end event."""


class ServerFailed(SandboxError):
    """The warm server died, hung or lost its stream: the run goes cold instead."""


class JournalError(TddAgentError):
    """The run journal refuses an operation."""


class JournalMismatch(JournalError):
    """Replayed inputs differ from the recorded ones: the code or prompt changed."""


class LeaseLost(JournalError):
    """Another process owns the run now; this one must stop writing."""


class ModelError(TddAgentError):
    """The model API failed after retries."""


class ModelAuthError(ConfigError):
    """The model server rejected the API key; the message names the setting to fix."""


class ModelRateLimited(ModelError):
    """Still rate limited after retries; `retry_after` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelContextTooLong(ModelError):
    """The request cannot fit the model's context window however much the loop shrinks it."""


class ModelServerError(ModelError):
    """The model server failed (5xx) after retries; `status` is its last answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GitHubError(TddAgentError):
    """The GitHub API failed after retries."""


class PublishFailed(GitHubError):
    """Publishing a finished run failed at `step`; the result stays in the run's journal."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(
            f"could not {step}: {detail}. The result is kept in the run's journal: "
            "triggering the run again publishes it without asking the model again"
        )
        self.step = step


class ConversionFailed(GitHubError):
    """The manifest code could not be exchanged; `status` is what the browser gets."""

    def __init__(self, message: str, *, status: int, retry: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry
