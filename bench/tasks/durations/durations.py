"""Durations such as "1h30m" <-> seconds."""

import re

UNITS = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
_PATTERN = re.compile(r"\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*")


def parse_duration(text: str) -> int:
    match = _PATTERN.fullmatch(text)
    if match is None or not any(match.groups()):
        raise ValueError(f"invalid duration: {text!r}")
    return sum(
        int(amount) * size
        for amount, (_, size) in zip(match.groups(), UNITS, strict=True)
        if amount
    )


def format_duration(seconds: int) -> str:
    if seconds < 0:
        raise ValueError("negative duration")
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in UNITS:
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
