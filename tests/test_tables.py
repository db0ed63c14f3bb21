"""Result tables: numbers with their intervals as text, the comparison's tables, Markdown and HTML from the same
rows (counts linking to their examples, text escaped)."""

from evalmem.tables import (
    Link,
    compare_tables,
    difference,
    html_tables,
    markdown,
    p_value,
    pct,
    pct_ci,
    ratio_ci,
    verdict,
)


def test_numbers_with_intervals_as_text():
    assert pct(0.0405) == "4.05%" and pct(None) == "–"
    assert pct_ci(0.0405, {"low": 0.033, "high": 0.0497}) == "4.05% [3.3, 4.97]" and pct_ci(0.1, None) == "10%"
    assert difference({"estimate": -0.0, "low": -0.015, "high": 0.0004}) == "+0 pp [-1.5, +0.04]"  # never "-0"
    assert difference(None) == "–"
    assert ratio_ci(34.0, {"low": 6.09, "high": 199.0, "unbounded": False}) == "34 [6.09, 199]"
    assert ratio_ci(None, {"low": 9.57, "high": None, "unbounded": True}) == "unbounded [9.57, unbounded]"
    assert (p_value(0.0312), p_value(2.1e-9)) == ("0.031", "2.1e-09")
    assert (verdict(0.049), verdict(0.05)) == ("distinguishable", "not distinguishable")


def result():
    test = {"n": 10, "both": 1, "a_only": 3, "b_only": 0, "neither": 6, "rate_a": 0.4, "rate_b": 0.1,
            "difference": {"estimate": 0.3, "low": 0.01, "high": 0.6}, "p_value": 0.25, "p_holm": 0.25,
            "distinguishable": False}
    run = {"role": "teacher", "n": 10, "exact_match_count": 4, "exact_match_rate": 0.4,
           "exact_match_interval": {"low": 0.17, "high": 0.69}, "approx_match_rate": None,
           "approx_match_interval": None, "mean_token_accuracy": None}
    series = [{"name": "t@5", "step": 5, "epoch": 1.0, "n": 10, "exact_match_count": 1, "exact_match_rate": 0.1,
               "exact_match_interval": {"low": 0.02, "high": 0.4}},
              {"name": "t@10", "step": 10, "epoch": 2.0, "n": 10, "exact_match_count": 4, "exact_match_rate": 0.4,
               "exact_match_interval": {"low": 0.17, "high": 0.69}, "onset": 3, "forgotten": 0, "p_value": 0.25}]
    return {"runs": {"t": run, "<b>": {**run, "role": "run", "exact_match_count": 1, "exact_match_rate": 0.1}},
            "paired": [{"a": "t", "b": "<b>", **test}], "overlaps": [], "series": {"t": series}}


def test_compare_tables_show_intervals_tests_and_series():
    tables = {title: (header, rows) for title, header, rows in compare_tables(result())}
    header, rows = tables["Memorization per model (95% Wilson intervals)"]
    assert rows[0][4] == "40% [17, 69]" and rows[0][5] == "–"  # no approximate rate: not computed
    assert isinstance(rows[0][3], Link) and rows[0][3].set == "memorized:t"
    paired = next(rows for title, (header, rows) in tables.items() if title.startswith("Paired tests"))
    assert paired == [["t", "<b>", 3, 0, "+30 pp [+1, +60]", "0.25", "0.25", "not distinguishable"]]
    header, rows = tables["Memorization over training: t"]
    assert rows[0][4:7] == ["–", "–", "–"] and rows[1][4].set == "onset:t@10" and rows[1][6] == "0.25"


def test_markdown_and_html_from_the_same_rows():
    tables = [("A <title>", ["name", "count"], [["<b>", Link(3, "memorized:<b>")]])]
    assert markdown(tables) == "### A <title>\n\n| name | count |\n|---|---|\n| <b> | 3 |\n"
    page = html_tables(tables)
    assert "<h3>A &lt;title&gt;</h3>" in page and "<td>&lt;b&gt;</td>" in page
    assert '<a href="#explore?set=memorized:%3Cb%3E">3</a>' in page
