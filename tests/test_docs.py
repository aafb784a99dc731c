"""The docs site from the same notebooks, checked without Quarto (tools/docs_check.py): nbdev's docs preparation
(`nbdev-proc-nbs`) on every notebook, the processed notebooks' show_doc entries and figures, a few pages rendered
to HTML and opened in headless Chromium; and that a notebook breaking them is caught.

The browser is Debian's `chromium` driven by Playwright (`.ci/run` installs both). Under CI (`$CI` set) a missing
browser is a failure; elsewhere the browser parts are skipped, saying so. `$SVLM_DOCS_OUT` keeps the pages and
screenshots in that folder."""
import json, os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"tools"))
import docs_check as dc

_browser_missing = dc.browser_missing
_need_browser = lambda: dc.need_browser("the docs check")
_out = lambda tmp_path: dc.out_dir(tmp_path)

def test_docs_build(tmp_path):
    "nbdev-proc-nbs succeeds on every notebook; show_doc entries, sidebar, nbdev.yml; DEFAULT_PAGES in Chromium"
    out = _out(tmp_path)
    prep = dc.prepare(out)
    problems = [f"nbdev-proc-nbs fails on nbs/{nb}:\n{err}" for nb, err in prep.failures.items()]
    problems += dc.check_processed(prep)
    missing = _browser_missing()
    if not missing:
        pp, results = dc.check_pages(prep, dc.DEFAULT_PAGES, out/"html")
        problems += pp
        for r in results: print("browser:", r.summary)
    print(f"nbdev-proc-nbs took {prep.secs:.0f}s for {len(dc.notebooks(prep.proj/'nbs'))} notebooks")
    assert not problems, f"{len(problems)} docs problems:\n" + "\n".join(f"- {p}" for p in problems)
    if missing: _need_browser()

def _add_cells(nb_path, *sources, after_md=None):
    "Append code cells with `sources` to notebook `nb_path` (after the markdown cell containing `after_md`, else at the end)"
    nb = json.loads(Path(nb_path).read_text())
    cells = [{"cell_type": "code", "execution_count": None, "id": f"broken{i}", "metadata": {}, "outputs": [], "source": s}
             for i, s in enumerate(sources)]
    at = len(nb["cells"])
    if after_md: at = next(i for i, c in enumerate(nb["cells"]) if after_md in "".join(c["source"])) + 1
    nb["cells"][at:at] = cells
    Path(nb_path).write_text(json.dumps(nb, indent=1))

NB = "04_events"   # a small notebook with exports, so that nbdev executes cells to render its show_doc entries

def test_broken_notebook_fails_docs(tmp_path):
    "A lesson cell that starts with an import and uses an earlier lesson cell's variable: the docs preparation names it"
    ok = dc.prepare(tmp_path/"ok", only=[NB])
    assert not ok.failures, dc.describe_failures(ok.failures)
    edit = lambda proj: _add_cells(proj/"nbs"/f"{NB}.ipynb", "tok = 3  # a lesson cell", "from math import pi\nround(tok * pi, 2)")
    bad = dc.prepare(tmp_path/"bad", only=[NB], edit=edit)
    assert list(bad.failures) == [f"{NB}.ipynb"], bad.failures
    err = bad.failures[f"{NB}.ipynb"]
    assert "NameError" in err and "tok" in err and "from math import pi" in err, err
    # the same notebook with the import in its own cell, as nbdev expects, passes again
    edit = lambda proj: _add_cells(proj/"nbs"/f"{NB}.ipynb", "tok = 3  # a lesson cell", "from math import pi", "round(tok * pi, 2)")
    fixed = dc.prepare(tmp_path/"fixed", only=[NB], edit=edit)
    assert not fixed.failures, dc.describe_failures(fixed.failures)

def _png(w=2, h=2):
    "A valid PNG of w x h pixels (matplotlib writes it)"
    import io, matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt, base64
    fig = plt.figure(figsize=(w, h), dpi=10); buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()

def test_browser_check_catches_problems(tmp_path):
    "The browser check is no rubber stamp: a missing show_doc block, a broken figure and a traceback are reported"
    _need_browser()
    def nb(cells): return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}
    def code(src, outputs, tags=()): return {"cell_type": "code", "execution_count": 1, "id": f"c{abs(hash(src)) % 10**8}",
                                             "metadata": {"tags": list(tags)}, "outputs": outputs, "source": src}
    sd = lambda name, arg: code(f"#| echo: false\n#| output: asis\nshow_doc({name})", [{"output_type": "execute_result",
        "execution_count": 1, "metadata": {}, "data": {"text/markdown": f"### {name}\n\n```python\ndef {name}(\n    {arg}, # its docment\n):\n```",
                                                                         "text/plain": name}}])
    img = lambda b64: {"output_type": "display_data", "metadata": {}, "data": {"image/png": b64, "text/plain": "<Figure>"}}
    good = nb([{"cell_type": "raw", "id": "fm", "metadata": {}, "source": "---\ntitle: good\n---\n"},
               sd("make_cache", "model"), code("plot()", [img(_png())])])
    bad = nb([sd("other", "x"), code("plot()", [img("bm90IGEgcG5n")]),
              code("1/0", [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero",
                            "traceback": ["Traceback (most recent call last):", "ZeroDivisionError: division by zero"]}])])
    pages = {}
    for name, n in (("good", good), ("bad", bad)):
        (tmp_path/f"{name}.ipynb").write_text(json.dumps(n))
        pages[name] = dc.render_html(tmp_path/f"{name}.ipynb", tmp_path/f"{name}.html")
    expect = {pg: {"make_cache": {"model": "its docment"}} for pg in pages}
    res = {r.page: r for r in dc.browser_check(pages, tmp_path, expect=expect, n_images={"good": 1, "bad": 1},
                                               plot_pages={"good", "bad"})}
    assert res["good"].problems == [], res["good"].problems
    assert "1 show_doc blocks" in res["good"].summary and "1 figures" in res["good"].summary, res["good"].summary
    probs = "\n".join(res["bad"].problems)
    assert "no show_doc block for `make_cache`" in probs, probs
    assert "figures are not shown as images" in probs, probs
    assert "error output on the page" in probs and "ZeroDivisionError" in probs, probs
    assert all(s.exists() and s.stat().st_size > 0 for s in res["good"].shots)
