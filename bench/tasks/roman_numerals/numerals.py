"""Roman numerals, both ways, canonical form only."""

TABLE = [
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
]


def to_roman(number: int) -> str:
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"expected an int, not {type(number).__name__}")
    if not 1 <= number <= 3999:
        raise ValueError(f"{number} is outside 1..3999")
    out = []
    for value, symbol in TABLE:
        count, number = divmod(number, value)
        out.append(symbol * count)
    return "".join(out)


_CANONICAL = {to_roman(n): n for n in range(1, 4000)}


def from_roman(numeral: str) -> int:
    try:
        return _CANONICAL[numeral]
    except (KeyError, TypeError):
        raise ValueError(f"not a Roman numeral: {numeral!r}") from None
