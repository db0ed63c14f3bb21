"""`evalmem report`: one self-contained HTML page from compare and predict results, read as HTML and in
headless Chromium (the explorer's deep links, filters and escaping on a real report)."""

import base64
import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import IDS, compare_args, invoke_cli, members, write_features, write_run
from evalmem import stats
from evalmem.explorer import set_href
from evalmem.figures import ALT
from evalmem.tables import pct_ci

SCRIPT = "<script>alert(1)</script>"
SCRIPT_ID = "e17"  # teacher-only, inherited by hard
MODELS = ("teacher", "b0", "b1", "soft", "hard")


def make_runs(root, windows=None, tokenizer="nowhere", mode="decode"):
    """Five hand-built runs (helpers.REGIONS) and their comparison; the teacher's model names `tokenizer`."""
    runs = {name: write_run(root / name, IDS, members(name), model=tokenizer if name == "teacher" else name,
                            windows=windows, mode=mode) for name in MODELS}
    invoke_cli(*compare_args(runs, root / "cmp"))
    return runs


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """KJV windows under a locally trained tokenizer (one prefix holding a script element), the five runs,
    their comparison, a predictor of the hard student's memorization, and the report."""
    from evalmem.tiny import kjv_verses, token_windows, train_tokenizer

    root = tmp_path_factory.mktemp("report")
    tokenizer = train_tokenizer(kjv_verses()[:2000], root / "tokenizer", vocab_size=512)
    windows = [(w[:50], w[50:]) for w in token_windows(kjv_verses()[:2000], tokenizer, 100)[:len(IDS)]]
    i = IDS.index(SCRIPT_ID)
    script = tokenizer(f'{SCRIPT} & "quotes" <!-- ', add_special_tokens=False)["input_ids"]
    windows[i] = ((script + windows[i][0])[:50], windows[i][1])
    runs = make_runs(root, windows, str(root / "tokenizer"))
    x = np.random.default_rng(0).normal(size=(len(IDS), 4))
    x[:, 0] += 6 * np.array([i in members("hard") for i in IDS])
    feats = write_features(root / "feats", IDS, x)
    invoke_cli("predict", "--features", feats, "--labels", runs["hard"], "--out", root / "pred", "--trials", 5)
    out = root / "report.html"
    invoke_cli("report", "--compare", root / "cmp", "--predict", root / "pred", "--out", out)
    return SimpleNamespace(root=root, out=out, page=out.read_text(), tokenizer=tokenizer, windows=windows,
                           sets=json.loads((root / "cmp" / "sets.json").read_text()))


def figures(page: str) -> list[tuple[str, str]]:
    """The page's images as (figure file, base64 data), the file known by its alternative text."""
    names = {text: name for name, text in ALT.items()}
    return [(names[html.unescape(alt)], data)
            for alt, data in re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)]


