"""The one table writer (Markdown, CSV) of the evaluation, studies, demo and sweeps."""

from mvae_dist.tables import csv_table, markdown_table


def test_markdown_table_layout_escaping_and_alignment():
    text = markdown_table(["metric", "mean"], [["a|b", 0.5], ["c", "n/a"]], align=["left", "right"])
    assert text == "| metric | mean |\n|---|---:|\n| a/b | 0.5 |\n| c | n/a |\n"
    assert markdown_table(["x"], []) == "| x |\n|---|\n"


def test_csv_table_quotes_and_empty_cells():
    text = csv_table(["k", "v"], [["a,b", None], ["c", 1.5]])
    assert text == 'k,v\n"a,b",\nc,1.5\n'
