import pytest
from mini_ini import parse_ini

CONFIG = """\
# settings for the app
[server]
host = example.com
Port=8080

; the database
[ database ]
url = postgres://db/app?x=1
password =
"""


def test_sections_and_keys():
    assert parse_ini(CONFIG) == {
        "server": {"host": "example.com", "port": "8080"},
        "database": {"url": "postgres://db/app?x=1", "password": ""},
    }


def test_empty_text():
    assert parse_ini("") == {}
    assert parse_ini("\n  \n# only a comment\n") == {}


def test_quoted_values_and_no_inline_comments():
    text = '[s]\ngreeting = "  hello  "\nnote = a # not a comment\n'
    assert parse_ini(text) == {"s": {"greeting": "  hello  ", "note": "a # not a comment"}}


def test_repeated_section_continues():
    text = "[a]\nx = 1\n[b]\ny = 2\n[a]\nz = 3\n"
    assert parse_ini(text) == {"a": {"x": "1", "z": "3"}, "b": {"y": "2"}}


def test_key_outside_section():
    with pytest.raises(ValueError, match=r"^line 2: key outside of a section$"):
        parse_ini("# top\nname = x\n[s]\n")


def test_bad_section_headers():
    with pytest.raises(ValueError, match=r"^line 3: bad section header$"):
        parse_ini("[ok]\na = 1\n[broken\n")
    with pytest.raises(ValueError, match=r"^line 1: bad section header$"):
        parse_ini("[]\n")


def test_line_without_equals_and_empty_key():
    with pytest.raises(ValueError, match=r"^line 2: expected key = value$"):
        parse_ini("[s]\njust words\n")
    with pytest.raises(ValueError, match=r"^line 3: empty key$"):
        parse_ini("[s]\n\n = value\n")


def test_duplicate_key():
    with pytest.raises(ValueError, match=r"^line 3: duplicate key 'name' in section 's'$"):
        parse_ini("[s]\nname = a\nNAME = b\n")
    with pytest.raises(ValueError, match=r"^line 5: duplicate key 'x' in section 'a'$"):
        parse_ini("[a]\nx = 1\n[b]\n[a]\nx = 2\n")
