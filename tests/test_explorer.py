"""The example explorer: which rows it embeds (Python), then the page itself in headless Chromium."""

from __future__ import annotations

import json
import random
import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from evalmem.analysis import teacher_sets
from evalmem.explorer import build_rows, explorer_section, script_json, set_href

MODELS = ("teacher", "baseline-seed0", "baseline-seed1", "soft", "hard")
SUFFIX, PREFIX = 10, 8
WORDS = [f" w{i}" for i in range(200)]
SCRIPT, QUOTES, NEWLINE, COMMENT = 200, 201, 202, 203
VOCAB = WORDS + ["<script>alert(1)</script>", '"quotes" & </script>', "\n", "<!--"]
# match_len per model (teacher, seed0, seed1, soft, hard); 10 = exact. Each pattern used 3 times.
PATTERNS = [
    (10, 10, 10, 10, 10),  # easy on every seed
    (10, 10, 3, 10, 10),   # easy on one seed
    (10, 2, 1, 4, 10),     # teacher-only, inherited by hard
    (10, 0, 0, 10, 10),    # teacher-only, inherited by both
    (10, 3, 7, 2, 6),      # teacher-only, not inherited; near for seed1 and hard
    (6, 10, 1, 2, 3),      # baseline only
    (2, 1, 0, 10, 1),      # soft only
    (7, 5, 6, 8, 9),       # near, memorized by none
    (1, 2, 0, 1, 3),       # not near: left out
    (0, 0, 4, 4, 4),       # not near (4 < half of 10): left out
]
N = 3 * len(PATTERNS)
SCRIPT_ID = "ex02"  # pattern 2: in teacher_only and inherited:hard


def example(i: int, rng: random.Random) -> tuple[list, list]:
    if f"ex{i:02d}" == SCRIPT_ID:
        return [5, SCRIPT, 6, QUOTES, NEWLINE, COMMENT, 7, 8], [SCRIPT, 9, QUOTES, 10, 11, 12, 13, 14, 15, 16]
    return [rng.randrange(200) for _ in range(PREFIX)], [rng.randrange(200) for _ in range(SUFFIX)]


def generated(suffix: list, n: int, rng: random.Random) -> list:
    """A greedy continuation matching `n` tokens, then a wrong token, then partly the true ones."""
    if n >= len(suffix):
        return list(suffix)
    tail = [t if rng.random() < 0.4 else rng.randrange(200) for t in suffix[n + 1:]]
    return suffix[:n] + [(suffix[n] + 1) % 200] + tail


@pytest.fixture(scope="module")
def data():
    """Per-model result tables (soft's not decoded), the sets `compare` writes, a risk per example (one missing)."""
    rng = random.Random(0)
    windows = [example(i, rng) for i in range(N)]
    ids = [f"ex{i:02d}" for i in range(N)]
    models = {}
    for m, name in enumerate(MODELS):
        lens = [PATTERNS[i % len(PATTERNS)][m] for i in range(N)]
        gens = [None if name == "soft" else generated(s, n, rng) for (_, s), n in zip(windows, lens)]
        models[name] = pa.table({"example_id": ids, "exact_match": [n == SUFFIX for n in lens], "match_len": lens,
                                 "generated_ids": pa.array(gens, pa.list_(pa.int32())),
                                 "prefix_ids": [p for p, _ in windows], "suffix_ids": [s for _, s in windows]})
    mem = {name: {i for i, e in zip(ids, t["exact_match"].to_pylist()) if e} for name, t in models.items()}
    sets = {k: sorted(v) for k, v in teacher_sets(mem["teacher"], [mem["baseline-seed0"],
                                                                 mem["baseline-seed1"]]).items()}
    sets.update({f"inherited:{s}": sorted(mem[s] & set(sets["teacher_only"])) for s in ("soft", "hard")})
    sets.update({f"memorized:{name}": sorted(m) for name, m in mem.items()})
    risk = {i: rng.random() for i in ids}
    risk["ex05"] = None
    near = {i for i in ids if max(PATTERNS[int(i[2:]) % len(PATTERNS)]) >= SUFFIX / 2}
    return {"models": models, "sets": sets, "risk": risk, "near": near}


def decode(ids):
    return [VOCAB[i] for i in ids]


# ---- which rows (no browser) ----

def test_rows_are_the_near_memorized_most_memorized_first(data):
    rows, left_out = build_rows(data["models"], None, 2000)
    assert {r["id"] for r in rows} == data["near"] and left_out == 0
    best = [max(e[0] for e in r["m"]) for r in rows]
    assert best == sorted(best, reverse=True)


def test_max_examples_keeps_the_most_memorized_and_counts_the_rest(data):
    rows, left_out = build_rows(data["models"], None, 5)
    assert len(rows) == 5 and left_out == len(data["near"]) - 5
    assert all(all(e[1] for e in r["m"]) for r in rows[:3])  # the 3 examples every model memorized come first


