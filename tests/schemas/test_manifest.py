"""The manifest's rules: what a class name or video id may hold (names are data, never paths) and WebDataset keys."""

from __future__ import annotations

import pytest

from schemas.manifest import name_problem, safe_key


@pytest.mark.parametrize(
    "name, problem",
    [
        ("abseiling", None),
        ("air drumming", None),
        ("crème brûlée", None),
        ("a..b", None),
        ("", "is empty"),
        (".", "a folder's alias"),
        ("..", "a folder's alias"),
        ("a/b", "'/', a path separator"),
        ("a\\b", "a path separator"),
        ("ok\x00bad", "the control character U+0000"),
        ("tab\there", "the control character U+0009"),
        ("a\x85b", "the control character U+0085"),
        ("a\u2028b", "the line separator U+2028"),
        ("A\u202eB", "the invisible format character U+202E"),
        ("\ufeffB", "the invisible format character U+FEFF"),
        ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", None),  # Persian, with a zero-width non-joiner
        ("x" * 256, "256 bytes long"),
        ("é" * 128, "256 bytes long"),
    ],
)
def test_the_name_check(name, problem):
    found = name_problem(name)
    assert found == problem if problem is None else problem in found


@pytest.mark.parametrize(
    "stem, key",
    [
        ("v_YoYo_g01_c01", "v_YoYo_g01_c01"),
        ("clip 1.part", "clip_1_part"),
        ("a..b  c", "a_b_c"),
        ("a\x00\x1bb\u202ec", "a_b_c"),
        ("é", "é"),
    ],
)
def test_safe_key_replaces_separators_spaces_and_forbidden_characters(stem, key):
    assert safe_key(stem) == key and name_problem(key) is None
