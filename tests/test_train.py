"Training runs that stop and resume: exact resume (compiled step), a run killed mid-flight, NaN stops, bad checkpoints and data."
import json, math, os, signal, subprocess, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import svlm
import mlx.core as mx
from mlx.utils import tree_flatten
from svlm.core import InputError, SynthConfig, load_config
from svlm.synth import make_dataset
from svlm.data import convert, load_records
from svlm.train import train, load_checkpoint, find_checkpoint, save_checkpoint, TrainingError, CKPT_DIR, LAST

BASE = ["train.model=tiny", "train.window=3", "train.stride=1", "train.batch_size=2", "train.warmup=3", "train.lr=0.001",
        "train.lr_min=0.0001", "tokenizer.sink=16", "tokenizer.window=32"]

@pytest.fixture(scope="module")
def records(tmp_path_factory):
    "Two 6 s synthetic clips at the tiny preset's frame size (84×56): 2 × 4 windows of 3 s"
    d = tmp_path_factory.mktemp("clips")
    ann = make_dataset(d, "train", n_clips=2, cfg=SynthConfig(duration=6.0, width=84, height=56))
    return load_records(convert(ann, d/"train.jsonl", data_root=str(d)).output)

def _cfg(out, *extra): return load_config(None, BASE + [f"train.out={out}", *extra])
def _params(model): return {k: np.array(v) for k, v in tree_flatten(model.parameters())}
def _max_gap(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)

def test_resume_is_exact(records, tmp_path):
    "20 steps straight vs 10 steps, stop, resume, 10 more: same parameters (fp32) and the same losses, compiled step"
    extra = ["train.steps=20", "train.checkpoint_every=10", "train.log_every=5", "train.compile=true"]
    straight = train(_cfg(tmp_path/"straight", *extra), data=records, progress=False)
    first = train(_cfg(tmp_path/"split", *extra), data=records, progress=False, callback=lambda m, _: m["step"] == 10)
    assert (first.stopped, first.step) == ("callback", 10)
    del first                                                            # a fresh process would not have it either
    second = train(_cfg(tmp_path/"split", *extra), data=records, progress=False, resume_from=tmp_path/"split")
    assert (second.first_step, second.step) == (10, 20)
    assert _max_gap(_params(straight.model), _params(second.model)) < 1e-6
    assert straight.losses[10:] == second.losses
    assert [r["loss"] for r in straight.metrics()] == [r["loss"] for r in second.metrics()]   # metrics.jsonl continues seamlessly
    assert find_checkpoint(tmp_path/"split") == (tmp_path/"split"/CKPT_DIR/"step_000020").resolve()

def test_resume_first_half_losses(records, tmp_path):
    "The losses of the first 10 steps of a split run are those of the straight run"
    extra = ["train.steps=20", "train.checkpoint_every=10", "train.compile=false"]
    a = train(_cfg(tmp_path/"a", *extra), data=records, progress=False)
    b = train(_cfg(tmp_path/"b", *extra), data=records, progress=False, callback=lambda m, _: m["step"] == 10)
    c = train(_cfg(tmp_path/"b", *extra), data=records, progress=False, resume_from=tmp_path/"b"/LAST)
    assert b.losses + c.losses == a.losses
    assert _max_gap(_params(a.model), _params(c.model)) == 0.0

KILLED_RUN = """
import sys, json, svlm
from svlm.core import load_config
from svlm.data import load_records
from svlm.train import train
cfg = load_config(None, json.loads(sys.argv[1]))
train(cfg, data=load_records(sys.argv[2]), progress=False, callback=lambda m, _: __import__("time").sleep(0.05))
"""

def test_killed_run_loses_only_the_steps_since_its_checkpoint(records, tmp_path):
    "SIGKILL a training process at some moment after its first checkpoint: resuming reaches the straight run's parameters"
    extra = ["train.steps=24", "train.checkpoint_every=4", "train.log_every=1", "train.compile=false"]
    straight = train(_cfg(tmp_path/"straight", *extra), data=records, progress=False)
    recs = tmp_path/"recs.jsonl"
    recs.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    out = tmp_path/"killed"
    p = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(BASE + [f"train.out={out}", *extra]), str(recs)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not (out/LAST).exists() and p.poll() is None and time.time() - t0 < 120: time.sleep(0.05)
    time.sleep(0.37)                                                     # somewhere between two checkpoints, or in one
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()
    st = json.loads((find_checkpoint(out)/"trainer_state.json").read_text())
    assert st["step"] % 4 == 0 and st["step"] < 24
    done = train(_cfg(out, *extra), data=records, progress=False, resume_from=out)
    assert done.first_step == st["step"] and done.step == 24
    assert _max_gap(_params(straight.model), _params(done.model)) == 0.0
    assert not list((out/CKPT_DIR).glob(".*"))                          # no half-written folder left behind