def test_a_model_without_a_result_and_without_decoding():
    def table(ids, lens, generated):
        return pa.table({"example_id": ids, "exact_match": [n == 4 for n in lens], "match_len": lens,
                         "generated_ids": pa.array(generated, pa.list_(pa.int32())),
                         "prefix_ids": [[1]] * len(ids), "suffix_ids": [[1, 2, 3, 4]] * len(ids)})
    rows, _ = build_rows({"a": table([1, 2], [3, 4], [None, [1, 2, 3, 4]]), "b": table([2], [0], [[9, 9, 9, 9]])},
                         None, 10)
    assert [r["id"] for r in rows] == [2, 1]
    assert rows[0]["m"] == [[4, 1, []], [0, 0, [9, 9, 9, 9]]] and rows[1]["m"] == [[3, 0, None], None]


def test_script_json_cannot_close_its_element():
    text = script_json({"a": "</script><!-- & >"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!-- & >"}


def test_set_href():
    assert set_href("inherited:hard") == "#explore?set=inherited:hard"
    assert set_href("a b&c", sort="risk") == "#explore?set=a%20b%26c&sort=risk"


# ---- in Chromium ----

@pytest.fixture
def explore(open_page, data, tmp_path):
    """explore(hash="", intro="", **explorer_section kwargs) -> a Page holding the explorer."""
    pages = []

    def open_(hash_="", intro="", models=None, **kwargs):
        args = {"sets": data["sets"], "risk": data["risk"], **kwargs}
        section = explorer_section(models or data["models"], decode, **args)
        path = tmp_path / f"page{len(pages)}.html"
        path.write_text(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>t</title></head>'
                        f"<body>{intro}{section}</body></html>", encoding="utf-8")
        pages.append(path)
        return open_page(path, hash_)

    return open_


def shown(page) -> list[str]:
    return page.eval_on_selector_all("#evx-rows article", "els => els.map(e => e.dataset.id)")


def count(page) -> int:
    return int(re.match(r"\d+", page.text_content("#evx-count")).group())


SETS = ["teacher", "baseline_any_seed", "baseline_every_seed", "easy", "easy_every_seed", "teacher_only",
        "inherited:soft", "inherited:hard", "memorized:soft", "memorized:baseline-seed1"]


def test_all_near_examples_are_listed(explore, data):
    page = explore()
    assert set(shown(page)) == data["near"] and count(page) == len(data["near"])
    assert page.text_content("#evx-note") == ""


@pytest.mark.parametrize("name", SETS)
def test_set_filter_in_the_dropdown(explore, data, name):
    page = explore()
    page.select_option("#evx-set", name)
    ids = shown(page)
    assert set(ids) == set(data["sets"][name]) and len(ids) == len(set(ids)) == count(page)
    assert page.evaluate("location.hash") == set_href(name)  # the view is shareable


@pytest.mark.parametrize("name", ["inherited:hard", "teacher_only", "memorized:hard"])
def test_set_filter_from_a_deep_link(explore, data, name):
    page = explore(set_href(name))
    assert set(shown(page)) == set(data["sets"][name]) and page.input_value("#evx-set") == name


def test_links_within_the_page(explore, data):
    page = explore(intro=f'<a href="{set_href("inherited:hard")}">inherited</a>')
    page.evaluate(f"location.hash = {json.dumps(set_href('easy_every_seed'))}")
    page.wait_for_function("document.getElementById('evx-set').value === 'easy_every_seed'")
    assert set(shown(page)) == set(data["sets"]["easy_every_seed"])
    page.click(f'a[href="{set_href("inherited:hard")}"]')
    page.wait_for_function("document.getElementById('evx-set').value === 'inherited:hard'")
    assert set(shown(page)) == set(data["sets"]["inherited:hard"])


def test_labels_of_the_sets(explore, data):
    page = explore()
    labels = page.eval_on_selector_all("#evx-set option", "os => os.map(o => o.textContent)")
    n = {name: len(ids) for name, ids in data["sets"].items()}
    assert f"inherited by hard (teacher-only) ({n['inherited:hard']})" in labels
    soft = f"memorized by soft ({n['memorized:soft']})"
    assert labels.index(f"teacher only ({n['teacher_only']})") < labels.index(soft)


def test_integer_ids_missing_rows_and_nothing_memorized(explore):
    def table(ids, lens):
        return pa.table({"example_id": ids, "exact_match": [n == 4 for n in lens], "match_len": lens,
                         "generated_ids": [[1, 2, 3, 4][:n] + [9] * (4 - n) for n in lens],
                         "prefix_ids": [[5, 6]] * len(ids), "suffix_ids": [[1, 2, 3, 4]] * len(ids)})
    page = explore(models={"a": table([0, 1, 2], [4, 0, 2]), "b": table([0, 1], [1, 0])},
                   sets={"a_only": [0], "empty": []}, risk=None)
    assert shown(page) == ["0", "2"] and "no result" in page.locator('article[data-id="2"]').text_content()
    page.select_option("#evx-set", "a_only")
    assert shown(page) == ["0"]
    page.select_option("#evx-set", "empty")
    assert shown(page) == [] and page.text_content("#evx-count") == "0 examples"
    page = explore(models={"a": table([7], [1])}, sets={}, risk=None)
    assert shown(page) == [] and page.input_value("#evx-sort") == "rank"


def test_unknown_set_in_a_link_says_so(explore, data):
    page = explore(set_href("no-such-set"))
    assert "No set named" in page.text_content("#evx-note") and set(shown(page)) == data["near"]


def label_len(page, model: str) -> list[int]:
    """The match_len each shown row reports for `model`."""
    index = MODELS.index(model)
    return page.eval_on_selector_all("#evx-rows article", f"""els => els.map(e =>
        parseInt(e.querySelectorAll('.evx-lab')[{index + 2}].textContent.split(' ').pop()))""")


def test_sort_by_match_len_of_a_model(explore, data):
    page = explore()
    page.select_option("#evx-sort", "match_len:baseline-seed1")
    lens = label_len(page, "baseline-seed1")
    table = data["models"]["baseline-seed1"]
    truth = dict(zip(table["example_id"].to_pylist(), table["match_len"].to_pylist()))
    assert lens == sorted(lens, reverse=True) == [truth[i] for i in shown(page)]
    assert len(set(lens)) > 3  # the sort had something to do


def test_sort_by_risk_within_a_set(explore, data):
    page = explore(set_href("teacher", sort="risk"))
    ids = shown(page)
    assert set(ids) == set(data["sets"]["teacher"]) and page.input_value("#evx-sort") == "risk"
    risks = [data["risk"][i] for i in ids]
    known = [r for r in risks if r is not None]
    assert known == sorted(known, reverse=True) and risks[len(known):] == [None] * (len(risks) - len(known))
    page.select_option("#evx-set", "")
    ids = shown(page)
    assert ids[-1] == "ex05" and set(ids) == data["near"]  # no risk: last


def test_script_text_is_shown_as_text(explore, data):
    page = explore(set_href("inherited:hard"))
    row = page.locator(f'article[data-id="{SCRIPT_ID}"]')
    prefix = row.locator(".evx-pre").text_content()
    assert "<script>alert(1)</script>" in prefix and '"quotes" & </script>' in prefix and "<!--" in prefix
    assert row.locator(".evx-txt").nth(1).text_content().startswith("<script>alert(1)</script>")
    assert page.evaluate("document.scripts.length") == 2  # the JSON did not close its element
    assert page.evaluate("document.querySelectorAll('#evx-rows script').length") == 0


def test_highlights_match_and_first_mismatch(explore, data):
    page = explore()
    row = page.locator('article[data-id="ex04"]')  # teacher 10, seed0 3, seed1 7, soft 2 (not decoded), hard 6
    lines = row.locator(".evx-txt")
    assert "exact" in lines.nth(2).text_content() and lines.nth(2).locator(".evx-m").count() == 0  # collapsed
    page.check("#evx-full")
    for k, n in ((2, 10), (3, 3), (4, 7), (6, 6)):
        assert lines.nth(k).locator(".evx-m").count() == n
        assert lines.nth(k).locator(".evx-x").count() == (n < SUFFIX)
    seed0 = data["models"]["baseline-seed0"]
    continuation = seed0.filter(pc.equal(seed0["example_id"], "ex04"))["generated_ids"][0].as_py()
    assert lines.nth(3).text_content() == "".join(decode(continuation))  # the whole continuation, in order
    assert "expected" in lines.nth(3).locator(".evx-x").get_attribute("title")
    soft = lines.nth(5)
    assert soft.locator(".evx-m").count() == 2 and "not decoded" in soft.locator(".evx-nd").text_content()


def test_max_examples_shows_the_count_of_the_rest(explore, data):
    page = explore(max_examples=5)
    assert len(shown(page)) == 5 and f"{len(data['near']) - 5} more not shown" in page.text_content("#evx-note")
    page.select_option("#evx-set", "teacher")
    missing = len(data["sets"]["teacher"]) - len(shown(page))
    assert missing > 0 and f"{missing} more of this set's" in page.text_content("#evx-note")


def test_pages(explore, data):
    page = explore(page_size=10)
    first = shown(page)
    assert len(first) == 10 and page.text_content("#evx-page") == "page 1 of 3" and page.is_disabled("#evx-prev")
    page.click("#evx-next")
    page.click("#evx-next")
    last = shown(page)
    assert page.is_disabled("#evx-next") and len(first) + 10 + len(last) == len(data["near"])
    assert not set(first) & set(last)
