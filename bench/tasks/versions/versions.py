"""MAJOR.MINOR.PATCH version strings: parse, compare, bump."""

PARTS = ("major", "minor", "patch")


def parse_version(text: str) -> tuple[int, int, int]:
    if not isinstance(text, str):
        raise TypeError(f"version must be a string, not {type(text).__name__}")
    body = text.strip()
    if not body:
        raise ValueError("empty version string")
    if body.startswith("v"):
        body = body[1:]
    parts = body.split(".")
    if len(parts) != 3:
        raise ValueError(f"expected MAJOR.MINOR.PATCH, got {text!r}")
    numbers = []
    for part in parts:
        if not part or not all("0" <= ch <= "9" for ch in part):
            raise ValueError(f"invalid number {part!r} in {text!r}")
        if len(part) > 1 and part.startswith("0"):
            raise ValueError(f"leading zero in {part!r}")
        numbers.append(int(part))
    return numbers[0], numbers[1], numbers[2]


def compare_versions(a: str, b: str) -> int:
    left, right = parse_version(a), parse_version(b)
    return (left > right) - (left < right)


def bump(text: str, part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected major, minor or patch")
    numbers = list(parse_version(text))
    index = PARTS.index(part)
    numbers[index] += 1
    for later in range(index + 1, 3):
        numbers[later] = 0
    return ".".join(str(n) for n in numbers)