def test_a_verify_run_report_draws_only_figures_with_data(tmp_path):
    """--mode verify computes no approximate matches and no token accuracy: no figure of them, one line saying so."""
    make_runs(tmp_path, mode="verify")
    invoke_cli("report", "--compare", tmp_path / "cmp", "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert [name for name, _ in figures(page)] == ["rates.png", "students.png", "overlap.png"]
    assert page.count('class="note"') == 1 and "extracted with <code>--mode verify</code>" in page
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert cmp["figures"] == ["rates.png", "overlap.png", "students.png"]
    assert all(r["approx_match_rate"] is None and r["approx_match_interval"] is None for r in cmp["runs"].values())


def embedded(page: str) -> dict:
    """The explorer's data in a report."""
    return json.loads(re.search(r'<script type="application/json" id="evx-data">(.*?)</script>', page, re.S)[1])


def test_report_begins_with_the_headline_and_embeds_everything(experiment, tmp_path):
    page = experiment.page
    images = figures(page)
    assert [name for name, _ in images] == ["rates.png", "students.png", "overlap.png", "roc.png",
                                            "token_accuracy.png", "pr.png", "coefficients.png"]
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing outside the page
    order = [page.index(f'id="{part}"') for part in ("headline", "figures", "explore", "details")]
    assert order == sorted(order) and page.index("Summary (the paper") < page.index("<img")
    rate = pct_ci(0.19, dict(zip(("low", "high"), stats.wilson(19, 100))))
    hard = f'<tr><td>hard</td><td>student</td><td><a href="{set_href("memorized:hard")}">19</a></td><td>{rate}</td>'
    assert hard + f'<td><a href="{set_href("easy:hard")}">10</a></td>' in page
    assert f'<a href="{set_href("inherited:hard")}">8</a>' in page.split('id="figures"')[0]
    interval = stats.ratio({"n": 16, "both": 2, "a_only": 6, "b_only": 0, "neither": 8})
    assert f"the hard student inherits 4 [{interval['low']:.3g}, {interval['high']:.3g}] times as many" in page
    assert "McNemar p = 0.031: distinguishable" in page  # 6 of 6 discordant teacher-only examples: 2 / 2**6
    assert "soft memorizes 1.11 times the baselines' mean: +1 pp [" in page
    assert "against b0 (Holm p = 1: not distinguishable)" in page
    assert "Predictor at the real base rate" in page and "kl_teacher_baseline" in page
    auc = json.loads((experiment.root / "pred" / "predict.json").read_text())["intervals"]["roc_auc"]
    assert f"ROC-AUC {auc['estimate']:.3g} [{auc['low']:.3g}, {auc['high']:.3g}]" in page  # the bootstrap interval
    assert SCRIPT not in page  # the training text travels escaped
    data = embedded(page)
    assert len(data["rows"]) == 39 and data["left_out"] == 0 and data["has_risk"]  # e0..e38: memorized by some model

    invoke_cli("report", "--compare", experiment.root / "cmp", "--out", tmp_path / "plain.html")
    plain = (tmp_path / "plain.html").read_text()
    assert len(re.findall("data:image/png", plain)) == 4 and not embedded(plain)["has_risk"]


def test_max_examples_embeds_the_most_memorized(experiment, tmp_path):
    invoke_cli("report", "--compare", experiment.root / "cmp", "--max-examples", 3, "--out", tmp_path / "r.html")
    data = embedded((tmp_path / "r.html").read_text())
    assert [r["id"] for r in data["rows"]] == ["e0", "e1", "e2"] and data["left_out"] == 36
    assert {s["name"]: s["n"] for s in data["sets"]}["teacher"] == 31  # sets keep their full size


def shown(page) -> set:
    return set(page.eval_on_selector_all("#evx-rows article", "els => els.map(e => e.dataset.id)"))


def test_headline_links_and_filters_in_a_browser(experiment, open_page):
    page = open_page(experiment.out)
    page.click(f'#headline a[href="{set_href("inherited:hard")}"]')  # the hard student's "inherited 8"
    page.wait_for_function("document.getElementById('evx-set').value === 'inherited:hard'")
    assert shown(page) == set(experiment.sets["inherited:hard"]) and len(shown(page)) == 8
    for name in ("teacher_only", "easy", "memorized:soft", "easy:soft", "neither:hard"):
        page.select_option("#evx-set", name)
        assert shown(page) == set(experiment.sets[name]), name
    page.select_option("#evx-sort", "risk")
    assert page.input_value("#evx-sort") == "risk" and shown(page) == set(experiment.sets["neither:hard"])


def test_training_text_is_shown_as_text(experiment, open_page):
    page = open_page(experiment.out, set_href("inherited:hard"))
    row = page.locator(f'article[data-id="{SCRIPT_ID}"]')
    prefix = row.locator(".evx-pre").text_content()
    assert prefix.startswith(f'{SCRIPT} & "quotes" <!-- ')
    prefix_ids, suffix_ids = experiment.windows[IDS.index(SCRIPT_ID)]
    assert row.locator(".evx-txt").nth(1).text_content() == experiment.tokenizer.decode(suffix_ids).replace("\n", "↵")
    assert page.evaluate("document.scripts.length") == 2  # the explorer's data and code: nothing from the text
    assert page.evaluate("document.body.innerText").count(SCRIPT) == 1


def test_without_a_tokenizer_the_page_shows_token_ids(tmp_path, open_page):
    make_runs(tmp_path)  # the teacher's model is "nowhere"
    invoke_cli("report", "--compare", tmp_path / "cmp", "--out", tmp_path / "r.html")
    page = open_page(tmp_path / "r.html", set_href("memorized:hard"))
    assert "No tokenizer could be loaded" in page.text_content("#explore")
    assert page.locator('article[data-id="e38"] .evx-pre').text_content().startswith("⟨0⟩⟨1⟩⟨2⟩")
    assert len(shown(page)) == 19


def test_unreadable_results_leave_the_explorer_out(tmp_path):
    runs = make_runs(tmp_path)
    (Path(runs["soft"]) / "results.parquet").unlink()
    invoke_cli("report", "--compare", tmp_path / "cmp", "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "results could not be read" in page and "Summary (the paper" in page


def test_report_bad_input(invoke, tmp_path):
    result = invoke("report", "--compare", tmp_path / "nowhere", "--out", tmp_path / "r.html", code=2)
    assert result.output.startswith("Error: no compare.json in") and result.output.count("\n") == 1
    assert not (tmp_path / "r.html").exists()
    result = invoke("report", "--compare", tmp_path, "--max-examples", -1, "--out", tmp_path / "r.html", code=2)
    assert "--max-examples" in result.output
