"Synthetic annotations through the real `svlm convert` command: every generated word lands in the chunk where it ends."
import json, math, subprocess, sys
from pathlib import Path
from dataclasses import replace
import pytest
import svlm
from svlm.core import SynthConfig
from svlm.synth import make_dataset
from svlm.data import load_records

CFG = SynthConfig(seed=3, duration=12.0)
SVLM = Path(sys.executable).parent/"svlm"          # the console script `pip install -e .` put beside this Python

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return d, make_dataset(d, "train", n_clips=2, cfg=CFG, windows=(6, 3))

def _convert(ann, out, *extra):
    cmd = [str(SVLM), "convert", "--annotations", str(ann), "--output", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True)

def _generated(ann):
    "The (start, end, word) lists of each line of a synthetic annotation file"
    return [json.loads(l)[1]["content"][0]["text_stream"] for l in open(ann)]

@pytest.mark.parametrize("name", ["train_with_seeks.jsonl", "train_s3w6_with_seeks.jsonl"])
def test_convert_reassembles_commentary(dataset, name):
    d, _ = dataset
    ann, out = d/name, d/(name + ".svlm.jsonl")
    r = _convert(ann, out, "--check-videos")
    assert r.returncode == 0, r.stderr
    recs, gen = load_records(out), _generated(ann)
    assert len(recs) == len(gen) > 0
    for rec, words in zip(recs, gen):
        assert " ".join(w for _, _, w in words) == rec.text                     # nothing lost, nothing reordered
        for s, e, w in words:                                                  # each word in the chunk where it ends
            k = max(0, math.ceil(e - rec.start - 1e-9) - 1)
            assert rec.chunks[k].start < e <= rec.chunks[k].end or (k == 0 and e <= rec.chunks[0].end)
            assert w in rec.chunks[k].text.split()
        assert [c.start for c in rec.chunks] == [rec.start + i for i in range(len(rec.chunks))]
        assert rec.video_path.exists()

def test_convert_bad_input_keeps_output(dataset, tmp_path):
    d, ann = dataset
    out = tmp_path/"recs.jsonl"
    assert _convert(ann, out, "--data-root", str(d)).returncode == 0
    before = out.read_text()
    lines = ann.read_text().splitlines()
    bad = json.loads(lines[1]); bad[1]["content"][0]["text_stream"][0][0] = 99.0   # start after end
    bad_ann = tmp_path/"bad_with_seeks.jsonl"; bad_ann.write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    r = _convert(bad_ann, out, "--data-root", str(d))
    assert r.returncode == 2 and "bad_with_seeks.jsonl:2: field 'text_stream[0]'" in r.stderr, r.stderr
    assert out.read_text() == before                                           # the old output is intact
    r = _convert(bad_ann, out, "--data-root", str(d), "--skip-invalid")
    assert r.returncode == 0 and len(load_records(out)) == 1
