"""A small INI parser with line-numbered errors."""


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]") or not line[1:-1].strip():
                raise ValueError(f"line {number}: bad section header")
            section = line[1:-1].strip()
            result.setdefault(section, {})
            continue
        if "=" not in line:
            raise ValueError(f"line {number}: expected key = value")
        key, _, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not key:
            raise ValueError(f"line {number}: empty key")
        if section is None:
            raise ValueError(f"line {number}: key outside of a section")
        if key in result[section]:
            raise ValueError(f"line {number}: duplicate key '{key}' in section '{section}'")
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        result[section][key] = value
    return result
