"""`evalmem compare` on hand-built runs whose every set size is known, and on real extraction runs."""

import json

import pyarrow.parquet as pq
import pytest

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
                           "easy_every_seed": 10, "teacher_only": 16}
    soft, hard = cmp["students"]["soft"], cmp["students"]["hard"]
    assert (soft["memorized"], soft["easy"], soft["inherited"], soft["neither"]) == (20, 15, 2, 3)
    assert (hard["memorized"], hard["easy"], hard["inherited"], hard["neither"]) == (19, 10, 8, 1)
    assert soft["inheritance_rate"] == 2 / 16 and hard["inheritance_rate"] == 8 / 16
    assert soft["easy_share"] == 15 / 20 and hard["neither_share"] == 1 / 19
    assert cmp["hard_vs_soft"] == {"hard_inherited": 8, "soft_inherited": 2, "ratio": 4.0}
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
    assert "| teacher | teacher | 100 | 31 | 31% |" in (out / "compare.md").read_text()


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
