"""`evalmem compare` on hand-built runs whose every set size is known, and on real extraction runs."""

import json

import pyarrow.parquet as pq
import pytest

from evalmem import stats
from helpers import IDS, compare_args, members, write_run

@pytest.fixture
def runs(tmp_path):
    return {name: write_run(tmp_path / name, IDS, members(name), model=name)
            for name in ("teacher", "b0", "b1", "soft", "hard")}


def test_compare_counts_every_region(invoke, runs, tmp_path):
    out = tmp_path / "cmp"
    result = invoke(*compare_args(runs, out))
    assert "| soft | 20 | 15 | 2 | 3 |" in result.output  # the Markdown table on stdout
    cmp = json.loads((out / "compare.json").read_text())
    assert cmp["n_examples"] == 100
    assert {n: r["exact_match_count"] for n, r in cmp["runs"].items()} == \
        {"teacher": 31, "b0": 19, "b1": 17, "soft": 20, "hard": 19}
    assert cmp["runs"]["teacher"]["exact_match_rate"] == 0.31
    assert cmp["runs"]["b0"]["mean_token_accuracy"] == pytest.approx((19 + 0.2 * 81) / 100)
    assert cmp["sets"] == {"teacher": 31, "baseline_any_seed": 22, "baseline_every_seed": 14, "easy": 15,
                           "easy_every_seed": 10, "teacher_only": 16, "saturated": 10}
    assert cmp["regime"]["saturated_share"] == 10 / 31 and not cmp["regime"]["at_margin"]  # 31% memorized
    soft, hard = cmp["students"]["soft"], cmp["students"]["hard"]
    assert (soft["memorized"], soft["easy"], soft["inherited"], soft["neither"]) == (20, 15, 2, 3)
    assert (hard["memorized"], hard["easy"], hard["inherited"], hard["neither"]) == (19, 10, 8, 1)
    assert soft["inheritance_rate"] == 2 / 16 and hard["inheritance_rate"] == 8 / 16
    assert soft["easy_share"] == 15 / 20 and hard["neither_share"] == 1 / 19
    h = cmp["hard_vs_soft"]
    assert (h["hard_inherited"], h["soft_inherited"], h["ratio"]) == (8, 2, 4.0)
    table = {k: h["paired"][k] for k in ("n", "both", "a_only", "b_only", "neither")}
    assert table == {"n": 16, "both": 2, "a_only": 6, "b_only": 0, "neither": 8}  # on the 16 teacher-only
    assert h["paired"]["p_value"] == pytest.approx(2 / 2**6)  # all 6 discordant examples on the hard side
    assert h["ratio_interval"] == stats.ratio(table) and h["ratio_interval"]["low"] > 1
    pairs = {(o["a"], o["b"]): o for o in cmp["overlaps"]}
    assert len(pairs) == 10
    assert pairs["teacher", "soft"] == {"a": "teacher", "b": "soft", "intersection": 17, "jaccard": 0.5,
                                        "overlap_coefficient": 17 / 20}
    assert pairs["b0", "b1"]["intersection"] == 14
    assert pairs["b0", "b1"]["jaccard"] == 14 / 22
    sets = json.loads((out / "sets.json").read_text())
    assert sets["inherited:soft"] == ["e15", "e16"]
    assert sets["memorized:hard"] == sorted(members("hard")) and sets["neither:hard"] == ["e38"]
    assert len(sets["easy:soft"]) == 15 and set(sets["easy:hard"]) == {f"e{i}" for i in range(10)}
    assert cmp["runs"]["teacher"]["dir"] == str((tmp_path / "teacher").resolve())
    assert sets["easy_every_seed"] == sorted(f"e{i}" for i in range(10))
    for name in ("rates.png", "overlap.png", "token_accuracy.png", "students.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    low, high = stats.wilson(31, 100)
    row = f"| teacher | teacher | 100 | 31 | 31% [{100 * low:.3g}, {100 * high:.3g}] |"
    assert row in (out / "compare.md").read_text()
    assert cmp["runs"]["teacher"]["exact_match_interval"] == {"low": low, "high": high}


@pytest.mark.parametrize("teacher, saturated, n, at_margin", [
    (100, 30, 2048, True), (100, 31, 2048, False), (20, 0, 2048, False), (200, 10, 2048, True),
    (205, 10, 2048, False), (100, 10, 2000, False)])
def test_the_margin_criterion_on_planted_sets(invoke, tmp_path, teacher, saturated, n, at_margin):
    """At the margin: the teacher memorizes 1-10% of at least 2,048 examples, at most 30% of it memorized by all."""
    ids = [f"x{i}" for i in range(n)]
    every = {f"x{i}" for i in range(saturated)}
    runs = {"teacher": {f"x{i}" for i in range(teacher)}, "b0": every | {"x1999"}, "b1": every | {f"x{saturated}"},
            "soft": every | {f"x{saturated}"}, "hard": every}  # x{saturated}: memorized by all but b0 and hard
    dirs = {name: write_run(tmp_path / name, ids, m) for name, m in runs.items()}
    invoke(*compare_args(dirs, tmp_path / "cmp"))
    found = json.loads((tmp_path / "cmp" / "compare.json").read_text())["regime"]
    assert (found["saturated"], found["teacher_rate"], found["at_margin"]) == (saturated, teacher / n, at_margin)


def test_paired_tests_between_every_two_runs(invoke, runs, tmp_path):
    invoke(*compare_args(runs, tmp_path / "cmp"))
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    tests = {(t["a"], t["b"]): t for t in cmp["paired"]}
    assert len(tests) == 10 and cmp["statistics"]["adjustment"].startswith("Holm")
    soft_b0 = tests["b0", "soft"]  # b0: e0-e14, e34-e37; soft: e0-e16, e31-e33
    assert (soft_b0["both"], soft_b0["a_only"], soft_b0["b_only"], soft_b0["neither"]) == (15, 4, 5, 76)
    assert soft_b0["p_value"] == 1.0 and not soft_b0["distinguishable"]
    assert soft_b0["difference"]["estimate"] == pytest.approx(-0.01)
    teacher_b1 = tests["teacher", "b1"]  # teacher: e0-e30; b1: e0-e9, e31-e37
    assert (teacher_b1["a_only"], teacher_b1["b_only"]) == (21, 7)
    assert teacher_b1["p_value"] == pytest.approx(stats.mcnemar(21, 7))
    assert [t["p_holm"] for t in cmp["paired"]] == pytest.approx(stats.holm([t["p_value"] for t in cmp["paired"]]))
    assert "| b0 | soft | 4 | 5 | -1 pp" in (tmp_path / "cmp" / "compare.md").read_text()


def checkpoints(root, memorized_by_step, fingerprint="sha256:test-data"):
    """Hand-built runs of checkpoint-STEP models, each memorizing the given examples."""
    return [write_run(root / f"checkpoint-{step}", IDS, m, model=f"ckpt/checkpoint-{step}",
                      data_fingerprint=fingerprint) for step, m in memorized_by_step.items()]


def test_series_gives_the_planted_onset_and_forgetting(invoke, runs, tmp_path):
    planted = {10: {"e0", "e1", "e20"}, 20: {"e1", "e2", "e3", "e20"}, 30: {"e2", "e3", "e4", "e20", "e21"}}
    checkpoints(tmp_path / "teacher-series", planted)
    out = tmp_path / "cmp"
    invoke(*compare_args(runs, out), "--series", f"teacher={tmp_path / 'teacher-series'}")
    series = json.loads((out / "compare.json").read_text())["series"]["teacher"]
    assert [p["step"] for p in series] == [10, 20, 30]
    assert [p["exact_match_count"] for p in series] == [3, 4, 5]
    assert [(p.get("onset"), p.get("forgotten")) for p in series] == [(None, None), (2, 1), (2, 1)]
    assert series[2]["p_value"] == 1.0 and series[0]["exact_match_interval"] == dict(zip(("low", "high"),
                                                                                           stats.wilson(3, 100)))
    assert [p["teacher_only"] for p in series] == [1, 1, 2]  # e20, e21: teacher-only (the teacher has e15-e30)
    sets = json.loads((out / "sets.json").read_text())
    assert sets["onset:teacher@20"] == ["e2", "e3"] and sets["forgotten:teacher@20"] == ["e0"]
    assert sets["onset:teacher@30"] == ["e21", "e4"] and sets["forgotten:teacher@30"] == ["e1"]
    assert (out / "training.png").exists() and (out / "training_teacher_only.png").exists()
    md = (out / "compare.md").read_text()
    assert "Memorization over training: teacher" in md and "| 20 | – | 4 | 4% [" in md


def test_series_steps_from_trainer_state_and_revisions(invoke, tmp_path):
    """A checkpoint's step: its model's trainer_state.json, else a hub revision stepN, else checkpoint-N."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "trainer_state.json").write_text(json.dumps({"global_step": 64, "epoch": 2.0}))
    a = write_run(tmp_path / "a", IDS, {"e0"}, model=str(model))
    b = write_run(tmp_path / "b", IDS, {"e0", "e1"}, model="org/pythia")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["settings"]["revision"] = "step143000"
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    invoke("compare", "--series", f"m={a},{b}", "--out", tmp_path / "cmp")
    series = json.loads((tmp_path / "cmp" / "compare.json").read_text())["series"]["m"]
    assert [(p["step"], p["epoch"]) for p in series] == [(64, 2.0), (143000, None)]


@pytest.mark.parametrize("case, words", [
    ("other data", ["differ in data_fingerprint"]),
    ("out of order", ["not in training order"]),
    ("one checkpoint", ["at least two"]),
    ("no name", ["--series takes NAME=DIR"]),
    ("not runs", ["neither a run directory nor a folder of checkpoint-N"]),
])
def test_bad_series_is_one_line_exit_2(invoke, runs, tmp_path, case, words):
    root = tmp_path / "s"
    first, second = checkpoints(root, {10: {"e0"}, 20: {"e1"}})
    spec = {"other data": f"t={first},{checkpoints(tmp_path / 'o', {30: set()}, 'sha256:other')[0]}",
            "out of order": f"t={second},{first}", "one checkpoint": f"t={first}", "no name": f"{first},{second}",
            "not runs": f"t={tmp_path}"}[case]
    one_line_error(invoke(*compare_args(runs, tmp_path / "cmp"), "--series", spec, code=2), *words)
    assert not (tmp_path / "cmp" / "compare.json").exists()


def test_compare_joins_on_the_shared_ids(invoke, tmp_path):
    """Runs over different but overlapping slices are compared on the examples all of them hold."""
    a = write_run(tmp_path / "a", IDS[:60], {"e1", "e2", "e55"})
    b = write_run(tmp_path / "b", IDS[40:][::-1], {"e2", "e55", "e90"})
    invoke("compare", "--run", a, "--run", b, "--out", tmp_path / "cmp")
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert cmp["n_examples"] == 20
    assert cmp["runs"]["a"]["exact_match_count"] == 1 and cmp["runs"]["b"]["exact_match_count"] == 1
    assert cmp["overlaps"][0]["intersection"] == 1 and "sets" not in cmp


def test_single_baseline_any_equals_every(invoke, runs, tmp_path):
    invoke("compare", "--teacher", runs["teacher"], "--baseline", runs["b0"], "--student", f"soft={runs['soft']}",
           "--out", tmp_path / "cmp")
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert cmp["sets"]["easy"] == cmp["sets"]["easy_every_seed"] == 15
    assert cmp["sets"]["teacher_only"] == 16 and "hard_vs_soft" not in cmp
    assert cmp["students"]["soft"]["inherited"] == 2 and "baseline" in cmp["runs"]


def one_line_error(result, *words):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("case, words", [
    ("disjoint", ["share no example_id"]),
    ("missing", ["no such run directory"]),
    ("incomplete", ["not a complete evalmem run", "summary.json"]),
    ("other data", ["data_fingerprint", "different data or protocol"]),
    ("other protocol", ["suffix_len"]),
    ("student alone", ["--student needs --teacher"]),
    ("same names", ["names must differ"]),
])
def test_bad_input_is_one_line_exit_2(invoke, runs, tmp_path, case, words):
    other = tmp_path / "other"
    if case == "disjoint":
        write_run(other, [f"x{i}" for i in range(10)], set())
    elif case == "incomplete":
        write_run(other, IDS, set())
        (other / "summary.json").unlink()
    elif case == "other data":
        write_run(other, IDS, set(), data_fingerprint="sha256:other")
    elif case == "other protocol":
        write_run(other, IDS, set(), suffix_len=32)
    args = {"student alone": ["--student", f"soft={runs['soft']}", "--run", runs["b0"]],
            "same names": ["--run", runs["b0"], "--run", f"b0={runs['b1']}"]}.get(
        case, ["--teacher", runs["teacher"], "--baseline", other])
    result = invoke("compare", *args, "--out", tmp_path / "cmp", code=2)
    one_line_error(result, *words)
    assert not (tmp_path / "cmp" / "compare.json").exists()


def test_compare_real_extraction_runs(invoke, tiny_runs, tmp_path):
    """Runs written by `evalmem extract` join: the memorizing model against its untrained base."""
    out = tmp_path / "cmp"
    invoke("compare", "--teacher", tiny_runs.model, "--baseline", tiny_runs.base, "--out", out)
    cmp = json.loads((out / "compare.json").read_text())
    model = pq.read_table(f"{tiny_runs.model}/results.parquet").to_pydict()
    base = pq.read_table(f"{tiny_runs.base}/results.parquet").to_pydict()
    m_model = {i for i, hit in zip(model["example_id"], model["exact_match"]) if hit}
    m_base = {i for i, hit in zip(base["example_id"], base["exact_match"]) if hit}
    assert cmp["n_examples"] == 64
    assert cmp["runs"]["teacher"]["exact_match_count"] == len(m_model) >= 16
    assert cmp["sets"]["easy"] == len(m_model & m_base)
    assert cmp["sets"]["teacher_only"] == len(m_model - m_base)
    assert m_model <= {f"w{i}" for i in range(32)}  # only trained windows are memorized


def test_memorization_by_copy_count(invoke, runs, tmp_path):
    """compare --counts: each model's memorized / examples per suffix_count bucket of `evalmem dupcount`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = tmp_path / "counts"
    counts.mkdir()
    copies = [1 + (i % 20) for i in range(100)]  # e0: 1, e1: 2, ..., e19: 20, e20: 1, ...
    pq.write_table(pa.table({"example_id": IDS, "suffix_count": copies, "window_count": copies}),
                   counts / "counts.parquet")
    settings = {"command": "dupcount", "data_fingerprint": "sha256:test-data", "prefix_len": 50, "suffix_len": 50}
    (counts / "manifest.json").write_text(json.dumps({"settings": settings}))
    (counts / "summary.json").write_text("{}")
    invoke(*compare_args(runs, tmp_path / "cmp"), "--counts", counts)
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    teacher = cmp["by_copies"]["teacher"]
    assert list(teacher) == ["1", "2-3", "4-7", "8-15", "16+"]
    assert sum(c["n"] for c in teacher.values()) == 100 and teacher["1"]["n"] == 5 and teacher["16+"]["n"] == 25
    members_by = {b: sum(f"e{i}" in members("teacher") for i in range(100) if lo <= copies[i] <= (hi or 99))
                  for b, (lo, hi) in zip(teacher, ((1, 1), (2, 3), (4, 7), (8, 15), (16, None)))}
    assert {b: c["memorized"] for b, c in teacher.items()} == members_by
    assert (tmp_path / "cmp" / "copies.png").exists()
    bad = dict(settings, prefix_len=32)
    (counts / "manifest.json").write_text(json.dumps({"settings": bad}))
    assert "differ in prefix_len" in invoke(*compare_args(runs, tmp_path / "c2"), "--counts", counts, code=2).output
