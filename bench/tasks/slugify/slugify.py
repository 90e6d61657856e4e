"""URL slugs from titles."""

import re
import unicodedata


def slugify(text: str, sep: str = "-", max_length: int | None = None) -> str:
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    ascii_text = (
        unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    )
    ascii_text = ascii_text.replace("'", "")
    slug = sep.join(re.findall(r"[a-z0-9]+", ascii_text))
    if max_length is not None:
        slug = slug[:max_length]
        while sep and slug.endswith(sep):
            slug = slug[: -len(sep)]
    return slug