def test_nan_stops_and_keeps_the_last_good_checkpoint(records, tmp_path):
    def poison(m, model):
        if m["step"] == 5: model.model.norm.weight = mx.full(model.model.norm.weight.shape, float("inf"))
    cfg = _cfg(tmp_path/"run", "train.steps=10", "train.checkpoint_every=4", "train.compile=false")
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step 6: stopped without saving; the last good checkpoint is .*step_000004"):
        train(cfg, data=records, callback=poison, progress=False)
    model, tok, st = load_checkpoint(tmp_path/"run")
    assert st["step"] == 4 and all(np.isfinite(v).all() for v in _params(model).values())

def test_checkpoint_from_another_config(records, tmp_path):
    cfg = _cfg(tmp_path/"run", "train.steps=4", "train.checkpoint_every=4", "train.compile=false")
    train(cfg, data=records, progress=False)
    with pytest.raises(InputError, match=r"checkpoint from another config: train.batch_size: 2 in the checkpoint, 3 now"):
        train(_cfg(tmp_path/"run", "train.steps=8", "train.batch_size=3"), data=records, progress=False, resume_from=tmp_path/"run")
    with pytest.raises(InputError, match=r"cache.previous_sink_tokens: 16 in the checkpoint, 8 now"):   # set by its old name, tokenizer.sink
        train(_cfg(tmp_path/"run", "train.steps=8", "tokenizer.sink=8"), data=records, progress=False, resume_from=tmp_path/"run")
    with pytest.raises(InputError, match=r"train.model: 'tiny' in the checkpoint, 'tiny:num_hidden_layers=1' now"):
        train(_cfg(tmp_path/"run", "train.steps=8", "train.model=tiny:num_hidden_layers=1"), data=records, progress=False, resume_from=tmp_path/"run")
    with pytest.warns(UserWarning, match=r"changed optimizer settings: lr 0.001 -> 0.0005"):          # allowed: e.g. after a NaN
        r = train(_cfg(tmp_path/"run", "train.steps=6", "train.lr=0.0005", "train.compile=false"), data=records, progress=False, resume_from=tmp_path/"run")
    assert (r.first_step, r.step) == (4, 6)
    with pytest.raises(InputError, match="not a training checkpoint"):
        train(cfg, data=records, progress=False, resume_from=tmp_path)
    with pytest.raises(InputError, match="checkpoint not found"):
        train(cfg, data=records, progress=False, resume_from=tmp_path/"nope")

def test_resume_a_checkpoint_written_before_the_renames(records, tmp_path):
    "A checkpoint whose trainer state uses the old setting names (tokenizer.sink, train.window, video.chunk, ...) resumes, and loads"
    from svlm.train import checkpoint_config
    train(_cfg(tmp_path/"run", "train.steps=2", "train.checkpoint_every=2", "train.compile=false"), data=records, progress=False)
    p = find_checkpoint(tmp_path/"run")/"trainer_state.json"
    st = json.loads(p.read_text())
    rc, c = st["run_config"], st["config"]
    rc["tokenizer"].update(sink=rc.pop("cache")["previous_sink_tokens"], window=32)
    rc["train"]["window"], rc["train"]["stride"] = rc["train"].pop("window_s"), rc["train"].pop("stride_s")
    rc["video"]["chunk"] = rc["video"].pop("chunk_s")
    c["tokenizer"].update(sink=16, window=32)
    c["cache"] = {"sink": 16, "window": 32, "vision_window": c["cache"]["vision_rounds"], "n_sink": 4, "max_size": 4096, "step": 256, "mode": "streaming"}
    c["train"]["window"], c["train"]["stride"] = c["train"].pop("window_s"), c["train"].pop("stride_s")
    p.write_text(json.dumps(st))
    assert checkpoint_config(tmp_path/"run").cache.previous_window_tokens == 32
    r = train(_cfg(tmp_path/"run", "train.steps=3", "train.compile=false"), data=records, progress=False, resume_from=tmp_path/"run")
    assert (r.first_step, r.step) == (2, 3)

def test_bad_data(records, tmp_path):
    gone = replace(records[0], id="train:7", video="videos/missing.mp4")
    with pytest.raises(InputError, match=r"record 'train:7': video not found"):
        train(_cfg(tmp_path/"a", "train.steps=1"), data=[gone, records[1]], progress=False)
    with pytest.warns(UserWarning, match="skipped 1 record"):
        r = train(_cfg(tmp_path/"b", "train.steps=2", "train.missing_video=skip", "train.compile=false"), data=[gone, records[1]], progress=False)
    assert r.skipped == ["train:7"] and r.n_samples == 4
    with pytest.raises(InputError, match="no training samples: it has no records"):
        train(_cfg(tmp_path/"c", "train.steps=1"), data=[], progress=False)
    empty = tmp_path/"empty.jsonl"; empty.write_text("")
    with pytest.raises(InputError, match="empty.jsonl: no training samples"):
        train(_cfg(tmp_path/"d", "train.steps=1"), data=empty, progress=False)
    with pytest.raises(InputError, match="training records not found"):
        train(_cfg(tmp_path/"e", "train.steps=1"), data=tmp_path/"nope.jsonl", progress=False)

