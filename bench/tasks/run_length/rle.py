"""Run-length encoding: "aaabcc" <-> "3a1b2c"."""

import itertools
import re

_RUN = re.compile(r"(\d+)(\D)")


def encode(text: str) -> str:
    if any(ch.isdigit() for ch in text):
        raise ValueError("cannot encode text that contains a digit")
    return "".join(f"{len(list(group))}{ch}" for ch, group in itertools.groupby(text))


def decode(encoded: str) -> str:
    out = []
    pos = 0
    while pos < len(encoded):
        match = _RUN.match(encoded, pos)
        if match is None:
            raise ValueError(f"malformed run at position {pos} in {encoded!r}")
        count = int(match.group(1))
        if count == 0:
            raise ValueError(f"zero-length run at position {pos} in {encoded!r}")
        out.append(match.group(2) * count)
        pos = match.end()
    return "".join(out)
