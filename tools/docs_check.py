"""The docs site, prepared and checked without Quarto (which cannot be installed where CI runs).

    python tools/docs_check.py                       # prepare every notebook, check, open DEFAULT_PAGES in Chromium
    python tools/docs_check.py --out /tmp/docs       # keep the processed notebooks, HTML pages and screenshots there
    python tools/docs_check.py --pages index 13_eval # other pages for the browser
    python tools/docs_check.py --no-browser          # only the steps that need no browser

1. `prepare`: nbdev's docs preparation -- `nbdev-proc-nbs`, the step `nbdev-docs` and `nbdev-preview` run before
   Quarto -- on a copy of the project (so the checkout is never written to). It executes, per notebook, the cells
   nbdev takes for exports or imports and the `show_doc` cells, and stores their output in `_proc/`. A lesson cell
   that starts with an import is one of them: if it uses a variable of an earlier lesson cell it fails here.
   Every notebook that fails is named, with the cell and the error.
2. `check_processed`: the processed notebooks have no error output; every public function and class of the module
   a notebook exports (its `__all__`) has a `show_doc` entry whose rendered signature carries its docments; the
   sidebar nbdev generates lists every notebook in reading order; the committed `nbs/nbdev.yml` is the one nbdev
   writes (else `nbdev-docs` rewrites it).
3. `render_html`: processed notebooks to standalone HTML pages with nbconvert, as Quarto would show them
   (`#| echo: false` inputs hidden, `show_doc` output rendered from its markdown), figures embedded.
4. `browser_check`: opens pages in headless Chromium (Debian's `chromium`, driven by Playwright) from file:// URLs,
   with every other request blocked: the page loads without script errors, the `show_doc` blocks of the module's
   public API are there with their signatures, every figure is an image with a non-zero natural size, no
   traceback or error is shown; the index page is the README. Screenshots are written next to the pages.

Exit status 1 when any check fails, with one line per problem.
"""
import argparse, importlib, inspect, json, os, re, shutil, subprocess, sys, tempfile, time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = "svlm"
DEFAULT_PAGES = ["index", "09_cache", "10_generate", "13_eval", "18_bench"]
MUST_SHOW = {"09_cache": ["make_cache", "StreamingCache"], "10_generate": ["generate", "stream_generate"],
             "13_eval": ["score_clip", "plot_report"], "18_bench": ["bench_stream", "bench_cache"]}  # on top of `__all__`
PLOT_PAGES = {"09_cache", "13_eval"}  # pages that must show at least one figure
COPY = ["pyproject.toml", "README.md", "nbs", "configs", "data"]  # what the docs preparation may read
_SKIP_NBS = {"_proc", "_docs", "_site", ".quarto", "sidebar.yml", ".ipynb_checkpoints"}

# ---------------------------------------------------------------- 1. nbdev's docs preparation (nbdev-proc-nbs)

def notebooks(nbs: Path) -> list:
    "The notebooks nbdev documents, in reading order (the order of nbdev's sidebar: index first, then by name)"
    nbs_ = sorted(p for p in Path(nbs).glob("*.ipynb") if not p.name.startswith(("_", ".")))
    return sorted(nbs_, key=lambda p: (p.stem != "index", p.name))

def copy_project(dst: Path, root: Path = ROOT, only: list = None) -> Path:
    "Copy what the docs preparation reads into `dst` (notebooks: all, or the names in `only`)"
    dst = Path(dst); dst.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        s = root/name
        if s.is_dir(): shutil.copytree(s, dst/name, ignore=lambda d, fs: [f for f in fs if f in _SKIP_NBS], dirs_exist_ok=True)
        elif s.exists(): shutil.copy2(s, dst/name)
    if only is not None:
        for nb in notebooks(dst/"nbs"):
            if nb.stem not in only and nb.name not in only: nb.unlink()
    return dst

@dataclass
class Prepared:
    proj: Path              # the copy of the project, with `_proc/` filled in
    failures: dict          # notebook name -> error text (the cell and the exception), for each notebook that failed
    secs: float             # wall time of the preparation
    log: str = ""
    @property
    def proc(self): return self.proj/"_proc"

_FAIL = "DOCS-PROC-FAIL "

