"""Names from agents, the command line and HTTP never climb out of their folder."""

from __future__ import annotations

import pytest

from promoter.errors import InvalidNameError
from promoter.names import (
    check_library_name,
    check_run_id,
    is_excluded,
    is_valid_run_id,
    split_relpath,
)


@pytest.mark.parametrize("run_id", ["f3b2a", "A", "run-1.2_x", "a" * 128])
def test_valid_run_ids(run_id: str) -> None:
    """Run ids matching DESIGN §1's pattern are accepted."""
    assert is_valid_run_id(run_id)
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["", ".", "..", ".hidden", "-x", "a/b", "a" * 129, "a b",
                                    "é", "a\x00", "../etc"])
def test_invalid_run_ids(run_id: str) -> None:
    """Anything else is refused with InvalidNameError."""
    assert not is_valid_run_id(run_id)
    with pytest.raises(InvalidNameError):
        check_run_id(run_id)


@pytest.mark.parametrize("name", ["a.png", "plots/a.png", "deep/er/x y.csv", "ünï.txt",
                                  "x" * 255])
def test_valid_relpaths(name: str) -> None:
    """Relative names with subfolders are split into components."""
    assert "/".join(split_relpath(name)) == name


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "a/",
                                  "x" * 256, "a\x00b", ".promoter-tmp", "d/.promoter-x"])
def test_invalid_relpaths(name: str) -> None:
    """Traversal, empty components, NUL, overlong names and promoter's temp prefix are refused."""
    with pytest.raises(InvalidNameError):
        split_relpath(name)


@pytest.mark.parametrize("name", ["", ".x", "..", "a/b", "a\nb", "a\x00", "x" * 256, "tab\there"])
def test_invalid_library_names(name: str) -> None:
    """A library name is one visible component without control characters."""
    with pytest.raises(InvalidNameError):
        check_library_name(name)


def test_library_name_accepts_unicode_and_spaces() -> None:
    """Ordinary names with spaces and unicode are fine."""
    assert check_library_name("Q3 report – final.pdf") == "Q3 report – final.pdf"


def test_excludes_match_any_component() -> None:
    """Exclude globs apply to each component; .promoter- temps are always excluded."""
    pats = [".*", "*.tmp"]
    assert is_excluded(["plots", "a.tmp"], pats)
    assert is_excluded([".git", "x"], pats)
    assert is_excluded([".promoter-123"], [])
    assert not is_excluded(["plots", "a.png"], pats)


def test_split_host_port_is_the_one_parser_of_listen_addresses() -> None:
    """HOST:PORT splits, IPv6 loses its brackets, port 0 only where a free port is wanted."""
    from promoter.names import split_host_port

    assert split_host_port("127.0.0.1:8730") == ("127.0.0.1", 8730)
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port("localhost:0", zero_port=True) == ("localhost", 0)
    for bad in ("nowhere", ":8730", "host:", "host:http", "host:65536", "host:0", "host:-1",
                "host:\u00b2"):  # a superscript two: a digit, but no number int() reads
        with pytest.raises(ValueError, match="HOST:PORT"):
            split_host_port(bad)
