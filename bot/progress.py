"""Showing a run's progress in the terminal: rich when a TTY, plain lines otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.status import Status
from rich.text import Text

from bot.agent.loop import Budget, Iteration
from bot.pricing import usd


def iteration_line(it: Iteration, budget: Budget) -> str:
    """`[2/8] write_file roman.py → 3 passed, 1 failed (0.31s) · 4.2s · 1,234 tokens`."""
    if it.tests is not None:
        outcome = it.tests.summary()
        if it.note.startswith("finish refused"):
            outcome = f"refused, {outcome}"
    else:
        outcome = it.note if len(it.note) <= 60 else it.note[:57] + "..."
    replay = " (replayed)" if it.replayed else ""
    cost = f" · {usd(it.cost)}" if it.cost else ""
    return (
        f"[{it.number}/{budget.max_iterations}] {it.action} → {outcome} · "
        f"{it.seconds:.1f}s · {it.tokens:,} tokens{cost}{replay}"
    )


class TerminalReporter:
    """Prints each iteration as it finishes; a spinner shows the one in flight on a TTY."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._status: Status | None = None

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def iteration_started(self, number: int, budget: Budget) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        self._status = self.console.status(
            f"iteration {number}/{budget.max_iterations}: thinking and testing…"
        )
        self._status.start()

    def iteration_done(self, iteration: Iteration, budget: Budget) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self.quiet:
            return
        style = ""
        if iteration.tests is not None:
            style = "green" if iteration.tests.ok else "red"
        self.console.print(Text(iteration_line(iteration, budget), style=style), highlight=False)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
