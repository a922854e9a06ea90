"""The names some hosts cannot hold: Windows' reserved and refused names, and paths that differ only
in case (format/paths.py; a restore applies them where they matter)."""

from __future__ import annotations

import pytest

from ckpt_sync.format.paths import case_collisions, windows_component_problem, windows_path_problem


@pytest.mark.parametrize(
    "name",
    [
        "CON", "con", "PRN", "AUX", "NUL", "nul.txt", "COM1", "com9.pt", "LPT1", "lpt9.tar.gz", "CON .txt",
        "model.", "model ", "a<b", "a>b", 'say"', "a|b", "what?", "star*", "tab\tname", "bell\x07",
    ],
)  # fmt: skip
def test_a_name_windows_cannot_hold_is_named_with_why(name):
    problem = windows_component_problem(name)
    assert problem is not None
    assert problem == windows_component_problem(name)  # a pure function
    assert windows_path_problem(f"folder/{name}").startswith(f"{name!r}: ")


@pytest.mark.parametrize(
    "name", ["model.pt", "CONSOLE", "console.log", "COM10", "LPT0", "nullable", "AUX_head.pt", ".hidden", "a.b.c"]
)
def test_ordinary_names_pass(name):
    assert windows_component_problem(name) is None
    assert windows_path_problem(f"shard/{name}") is None


def test_the_first_bad_component_of_a_path_is_named():
    problem = windows_path_problem("ok/aux/model.pt")
    assert problem == "'aux': AUX is a device name on Windows, with or without an extension"
    assert windows_path_problem("ok/fine/model.pt") is None


def test_paths_that_differ_only_in_case_collide():
    assert case_collisions(["Model.pt", "model.pt"]) == [("Model.pt", "model.pt")]
    assert case_collisions(["a/x.pt", "b/x.pt", "a/X.PT"]) == [("a/x.pt", "a/X.PT")]


def test_folders_that_differ_only_in_case_collide_once():
    assert case_collisions(["Shard/a.pt", "shard/b.pt", "shard/c.pt"]) == [("Shard", "shard")]


def test_unicode_forms_of_one_name_collide():
    composed, decomposed = "caf\u00e9.pt", "cafe\u0301.pt"
    assert case_collisions([composed, decomposed]) == [(composed, decomposed)]


def test_distinct_paths_do_not_collide():
    assert case_collisions(["model.pt", "model.pt.bak", "optim/state.pt", "optim2/state.pt"]) == []
