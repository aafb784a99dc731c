"`svlm train` on Qwen2.5-VL checkpoints (#17 item 2): StreamingVLM's windows on a tiny random Qwen2.5-VL saved by transformers; the loss against the cross-entropy written out in NumPy over the inference path's logits; gradient checkpointing changes nothing; resume is exact; LoRA on it; the trained folder streams through `svlm infer`."
import svlm  # before mlx: loads OpenBLAS on Linux
import json
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
from svlm.core import load_config
from svlm.train import train, load, vl_vision, vl_loss, collate, memory_estimate
from svlm.cli import main

torch = pytest.importorskip("torch")


def hf_tiny(path, seed=0):
    from tiny_qwen import hf_qwen25vl
    hf_qwen25vl(seed, depth=1, scale=0.05, norm_scale=0.05).save_pretrained(path)
    return path


BASE = ["train.window_s=4", "train.stride_s=2", "train.batch_size=2", "train.log_every=1", "synth.n_clips=2", "synth.duration=8",
        "video.max_pixels=6272", "train.lr=3e-3", "train.warmup=1", "cache.previous_sink_tokens=16", "cache.previous_window_tokens=16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("vltrain")
    hf_tiny(d/"hf")
    r = train(load_config(None, BASE + [f"train.model={d/'hf'}", f"train.out={d/'run'}", "train.steps=6", "train.checkpoint_every=3"]), progress=False)
    return d, r


def cfg(d, out, steps, *extra):
    return load_config(None, BASE + [f"train.model={d/'hf'}", f"train.out={d/out}", f"train.steps={steps}", "train.checkpoint_every=3",
                                     f"train.data={d/'run'/'data'/'train.jsonl'}", *extra])


def test_trains_and_saves_a_qwen25vl_folder(run):
    d, r = run
    assert r.losses[-1] < r.losses[0]
    ck = d/"run"/"last"
    assert json.loads((ck/"config.json").read_text())["model_type"] == "qwen2_5_vl"
    model, tok, _ = load(d/"run")
    assert type(model).__name__ == "Qwen25VL" and tok.special_ids["<|video_pad|>"] == model.config.video_token_id


def test_loss_equals_the_cross_entropy_written_out(run):
    "vl_loss against NumPy's log-softmax over the logits of the inference path (`Qwen25VL.embed` + `get_rope_index` positions)"
    d, _ = run
    from svlm.train import _setup
    c = cfg(d, "probe", 1)
    s = _setup(c, None, None, d/"probe", False)
    mb = collate([s.ds.samples[0], s.ds.samples[1]], s.frames.frames, s.tok.token_id("<|endoftext|>"))
    rows, grids, pos = vl_vision(s.model, mb.input_ids, mb.frames, c.video.fps)
    loss, n = vl_loss(s.model, mx.array(mb.input_ids), mx.array(mb.labels), (rows, grids, pos))
    ids = mx.array(mb.input_ids)
    pos_ref, _ = s.model.config.rope_index(mb.input_ids, None, np.array(grids), [1.0] * len(np.array(grids)))
    logits = np.array(s.model(ids, pos_ref, None, s.model.embed(ids, pixel_values_videos=rows, video_grid_thw=grids)), np.float64)
    lg, tg = logits[:, :-1], mb.labels[:, 1:]
    m = tg != -100
    lp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
    ref = -np.take_along_axis(lp, np.where(m, tg, 0)[..., None], -1)[..., 0][m].mean()
    assert int(n.item()) == int(m.sum()) > 0
    assert abs(loss.item() - ref) < 1e-4


def test_grad_checkpoint_and_resume_are_exact(run):
    d, r = run
    g = train(cfg(d, "ckpt", 6, "train.grad_checkpoint=true"), progress=False)
    assert max(abs(a - b) for a, b in zip(r.losses, g.losses)) < 1e-5          # the same step, its activations recomputed
    train(cfg(d, "resumed", 6), callback=lambda m, model: m["step"] == 3, progress=False)   # stopped at step 3 of the same schedule
    res = train(cfg(d, "resumed", 6), resume_from=d/"resumed", progress=False)
    assert max(abs(a - b) for a, b in zip(r.losses[3:], res.losses)) < 1e-6
    a, b = (mx.load(str(d/x/"last"/"model.safetensors")) for x in ("run", "resumed"))
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_lora_on_qwen25vl_and_stream_the_result(run, tmp_path, capsys):
    d, _ = run
    lo = train(cfg(d, "lora", 3, "train.lora_rank=4", f"train.model={d/'run'/'last'}"), progress=False)
    assert np.isfinite(lo.losses).all()
    assert main(["fuse", "--checkpoint", str(d/"lora"), "--out", str(tmp_path/"fused")]) == 0
    clip = next((d/"run"/"data").rglob("*.mp4"))
    assert main(["infer", "--checkpoint", str(tmp_path/"fused"), "--video", str(clip), "--output-vtt", str(tmp_path/"c.vtt"),
                 "video.max_pixels=6272", "sampling.max_new_tokens=3"]) == 0
    assert (tmp_path/"c.vtt").read_text().startswith("WEBVTT")


def test_memory_estimate_counts_what_trains(run):
    d, _ = run
    model, _, _ = load(d/"run")
    full, ck = memory_estimate(model, 1000), memory_estimate(model, 1000, checkpointed=True)
    assert full["weights_gb"] == ck["weights_gb"] > 0 and ck["activations_gb"] < full["activations_gb"]
    model.freeze()
    assert memory_estimate(model, 1000)["optimizer_gb"] == 0