def _proc_main(proj: Path, n_workers: int):
    "In a fresh interpreter: nbdev-proc-nbs on `proj`, then each notebook it left unprocessed alone, to name it"
    import nbdev.quarto as q
    from fastcore.xtras import working_directory
    # `nbdev-proc-nbs` needs no Quarto, but nbdev checks for it first and, when it is missing, tries to download
    # and `sudo dpkg -i` it; that check is the only change to nbdev's own `nbdev_proc_nbs`.
    q._ensure_quarto = lambda: None
    nbs = proj/"nbs"
    with working_directory(proj):
        try:
            q.nbdev_proc_nbs.__wrapped__(path=str(nbs), n_workers=n_workers)
            return 0
        except Exception as e: print(f"nbdev-proc-nbs failed: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
        left = [nb for nb in notebooks(nbs) if not (proj/"_proc"/nb.name).exists()]
        for nb in left:   # nbdev stops at the first failure; run the rest one by one so that every failure is named
            try: q.nbdev_proc_nbs.__wrapped__(path=str(nbs), n_workers=1, file_glob=nb.name)
            except Exception as e:
                err = str(e) if str(e).startswith("Error") else f"{type(e).__name__}: {e}"
                print(_FAIL + json.dumps({"nb": nb.name, "error": err}), flush=True)
        q.nbdev_sidebar.__wrapped__(path=str(nbs))   # the file_glob runs above wrote a partial sidebar
    return 1

def prepare(work: Path = None, root: Path = ROOT, only: list = None, edit=None, n_workers: int = 2,
            timeout: float = 900) -> Prepared:
    "Copy the project into `work` (a new temp dir by default), let `edit(proj)` change it, run nbdev-proc-nbs there"
    work = Path(work or tempfile.mkdtemp(prefix="svlm-docs-"))
    proj = copy_project(work/"proj", root, only)
    if edit: edit(proj)
    t0 = time.time()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, __file__, "--_proc", str(proj), str(n_workers)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    secs, log = time.time() - t0, r.stdout + r.stderr
    failures = {}
    for line in r.stdout.splitlines():
        if line.startswith(_FAIL): d = json.loads(line[len(_FAIL):]); failures[d["nb"]] = d["error"]
    if r.returncode and not failures: failures["(nbdev-proc-nbs)"] = log[-3000:]
    missing = [nb.name for nb in notebooks(proj/"nbs") if not (proj/"_proc"/nb.name).exists() and nb.name not in failures]
    for m in missing: failures[m] = "no processed notebook was written"
    return Prepared(proj, failures, secs, log)

def describe_failures(failures: dict) -> str:
    return "\n\n".join(f"nbdev-proc-nbs fails on nbs/{nb}:\n{err}" for nb, err in failures.items())

# ---------------------------------------------------------------- 2. checks on the processed notebooks

def _src(c): s = c.get("source", ""); return "".join(s) if isinstance(s, list) else s
def _text(o): t = o.get("text") or ""; return "".join(t) if isinstance(t, list) else t
def _md(o):
    t = o.get("data", {}).get("text/markdown", "")
    return "".join(t) if isinstance(t, list) else t

_re_sd = re.compile(r"^\s*show_doc\(\s*([\w.]+)", re.M)
_re_src = re.compile(r"\[source\]\(([^)\s]*)\)")

def default_exp(nb: Path):
    "The module a notebook exports to (`#| default_exp`), or None"
    for c in json.loads(Path(nb).read_text())["cells"]:
        m = re.search(r"^#\|\s*default_exp\s+([\w.]+)", _src(c), re.M)
        if m: return m.group(1)

def public_api(module: str) -> dict:
    "name -> object, for the functions and classes in `module.__all__` defined in that module"
    mod = importlib.import_module(f"{LIB}.{module}")
    res = {}
    for n in getattr(mod, "__all__", []):
        o = getattr(mod, n, None)
        if (inspect.isclass(o) or callable(o)) and getattr(o, "__module__", None) == mod.__name__: res[n] = o
    return res

def param_docs(obj) -> dict:
    "The docments of `obj`'s parameters (comments next to them, or the docstring's for `return` is left out)"
    from fastcore.docments import docments
    try: d = docments(obj, full=False)
    except Exception: return {}
    return {k: v for k, v in d.items() if v and k != "return"}

def show_docs(nb: dict) -> dict:
    "name -> the rendered markdown of each `show_doc(name)` cell of processed notebook `nb`"
    res = {}
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        for m in _re_sd.finditer(_src(c)):
            res[m.group(1)] = "".join(_md(o) for o in c.get("outputs", []))
    return res

def _norm(s): return re.sub(r"\s+", " ", s).strip()

def error_outputs(nb: dict) -> list:
    "(cell index, text) for each error output, and each stderr output with a traceback"
    res = []
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
            if o["output_type"] == "error": res.append((i, f'{o.get("ename")}: {o.get("evalue")}'))
            elif o["output_type"] == "stream" and o.get("name") == "stderr" and "Traceback" in _text(o): res.append((i, _text(o)[:300]))
    return res

def expected_docs(nb_path: Path) -> dict:
    "name -> its docments, for the public API of the module notebook `nb_path` exports (and MUST_SHOW)"
    mod = default_exp(nb_path)
    api = public_api(mod) if mod else {}
    for n in MUST_SHOW.get(Path(nb_path).stem, []):
        if n not in api: api[n] = None
    return {n: (param_docs(o) if o is not None else {}) for n, o in api.items()}

def api_obj(nb_path: Path, name: str):
    mod = default_exp(nb_path)
    return public_api(mod).get(name) if mod else None

def _why(o):
    import dataclasses
    if dataclasses.is_dataclass(o):
        return ("; a dataclass defined in a notebook: fastcore's docments cannot read the source of a class in "
                "__main__ (fastcore.docments.get_dataclass_source), so nbdev renders its fields without comments")
    return ""

_re_link = re.compile(r"\]\(([^)\s]+)\)")

def dead_links(prep: Prepared) -> list:
    """Links in the processed notebooks (markdown cells and outputs) that lead nowhere on the docs site: a page
    `/x.html` that no notebook becomes, or a relative path that does not exist next to the notebook. Links to other
    hosts are not followed (CI has no network); show_doc's [source] links are reported by `check_processed`."""
    from nbdev.config import nbpath2html
    nbs = prep.proj/"nbs"
    pages = {"index.html"} | {nbpath2html(nb.name).name for nb in notebooks(nbs)}
    problems = []
    for src in notebooks(nbs):
        p = prep.proc/src.name
        if not p.exists(): continue
        dead = []
        for c in json.loads(p.read_text())["cells"]:
            texts = [_src(c)] if c["cell_type"] == "markdown" else [_md(o) for o in c.get("outputs", [])]
            for t in _re_link.findall("\n".join(texts)):
                if re.match(r"[a-z][\w+.-]*:|#", t) or re.search(r"\[source\]\(" + re.escape(t), "\n".join(texts)): continue
                path = t.split("#")[0].split("?")[0]
                if not path: continue
                ok = path.lstrip("/") in pages if path.startswith("/") else (nbs/path).exists()
                if not ok and t not in dead: dead.append(t)
        if dead: problems.append(f"{src.name}: {len(dead)} links lead nowhere on the docs site "
                                 f"({', '.join(dead[:4])}{', ...' if len(dead) > 4 else ''}; relative links start at nbs/)")
    return problems

def check_processed(prep: Prepared, root: Path = ROOT) -> list:
    "Problems with the processed notebooks, the sidebar and nbdev.yml (an empty list when all is right)"
    problems, proj = [], prep.proj
    for src in notebooks(proj/"nbs"):
        p = prep.proc/src.name
        if not p.exists(): continue   # reported by `prepare`
        nb = json.loads(p.read_text())
        for i, t in error_outputs(nb): problems.append(f"{src.name}: cell {i} shows an error: {t}")
        shown = show_docs(nb)
        dead = sorted({u for md in shown.values() for u in _re_src.findall(md) if not u.startswith(("http://", "https://"))})
        if dead: problems.append(f"{src.name}: {len(dead)} show_doc source links lead nowhere ({dead[0]}, ...): nbdev builds "
                                 "them from [project.urls] Repository, and there is no repository")
        for name, docs in expected_docs(src).items():
            md = shown.get(name)
            if md is None: problems.append(f"{src.name}: no show_doc entry for public `{name}`"); continue
            if f"### {name}" not in md and f"## {name}" not in md: problems.append(f"{src.name}: show_doc({name}) rendered nothing"); continue
            lost = [arg for arg, doc in docs.items() if _norm(doc) not in _norm(md)]
            if lost: problems.append(f"{src.name}: show_doc({name}) renders {len(docs) - len(lost)} of its {len(docs)} docments "
                                     f"(missing: {', '.join(lost)}){_why(api_obj(src, name))}")
    problems += dead_links(prep)
    # The sidebar nbdev generates (nbs/sidebar.yml, not committed): every notebook, in reading order
    import yaml
    sb = proj/"nbs"/"sidebar.yml"
    if not sb.exists(): problems.append("nbdev wrote no nbs/sidebar.yml")
    else:
        got = yaml.safe_load(sb.read_text())["website"]["sidebar"]["contents"]
        want = [nb.name for nb in notebooks(proj/"nbs")]
        if got != want: problems.append(f"sidebar.yml lists {got}, not every notebook in reading order {want}")
    q = yaml.safe_load((root/"nbs"/"_quarto.yml").read_text())
    if "sidebar.yml" not in (q.get("metadata-files") or []): problems.append("nbs/_quarto.yml does not read sidebar.yml")
    # nbdev-docs rewrites nbs/nbdev.yml from pyproject.toml: the committed one must be what it writes
    gen, committed = (proj/"nbs"/"nbdev.yml").read_text(), (root/"nbs"/"nbdev.yml").read_text()
    if gen != committed: problems.append(f"nbs/nbdev.yml differs from the one nbdev writes from pyproject.toml:\n{gen}")
    return problems

# ---------------------------------------------------------------- 3. HTML pages without Quarto

_re_dir = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
_re_attr_link = re.compile(r"\[([^\]]*)\]\(([^)]*)\)\{[^}]*\}")   # pandoc's [txt](url){attrs}: keep [txt](url)

def for_html(nb: dict) -> dict:
    "Processed notebook `nb` as Quarto would show it: directives applied and dropped, show_doc cells tagged"
    cells, meta = [], dict(nb.get("metadata", {}))
    for c in nb["cells"]:
        if c["cell_type"] == "raw" and _src(c).startswith("---"):   # nbdev's frontmatter: Quarto shows title, description
            import yaml
            fm = yaml.safe_load(_src(c).strip().strip("-")) or {}
            if fm.get("title"): meta["title"] = fm["title"]
            c = dict(c, cell_type="markdown", source=f"# {fm.get('title', '')}\n\n{fm.get('description', '')}".strip(), metadata={})
            c.pop("outputs", None); c.pop("execution_count", None)
            cells.append(c); continue
        c = dict(c, source=_src(c), metadata={k: v for k, v in c.get("metadata", {}).items() if k != "execution"})  # timings
        if c["cell_type"] == "code":
            lines, dirs = c["source"].splitlines(), {}
            while lines and _re_dir.match(lines[0]):
                k, v = _re_dir.match(lines.pop(0)).groups(); dirs[k] = v
            body = "\n".join(lines)
            tags = list(c["metadata"].get("tags", []))
            if dirs.get("echo", "").lower() == "false" or not body.strip(): tags.append("remove_input")
            if _re_sd.search(body): tags.append("show_doc")
            for o in c.get("outputs", []):
                md = o.get("data", {}).get("text/markdown")
                if md is not None: o["data"]["text/markdown"] = _re_attr_link.sub(r"[\1](\2)", "".join(md))
            if not body.strip() and not c.get("outputs"): continue   # an exported cell: nbdev removed its source
            c["source"], c["metadata"]["tags"] = body, tags
        elif c["cell_type"] == "markdown": c["source"] = _re_attr_link.sub(r"[\1](\2)", c["source"])
        cells.append(c)
    return dict(nb, cells=cells, metadata=meta)

def render_html(proc_nb: Path, out: Path) -> Path:
    "Render processed notebook `proc_nb` to the standalone HTML page `out` (nbconvert's lab template)"
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    nb = nbformat.from_dict(for_html(json.loads(Path(proc_nb).read_text())))
    ex = HTMLExporter(template_name="lab")
    ex.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}, enabled=True), enabled=True)
    html, _ = ex.from_notebook_node(nb)
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True); out.write_text(html)
    return out

