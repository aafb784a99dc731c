"LoRA and QLoRA (#17 item 1): only the adapters train, checkpoints hold adapters in mlx-lm's layout and resume bit for bit, mlx-lm reads them, `svlm fuse` folds them into a model folder that loads and streams, and bad adapter settings are refused by field."
import svlm  # before mlx: loads OpenBLAS on Linux
import json, os
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from svlm.core import load_config, InputError
from svlm.model import load_model, Model, preset
from svlm.tokenizer import ByteTokenizer
from svlm.train import train, load, fuse, apply_lora, adapter_weights, LoRALinear, ADAPTERS, ADAPTER_CONFIG, quantize_base
from svlm.cli import main

BASE = ["train.model=tiny", "train.window_s=3", "train.stride_s=1", "train.batch_size=2", "train.log_every=2", "synth.n_clips=2",
        "synth.duration=8", "train.compile=false"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    train(load_config(None, BASE + [f"train.out={d/'base'}", "train.steps=6", "train.checkpoint_every=6"]), progress=False)
    return d


def lora_args(d, out, steps, *extra):
    return load_config(None, BASE + [f"train.model={d/'base'/'last'}", "train.lora_rank=4", "train.lora_alpha=8", "train.lr=5e-3",
                                     f"train.data={d/'base'/'data'/'train.jsonl'}", f"train.out={d/out}", f"train.steps={steps}",
                                     "train.checkpoint_every=4", *extra])


@pytest.fixture(scope="module")
def lora_run(base_run):
    r = train(lora_args(base_run, "lora", 8), progress=False)
    return base_run, r


def test_only_adapters_train_and_the_base_is_untouched(lora_run):
    d, r = lora_run
    assert r.losses[-1] < r.losses[0]
    ck = d/"lora"/"last"
    assert {p.name for p in ck.iterdir()} >= {ADAPTERS, ADAPTER_CONFIG, "optimizer.safetensors", "trainer_state.json"}
    assert not (ck/"model.safetensors").exists()                      # the adapters only: the base is referenced
    ac = json.loads((ck/ADAPTER_CONFIG).read_text())
    assert ac["fine_tune_type"] == "lora" and ac["lora_parameters"]["rank"] == 4 and ac["lora_parameters"]["scale"] == 2.0
    model, tok, cfg = load(d/"lora")
    base = dict(tree_flatten(load_model(d/"base"/"last").parameters()))
    ours = {k.replace(".linear.", "."): v for k, v in tree_flatten(model.parameters()) if "lora_" not in k}
    assert set(ours) == set(base) and all(mx.array_equal(ours[k], base[k]).item() for k in base)
    assert max(mx.abs(v).max().item() for k, v in adapter_weights(model).items() if k.endswith("lora_b")) > 0


def test_resume_is_exact(lora_run):
    d, _ = lora_run
    train(lora_args(d, "lora2", 8), callback=lambda m, model: m["step"] == 4, progress=False)   # stopped half-way through the same schedule
    train(lora_args(d, "lora2", 8), resume_from=d/"lora2", progress=False)
    a, b = (mx.load(str(d/x/"last"/ADAPTERS)) for x in ("lora", "lora2"))
    assert set(a) == set(b) and all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_mlx_lm_reads_the_adapters(lora_run):
    "mlx-lm's own loader, on a fresh copy of the base, gives the model svlm trained"
    from mlx_lm.tuner.utils import load_adapters
    d, _ = lora_run
    ours, _, _ = load(d/"lora")
    theirs = load_adapters(load_model(d/"base"/"last"), str(d/"lora"/"last"))
    x = mx.array([[5, 17, 200, 3, 3, 3, 9]])
    assert mx.abs(ours(x) - theirs(x)).max().item() < 1e-5


def test_fuse_gives_a_model_folder_that_computes_the_same(lora_run, tmp_path):
    d, _ = lora_run
    model, _, _ = load(d/"lora")
    assert main(["fuse", "--checkpoint", str(d/"lora"), "--out", str(tmp_path/"fused")]) == 0
    fused = load_model(tmp_path/"fused")
    x = mx.array([[5, 17, 200, 3, 3, 3, 9]])
    assert mx.abs(fused(x) - model(x)).max().item() < 1e-5                 # one weight W + scale·(AB)ᵀ in fp32: rounding of W's sum only
    assert main(["fuse", "--checkpoint", str(d/"lora"), "--out", str(tmp_path/"fused")]) == 2   # never over a model
    assert main(["fuse", "--checkpoint", str(d/"lora"), "--out", str(tmp_path/"q8"), "--quantize", "8"]) == 0
    q = load_model(tmp_path/"q8")
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in q.named_modules())
    assert mx.abs(q(x) - model(x)).max().item() < 0.1                      # 8-bit rounding of the fused weights
    assert main(["fuse", "--checkpoint", str(d/"base"), "--out", str(tmp_path/"none")]) == 2     # not a LoRA run


