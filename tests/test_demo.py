"""The README's main job, as a user runs it: `svlm demo` trains the toy model on synthetic clips and streams four held-out
clips it has never seen. It must commentate at the right moments, and its headline must tell the truth about what it said.

The synthetic clips have events at irregular times, so a blind fixed schedule cannot guess them: the best schedule of
every 2nd to 12th second at its luckiest phase, chosen on the held-out references themselves, scores 0.38 in the exact
chunk. Timing is not the words: the headline also prints event accuracy (does each matched line name the reference's
kind of event?) and ROUGE-L, and the test recomputes every figure of it from the files the demo wrote, and reads each
reference line back from the printed side-by-side tables.

No caption names the event (issue #15): the words must come from the play. With training seeds 0, 1 and 2 the
recipe scores 0.98, 0.98 and 1.00 in the exact chunk, event accuracy 0.90 each and ROUGE-L 0.75, 0.74, 0.82 on these
four clips (0.95-0.98, 0.88-0.91 and 0.70-0.77 on 16 held-out clips; nbs/11_train.ipynb, rows w0-w2 of the ablation
table; `svlm demo` itself, seed 0 with OpenBLAS's default threads, 0.95, 0.90 and 0.72). Four clips hold 21 lines, so
one line is 5 points of event accuracy. Training is not bitwise reproducible across machines (the float path of the
BLAS differs; tests/conftest.py also gives OpenBLAS one thread), so a run here is another draw; the runs of the table
around the recipe (w, ww, fl rows) spread from 0.95 to 1.00 in the exact chunk and from 0.75 to 1.00 in event accuracy
on these clips. The test asks for F >= 0.7 in the exact chunk, >= 0.8 at +-1.5 s, the blind schedule at most 0.4 and
the model at least 0.3 above it, event accuracy >= 0.7 and ROUGE-L >= 0.5. A model that never reads the frames fails
all of them (the same model without the pooled-vision loss: exact-chunk F 0.24, event accuracy 0.08, ROUGE-L 0.14).
The training loss includes the pooled-vision loss, so it ends near 0.2-0.4 here, from 5.4-7.0.
"""
import json, re, subprocess, sys
from pathlib import Path
import pytest
from svlm.data import load_records
from svlm.events import read_events
from svlm.eval import score_clips

SVLM = Path(sys.executable).parent/"svlm"

def test_demo_learns_to_commentate(tmp_path):
    r = subprocess.run([str(SVLM), "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["steps"] == 1700 and s["loss_last"] < 1.0, s
    assert s["f1_exact"] >= 0.7 and s["f1"] >= 0.8, (s, r.stdout[-3000:])
    assert s["blind_f1_exact"] <= 0.4 and s["f1_exact"] >= s["blind_f1_exact"] + 0.3, s
    assert s["event_acc"] >= 0.7 and s["rouge_l"] >= 0.5, (s, r.stdout[-3000:])
    for i in range(4):                                        # what a user gets to look at, on disk
        events = [json.loads(l) for l in open(tmp_path/f"heldout_{i}.jsonl")]
        assert events and all(e["text"].strip() for e in events)
        assert (tmp_path/f"heldout_{i}.vtt").read_text().startswith("WEBVTT")
    assert (Path(s["checkpoint"])/"model.safetensors").exists()

    # the scores, recomputed from what was written: the events of each held-out clip against its reference record
    recs = load_records(tmp_path/"data"/"heldout.jsonl")
    sc = score_clips({rec.id: (read_events(tmp_path/f"heldout_{i}.jsonl"), rec) for i, rec in enumerate(recs)})
    p = sc["pooled"]
    for k in ("f1", "f1_exact", "event_acc", "team_acc", "rouge_l", "matched", "n_ref"):
        assert s[k] == pytest.approx(p[k]), (k, s[k], p[k])
    assert json.loads((tmp_path/"scores.json").read_text())["pooled"] == json.loads(json.dumps(p))
    assert p["event_acc"] is not None and 0 <= p["event_acc"] <= 1

    # the headline prints them together, as computed
    out = r.stdout
    head = next(l for l in out.splitlines() if l.startswith("4. on 4 held-out clips:"))
    assert (f"timing F {p['f1']:.2f} at ±1.5 s, {p['f1_exact']:.2f} in the exact chunk; event accuracy {p['event_acc']:.2f} "
            f"(team {p['team_acc']:.2f}); ROUGE-L {p['rouge_l']:.2f}") in head, head
    # one table per clip: every reference line on the row of its time, beside the model's line and the verdict on its kind
    tables = re.split(r"^3\. held-out clip \d", out, flags=re.M)[1:]
    tables[-1] = tables[-1].split("\n4. ")[0]
    assert len(tables) == len(sc["clips"]) == 4
    for c, table in zip(sc["clips"], tables):
        for x in c["pairs"]:
            row = re.search(rf"^ +{c['ref'][x['ref']]['start']:.1f}s  {re.escape(x['ref_text'][:25])}.*$", table, re.M)
            assert row, (x, table)
            verdict = "yes" if x["kind_ok"] else f"no: {x['pred_kind'] or 'none'}" if x["kind_ok"] is False else "–"
            assert row.group(0).rstrip().endswith(verdict), (row.group(0), x)
    n_ok = sum(bool(x["kind_ok"]) for c in sc["clips"] for x in c["pairs"])
    assert len(re.findall(r" yes$", out, re.M)) == n_ok
    assert f"wrote, under {tmp_path}" in out and "scores.json" in out
