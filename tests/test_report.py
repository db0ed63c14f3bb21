"""`evalmem report`: one self-contained HTML page from compare and predict results."""

import base64
import re

import numpy as np

from helpers import IDS, compare_args, members, write_features, write_run


def test_report_embeds_tables_and_figures(invoke, tmp_path):
    runs = {name: write_run(tmp_path / name, IDS, members(name), model=name)
            for name in ("teacher", "b0", "b1", "soft", "hard")}
    invoke(*compare_args(runs, tmp_path / "cmp"))
    x = np.random.default_rng(0).normal(size=(100, 4))
    x[:, 0] += 6 * np.array([i in members("hard") for i in IDS])
    feats = write_features(tmp_path / "feats", IDS, x)
    invoke("predict", "--features", feats, "--labels", runs["hard"], "--out", tmp_path / "pred", "--trials", 5)
    out = tmp_path / "report.html"
    invoke("report", "--compare", tmp_path / "cmp", "--predict", tmp_path / "pred", "--out", out)
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # rates, overlap, token accuracy, students, coefficients
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    assert "<tr><td>soft</td><td>20</td><td>15</td><td>2</td><td>3</td>" in page
    assert "<tr><td>8</td><td>2</td><td>4</td></tr>" in page  # hard vs soft
    assert "Predictor at the real base rate" in page and "kl_teacher_baseline" in page

    invoke("report", "--compare", tmp_path / "cmp", "--out", tmp_path / "plain.html")
    assert len(re.findall("data:image/png", (tmp_path / "plain.html").read_text())) == 4


def test_report_bad_input(invoke, tmp_path):
    result = invoke("report", "--compare", tmp_path / "nowhere", "--out", tmp_path / "r.html", code=2)
    assert result.output.startswith("Error: no compare.json in") and result.output.count("\n") == 1
    assert not (tmp_path / "r.html").exists()