# ---------------------------------------------------------------- 4. the pages in headless Chromium

class NoBrowser(Exception): "Chromium or Playwright is missing"

def chromium_path() -> str:
    "Debian's chromium (or $SVLM_CHROMIUM); Playwright's own browser download cannot work where CI runs"
    for c in [os.environ.get("SVLM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]:
        if c and Path(c).exists(): return c
    raise NoBrowser("no chromium found (Debian: apt-get install chromium; or set SVLM_CHROMIUM)")

def readme_headings(readme: Path) -> list:
    "The headings of README.md, outside code blocks"
    res, fence = [], False
    for l in Path(readme).read_text().splitlines():
        if l.startswith("```"): fence = not fence
        elif not fence and re.match(r"#{1,6} ", l): res.append(l.lstrip("#").strip())
    return res

_JS_PAGE = """() => {
  const txt = e => e.textContent.replace(/\\u00b6/g, '').trim();
  const blocks = [...document.querySelectorAll('.jp-Cell.celltag_show_doc')].map(b => {
    const h = b.querySelector('h2, h3, h4');
    return {name: h ? txt(h) : null, sig: !!b.querySelector('pre'), text: b.innerText, visible: b.offsetHeight > 0};
  });
  const imgs = [...document.querySelectorAll('.jp-OutputArea-output img')].map(i => ({
    ok: i.complete && i.naturalWidth > 0 && i.naturalHeight > 0, w: i.naturalWidth, h: i.naturalHeight,
    shown: i.getBoundingClientRect().width > 0}));
  const errs = [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(txt).filter(t => /Traceback|Error/.test(t));
  const outs = [...document.querySelectorAll('.jp-OutputArea-output')].map(txt)
    .filter(t => /Traceback \\(most recent call last\\)/.test(t));
  const heads = [...document.querySelectorAll('h1, h2, h3')].map(txt);
  return {title: document.title, blocks, imgs, errs: errs.concat(outs), heads, cells: document.querySelectorAll('.jp-Cell').length};
}"""

@dataclass
class PageResult:
    page: str
    problems: list = field(default_factory=list)
    summary: str = ""
    shots: list = field(default_factory=list)

def browser_check(pages: dict, out: Path, expect: dict = None, readme: Path = None, n_images: dict = None,
                  plot_pages=PLOT_PAGES) -> list:
    """Open each HTML page of `pages` (name -> path) in headless Chromium; a `PageResult` for each.
    `expect`: name -> {symbol: docments} whose show_doc blocks must be on the page; `n_images`: name -> how many
    figures the notebook holds; `readme`: the README whose headings the index page must show."""
    try: from playwright.sync_api import sync_playwright
    except ImportError as e: raise NoBrowser(f"playwright is not installed ({e}); pip install playwright") from e
    exe, out, res = chromium_path(), Path(out), []
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            for name, path in pages.items():
                r = PageResult(name); res.append(r)
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                js_errors = []
                page.on("pageerror", lambda e: js_errors.append(str(e)))
                # file:// only: the CDN scripts of nbconvert's template (MathJax, require.js) are not reachable in CI
                page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:")) else route.abort())
                try: page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=60_000)
                except Exception as e: r.problems.append(f"{name}: the page did not load: {e}"); page.close(); continue
                d = page.evaluate(_JS_PAGE)
                if not d["cells"]: r.problems.append(f"{name}: the page shows no notebook cells")
                r.problems += [f"{name}: script error on the page: {e}" for e in js_errors]
                names = {b["name"]: b for b in d["blocks"]}
                for sym, docs in (expect or {}).get(name, {}).items():
                    b = names.get(sym)
                    if b is None: r.problems.append(f"{name}: no show_doc block for `{sym}`"); continue
                    if not b["sig"] or not b["visible"]: r.problems.append(f"{name}: the show_doc block for `{sym}` shows no signature")
                    lost = [arg for arg, doc in docs.items() if _norm(doc) not in _norm(b["text"])]
                    if lost: r.problems.append(f"{name}: the show_doc block for `{sym}` does not show the docments of {', '.join(lost)}")
                bad = [i for i in d["imgs"] if not (i["ok"] and i["shown"])]
                if bad: r.problems.append(f"{name}: {len(bad)} of {len(d['imgs'])} figures are not shown as images: {bad}")
                want = (n_images or {}).get(name, 0)
                if len(d["imgs"]) < want: r.problems.append(f"{name}: {len(d['imgs'])} images on the page, the notebook holds {want} figures")
                if name in plot_pages and not d["imgs"]: r.problems.append(f"{name}: no figure on the page")
                r.problems += [f"{name}: error output on the page: {t[:200]}" for t in d["errs"]]
                if readme is not None and name == "index":
                    miss = [h for h in readme_headings(readme) if h not in d["heads"]]
                    if miss: r.problems.append(f"index: the page is not the README, it lacks the headings {miss}")
                # Screenshots: the top of the page, the first show_doc block, the first figure
                shot = out/f"{name}.png"; page.screenshot(path=str(shot)); r.shots.append(shot)
                for sel, suffix in ((".jp-Cell.celltag_show_doc", "showdoc"), (".jp-OutputArea-output img", "figure")):
                    el = page.query_selector(sel)
                    if el:
                        el.scroll_into_view_if_needed(); s = out/f"{name}_{suffix}.png"; el.screenshot(path=str(s)); r.shots.append(s)
                sizes = ", ".join(f"{i['w']}x{i['h']}" for i in d["imgs"])
                r.summary = (f"{name}: '{d['title']}', {d['cells']} cells, {len(d['blocks'])} show_doc blocks "
                             f"({', '.join(b['name'] or '?' for b in d['blocks'][:8])}{', ...' if len(d['blocks']) > 8 else ''}), "
                             f"{len(d['imgs'])} figures ({sizes or 'none'}), {len(d['errs'])} error outputs")
                page.close()
        finally: browser.close()
    return res

# ---------------------------------------------------------------- all of it

def n_figures(proc_nb: Path) -> int:
    nb = json.loads(Path(proc_nb).read_text())
    return sum(any(k.startswith("image/") for k in o.get("data", {})) for c in nb["cells"] for o in c.get("outputs", []))

def render_pages(prep: Prepared, pages: list, out: Path) -> dict:
    "name -> HTML path, for each page of `pages` that was processed"
    return {pg: render_html(prep.proc/f"{pg}.ipynb", Path(out)/f"{pg}.html") for pg in pages if (prep.proc/f"{pg}.ipynb").exists()}

def check_pages(prep: Prepared, pages: list, out: Path, root: Path = ROOT):
    "Render `pages` to HTML in `out` and open them in Chromium: (problems, page results)"
    html = render_pages(prep, pages, out)
    problems = [f"{pg}: no processed notebook to render" for pg in pages if pg not in html]
    expect = {pg: expected_docs(prep.proj/"nbs"/f"{pg}.ipynb") for pg in html}
    figs = {pg: n_figures(prep.proc/f"{pg}.ipynb") for pg in html}
    results = browser_check(html, out, expect=expect, readme=root/"README.md", n_images=figs)
    return problems + [p for r in results for p in r.problems], results

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="folder for the processed notebooks, HTML pages and screenshots (default: a temp dir)")
    ap.add_argument("--pages", nargs="+", default=DEFAULT_PAGES, help="notebooks (stems) to open in the browser")
    ap.add_argument("--no-browser", action="store_true", help="skip the browser check")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    out = Path(a.out or tempfile.mkdtemp(prefix="svlm-docs-"))
    if out.exists(): shutil.rmtree(out/"proj", ignore_errors=True)
    t0 = time.time()
    prep = prepare(out, n_workers=a.workers)
    print(f"nbdev-proc-nbs: {len(notebooks(prep.proj/'nbs'))} notebooks in {prep.secs:.0f}s, {len(prep.failures)} failed -> {prep.proc}")
    problems = [f"nbdev-proc-nbs fails on {nb}: {err}" for nb, err in prep.failures.items()]
    problems += check_processed(prep)
    if not a.no_browser:
        try:
            pp, results = check_pages(prep, a.pages, out/"html")
            problems += pp
            for r in results: print("browser:", r.summary)
            print(f"pages and screenshots: {out/'html'}")
        except NoBrowser as e: problems.append(f"browser check not run: {e}")
    print(f"docs check: {time.time() - t0:.0f}s, {len(problems)} problems")
    for p in problems: print("  -", p)
    return 1 if problems else 0

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_proc": sys.exit(_proc_main(Path(sys.argv[2]), int(sys.argv[3])))
    sys.exit(main())


def browser_missing():
    "Why a browser check cannot run here (no Chromium, no Playwright), or None"
    try:
        chromium_path()
        import playwright.sync_api  # noqa: F401
    except (NoBrowser, ImportError) as e: return str(e)


def need_browser(what: str):
    "In a test: fail under CI (`$CI` set) when the browser is missing, skip elsewhere, saying so"
    import pytest
    why = browser_missing()
    if why and os.environ.get("CI"): pytest.fail(f"CI needs the browser for {what}: {why}")
    if why: pytest.skip(f"no browser for {what} ({why}); CI runs it")


def out_dir(tmp_path, sub: str = "") -> Path:
    "Where a browser test keeps its pages and screenshots: `$SVLM_DOCS_OUT`/sub if set, else `tmp_path`"
    out = os.environ.get("SVLM_DOCS_OUT")
    d = Path(out)/sub if out else Path(tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d
