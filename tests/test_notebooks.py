"Every notebook in nbs/ runs as one pytest item, through nbdev's own test runner (so `#| slow` cells are skipped unless asked for)."
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/"nbs").rglob("*.ipynb") if not any(part.startswith(("_", ".")) for part in p.relative_to(ROOT/"nbs").parts))

def _flags():
    "Flags to skip (from pyproject's tst_flags) and to force (from $SVLM_TEST_FLAGS, e.g. 'slow')"
    skip = get_config(ROOT).tst_flags
    skip = skip.split() if isinstance(skip, str) else list(skip)
    force = os.environ.get("SVLM_TEST_FLAGS", "").split()
    return [f for f in skip if f not in force], force

@pytest.mark.parametrize("nb", NBS, ids=lambda p: str(p.relative_to(ROOT/"nbs")))
def test_notebook(nb):
    skip, force = _flags()
    ok, secs = run_notebook(nb, skip_flags=skip, force_flags=force, basepath=ROOT, showerr=True)
    assert ok, f"{nb.name} failed after {secs:.0f}s (its traceback is printed above)"
