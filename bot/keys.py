"""Every Redis key name the bot writes, in one place (RQ's own keys are RQ's)."""

from __future__ import annotations

PREFIX = "tdd"
RUNS_INDEX = f"{PREFIX}:runs"


def run_key(run_id: str, part: str) -> str:
    """A run's journal keys: `meta`, `steps`, `lease`, `epoch`."""
    return f"{PREFIX}:run:{run_id}:{part}"


def delivery_key(delivery: str) -> str:
    """Marks a webhook delivery as seen, so a redelivery is not queued twice."""
    return f"{PREFIX}:delivery:{delivery}"


def issue_lock_key(full_name: str, issue_number: int) -> str:
    """The lease of the one run allowed per issue."""
    return f"{PREFIX}:issue:{full_name}#{issue_number}"


SETUP_STATE_PREFIX = f"{PREFIX}:setup-state:"


def issue_run_key(full_name: str, issue_number: int) -> str:
    """The run of an issue whose result is not published yet (a trigger resumes it)."""
    return f"{PREFIX}:issue-run:{full_name}#{issue_number}"


def replied_key(full_name: str, number: int, user: str) -> str:
    """Marks that an outsider got the polite reply on this issue or PR (for an hour)."""
    return f"{PREFIX}:replied:{full_name}#{number}:{user}"


def daily_cost_key(account: str, day: str) -> str:
    """Dollars spent by runs of one installation (or account) on one UTC day (YYYY-MM-DD)."""
    return f"{PREFIX}:cost:{account}:{day}"