def test_short_video_names_the_record(records, tmp_path):
    long = replace(records[0], id="train:long", end=records[0].end + 2, chunks=records[0].chunks + [
        replace(records[0].chunks[-1], start=6.0, end=7.0), replace(records[0].chunks[-1], start=7.0, end=8.0)])
    with pytest.raises(InputError, match=r"record 'train:long': the video gives 12 frames .* its 8 chunks need 16"):
        train(_cfg(tmp_path/"a", "train.steps=4", "train.compile=false", "train.batch_size=8"), data=[long], progress=False)

def test_stale_temporary_checkpoint_is_removed(records, tmp_path):
    out = tmp_path/"run"
    (out/CKPT_DIR/".step_000004.tmp-999").mkdir(parents=True)
    (out/CKPT_DIR/".step_000004.tmp-999"/"model.safetensors").write_bytes(b"half")
    r = train(_cfg(out, "train.steps=2", "train.compile=false"), data=records, progress=False)
    assert sorted(p.name for p in (out/CKPT_DIR).iterdir()) == ["step_000002"] and r.checkpoint.name == "step_000002"

def test_grad_accum_and_freezing(records, tmp_path):
    r = train(_cfg(tmp_path/"a", "train.steps=3", "train.grad_accum=2", "train.freeze_vision=true", "train.compile=false"),
              data=records, progress=False)
    m0 = train(_cfg(tmp_path/"b", "train.steps=0"), data=records, progress=False).model   # the same seed, untrained
    a, b = _params(r.model), _params(m0)
    assert all((a[k] == b[k]).all() for k in a if k.startswith("visual."))          # the frozen encoder did not move
    assert any((a[k] != b[k]).any() for k in a if k.startswith("model."))
    assert sum(m["tokens"] > 0 for m in r.metrics()) == 1 and len(r.losses) == 3

def test_vision_warmup_trains_the_encoder_alone_then_everything(records, tmp_path):
    "train.vision_warmup steps on the pooled-vision loss alone move the encoder (and the head it is read through), not the decoder's blocks; the steps after move both"
    ex = ["train.weight_decay=0", "train.aux_weight=1", "train.vision_warmup=2", "train.compile=false"]
    b = _params(train(_cfg(tmp_path/"0", "train.steps=0"), data=records, progress=False).model)
    a = _params(train(_cfg(tmp_path/"w", "train.steps=2", *ex), data=records, progress=False).model)
    assert any((a[k] != b[k]).any() for k in a if k.startswith("visual."))
    assert all((a[k] == b[k]).all() for k in a if k.startswith("model.layers."))
    f = train(_cfg(tmp_path/"f", "train.steps=3", *ex), data=records, progress=False)
    c = _params(f.model)
    assert any((c[k] != b[k]).any() for k in c if k.startswith("model.layers.")) and all(math.isfinite(x) for x in f.losses)

def test_vision_warmup_is_for_a_decoder_from_scratch(records, tmp_path):
    "Fine-tuning a model folder (or LoRA) starts on the whole loss: the warm-up would leave the trained decoder where it is; a warm-up as long as the run is warned about"
    ex = ["train.weight_decay=0", "train.aux_weight=1", "train.vision_warmup=5", "train.compile=false"]
    with pytest.warns(UserWarning, match="decoder never trains"):
        base = train(_cfg(tmp_path/"base", "train.steps=2", *ex), data=records, progress=False)
    b = _params(base.model)
    ft = train(_cfg(tmp_path/"ft", "train.steps=1", f"train.model={tmp_path/'base'/'last'}", *ex), data=records, progress=False)
    a = _params(ft.model)
    assert any((a[k] != b[k]).any() for k in a if k.startswith("model.layers."))

@pytest.mark.parametrize("name", ["optimizer.safetensors", "model.safetensors", "trainer_state.json"])
def test_truncated_checkpoint_file_is_refused_by_name(records, tmp_path, name):
    "Every file of a checkpoint goes through a checked reader: `svlm train --resume-from` exits 2 naming the file, and writes nothing"
    from svlm.cli import main
    train(_cfg(tmp_path/"run", "train.steps=2", "train.checkpoint_every=2", "train.compile=false"), data=records, progress=False)
    ck = find_checkpoint(tmp_path/"run")
    p = ck/name
    p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])
    before = sorted((q.relative_to(tmp_path), q.stat().st_mtime_ns) for q in tmp_path.rglob("*") if q.is_file())
    data = tmp_path/"train.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    err = __import__("io").StringIO()
    with __import__("contextlib").redirect_stderr(err):
        rc = main(["train", "--data", str(data), "--resume-from", str(tmp_path/"run"), *BASE, f"train.out={tmp_path/'run'}", "train.steps=4"])
    assert rc == 2 and name in err.getvalue(), err.getvalue()
    after = sorted((q.relative_to(tmp_path), q.stat().st_mtime_ns) for q in tmp_path.rglob("*") if q.is_file() and q != data)
    assert after == before
