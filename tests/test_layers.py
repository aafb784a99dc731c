"The layering the README promises: each notebook, and the module it exports, imports only earlier layers; only the CLI imports the benchmarks."
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT/"nbs").glob("[0-9][0-9]_*.ipynb"))
IMPORT = re.compile(r"^\s*(?:from\s+(?:svlm\.|\.)(\w+)\s+import|import\s+svlm\.(\w+))", re.M)

def _cells(nb): return ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]

def _layers() -> dict:
    "module -> its notebook's number"
    out = {}
    for nb in NBS:
        for s in _cells(nb):
            m = re.match(r"#\|\s*default_exp\s+(\w+)", s)
            if m: out[m.group(1)] = int(nb.name[:2])
    return out

def test_every_numbered_notebook_exports_one_module():
    layers = _layers()
    assert len(layers) == len(NBS) and len(set(layers.values())) == len(NBS), layers

def test_notebooks_import_only_earlier_layers():
    layers, bad = _layers(), []
    for nb in NBS:
        n = int(nb.name[:2])
        for s in _cells(nb):
            for m in IMPORT.finditer(s):
                mod = m.group(1) or m.group(2)
                if mod in layers and layers[mod] > n: bad.append(f"{nb.name} imports svlm.{mod} (notebook {layers[mod]:02d})")
    assert not bad, bad

def test_modules_import_only_earlier_layers_and_bench_only_from_the_cli():
    layers, bad = _layers(), []
    for mod, n in layers.items():
        text = (ROOT/"svlm"/f"{mod}.py").read_text()
        for m in IMPORT.finditer(text):
            dep = m.group(1) or m.group(2)
            if dep in layers and layers[dep] >= n: bad.append(f"svlm/{mod}.py imports svlm.{dep}")
            if dep == "bench" and mod != "cli": bad.append(f"svlm/{mod}.py imports the benchmarks")
        if mod != "bench" and re.search(r"^\s*(from|import)\s+(mlx_lm|mlx_vlm|torch)\b", text, re.M): bad.append(f"svlm/{mod}.py imports a peer")
    assert not bad, bad

def test_readme_layer_table_lists_every_notebook_in_order():
    readme = (ROOT/"README.md").read_text()
    rows = re.findall(r"^\| \[(\d\d_\w+)\]\(nbs/\1\.ipynb\) \| `svlm\.(\w+)` \|", readme, re.M)
    layers = _layers()
    assert [r[0] for r in rows] == [nb.stem for nb in NBS]
    assert all(layers[mod] == int(stem[:2]) for stem, mod in rows), rows
