"""The report's findings in words: each comparison with its paired test and verdict, the margin of memorization,
inheritance ratios (bounded or not), what a run's mode did not compute; sentences only where there are numbers."""

import json

from helpers import IDS, compare_args, invoke_cli, members, write_run

from evalmem import stats
from evalmem.findings import findings, mode_note, relative


def comparison(tmp_path, mode="decode", memorized=members):
    dirs = {name: write_run(tmp_path / name, IDS, memorized(name), mode=mode)
            for name in ("teacher", "b0", "b1", "soft", "hard")}
    invoke_cli(*compare_args(dirs, tmp_path / "cmp"))
    return json.loads((tmp_path / "cmp" / "compare.json").read_text())


def test_relative_to_the_baselines():
    assert relative(0.02, 0.04) == "50% less than the baselines' mean"
    assert relative(0.08, 0.04) == "2 times the baselines' mean"
    assert relative(0.01, 0.0) == "against baselines that memorize nothing"


def test_sentences_say_each_comparison_in_words(tmp_path):
    result = comparison(tmp_path)
    text = {figure: sentence for sentence, figure in findings(result, None, None)}
    assert list(text) == ["rates.png", None, "students.png", "overlap.png", "copies.png"]
    assert "teacher reproduces 31% [" in text["rates.png"]
    assert "Holm-adjusted over all 10 pairs" in text[None] and "against b1 (Holm p = " in text[None]
    # REGIONS: e0-e9 memorized by every model, of the teacher's 31
    share = stats.rate(10, 31)
    assert f"({100 * share['estimate']:.3g}% [{100 * share['low']:.3g}, {100 * share['high']:.3g}]) are memorized " \
           "by every model: not at the margin" in text["copies.png"]
    assert "the hard student inherits 4 [" in text["overlap.png"] and "McNemar p = 0.031: distinguishable" in \
        text["overlap.png"]


def test_unbounded_inheritance_ratio_is_a_lower_bound(tmp_path):
    def memorized(name):  # the soft student inherits none of the teacher-only examples e15-e30
        return members(name) - {"e15", "e16"} if name == "soft" else members(name)

    sentence = dict((f, s) for s, f in findings(comparison(tmp_path, memorized=memorized), None, None))["overlap.png"]
    assert "the hard student inherits at least " in sentence and "(95% lower bound; it inherited none)" in sentence


def test_mode_note_names_the_runs_that_computed_less(tmp_path):
    result = comparison(tmp_path, mode="verify")
    note = mode_note(result)
    assert note.count('class="note"') == 1 and note.startswith('<p class="note">teacher, b0, b1, soft and hard: ')
    assert "<code>--mode verify</code>" in note and mode_note(comparison(tmp_path / "d")) == ""