def test_qlora_trains_on_a_quantized_base(lora_run, tmp_path):
    "A 4-bit base, rank-8 adapters on every linear layer of the blocks, a small set (one 6 s clip): the loss falls by half"
    d, _ = lora_run
    c = load_config(None, [f"train.model={d/'base'/'last'}", "train.window_s=3", "train.stride_s=3", "train.batch_size=2", "synth.n_clips=1",
                           "synth.duration=6", "train.compile=false", "train.lr=3e-3", "train.warmup=2", "train.steps=40", "train.checkpoint_every=40",
                           "train.lora_rank=8", "train.lora_alpha=16", "train.lora_keys=q,k,v,o,gate,up,down", "train.quantize_base=4",
                           f"train.out={d/'qlora'}"])
    r = train(c, progress=False)
    assert np.mean(r.losses[-3:]) < r.losses[0] / 2, (r.losses[0], r.losses[-3:])
    model, _, _ = load(d/"qlora")
    q = model.layers[0].self_attn.q_proj
    assert isinstance(q, LoRALinear) and isinstance(q.linear, nn.QuantizedLinear) and q.linear.bits == 4
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)    # the frozen base is quantized everywhere it can be
    fused = load_model(fuse(d/"qlora", tmp_path/"fq"))                    # stays 4-bit, as it was trained: W + scale·(AB)ᵀ quantized once more
    want = nn.QuantizedLinear.from_linear(q.fused(), q.linear.group_size, 4)
    got = fused.layers[0].self_attn.q_proj
    assert all(mx.array_equal(getattr(got, k), getattr(want, k)).item() for k in ("weight", "scales", "biases"))


def test_lora_layers_and_vision():
    mx.random.seed(0)
    tok = ByteTokenizer()
    m = Model(preset("tiny", vocab_size=tok.vocab_size, video_pad_id=tok.token_id("<|video_pad|>")))
    ac = apply_lora(m, rank=2, alpha=4, keys="down,up", layers=1, vision=True)
    assert ac["num_layers"] == 1 and ac["lora_parameters"]["keys"] == ["mlp.down_proj", "mlp.up_proj"]
    assert not isinstance(m.layers[0].mlp.up_proj, LoRALinear) and isinstance(m.layers[-1].mlp.up_proj, LoRALinear)
    vis = [k for k, x in m.visual.named_modules() if isinstance(x, LoRALinear)]
    assert vis
    trainable = {k for k, _ in tree_flatten(m.trainable_parameters())}
    assert trainable == set(adapter_weights(m))


@pytest.mark.parametrize("over,field", [("train.lora_keys=q,cross", "train.lora_keys"), ("train.lora_layers=99", "train.lora_layers"),
                                        ("train.quantize_base=3", "train.quantize_base")])
def test_bad_lora_settings_are_refused_by_field(lora_run, over, field):
    d, _ = lora_run
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        train(lora_args(d, f"bad-{field}", 2, over), progress=False)
    assert not (d/f"bad-{field}"/"last").exists()


def test_qlora_without_lora_is_refused(base_run):
    with pytest.raises(InputError, match="lora_rank"):
        train(load_config(None, BASE + [f"train.out={base_run/'q'}", "train.steps=1", "train.quantize_base=4"]), progress=False)
