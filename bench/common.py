"""Helpers shared by the benchmarks: statistics, the report (table + JSON), a throwaway Redis."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# -- statistics -----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else math.inf


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal on one ratio, e.g. `cold / bare <= 1.10`."""

    name: str
    value: float
    op: str  # "<=", "<", ">=" or ">"
    limit: float
    unit: str = "x"

    @property
    def met(self) -> bool:
        return {
            "<=": self.value <= self.limit,
            "<": self.value < self.limit,
            ">=": self.value >= self.limit,
            ">": self.value > self.limit,
        }[self.op]

    def line(self) -> str:
        verdict = "MET" if self.met else "NOT MET"
        return (
            f"target {self.name} {self.op} {fmt(self.limit)}{self.unit}: "
            f"{fmt(self.value)}{self.unit}  {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "unit": self.unit,
            "met": self.met,
        }


@dataclass
class Report:
    """What a benchmark prints: one table, its targets and notes, and the same as JSON."""

    benchmark: str
    baseline: str
    repeat: int
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "baseline": self.baseline,
            "repeat": self.repeat,
            "rows": self.rows,
            "targets": [t.to_dict() for t in self.targets],
            "all_met": all(t.met for t in self.targets),
            "notes": self.notes,
            "environment": environment(),
            **self.extra,
        }

    def print_table(self) -> None:
        print(f"== bench.{self.benchmark}  (baseline: {self.baseline}; repeat={self.repeat})")
        raw = [[row.get(c, "") for c in self.columns] for row in self.rows]
        cells = [[fmt(v) for v in row] for row in raw]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(self.columns)]
        print("  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for values, row in zip(raw, cells, strict=True):
            # Words left, figures right: easier to compare down a column.
            line = [
                text.ljust(w) if isinstance(v, str) else text.rjust(w)
                for v, text, w in zip(values, row, widths, strict=True)
            ]
            print("  ".join(line).rstrip())
        for target in self.targets:
            print(target.line())
        for note in self.notes:
            print(f"note: {note}")

    def emit(self, json_path: str | None) -> dict[str, Any]:
        """Print the table, then the JSON (to stdout, or to `json_path`)."""
        data = self.to_dict()
        self.print_table()
        text = json.dumps(data, indent=2, default=str)
        if json_path:
            Path(json_path).write_text(text + "\n", encoding="utf-8")
            print(f"JSON written to {json_path}")
        else:
            print(text)
        sys.stdout.flush()
        return data


def fmt(value: Any) -> str:
    """Figures with as many digits as a reader compares: 1234, 12.3, 1.23, 0.0123."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def environment() -> dict[str, Any]:
    """Machine facts that explain figures (the load matters on 2 shared cores)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
        "platform": platform.platform(),
    }


def parser(name: str, description: str, *, repeat: int) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has."""
    p = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--repeat", type=int, default=repeat, help="repetitions; figures are medians over them"
    )
    p.add_argument("--json", metavar="PATH", help="write the JSON here instead of to stdout")
    return p


def run_main(body: Callable[[argparse.Namespace], Report], args: argparse.Namespace) -> int:
    """Run a benchmark: 0 whether or not targets are met, 1 only when measuring failed."""
    if args.repeat < 1:
        print("--repeat must be at least 1", file=sys.stderr)
        return 2
    try:
        report = body(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        traceback.print_exc()
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    report.emit(args.json)
    return 0


# -- processes and Redis --------------------------------------------------------------------


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[Any], *, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaps."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
