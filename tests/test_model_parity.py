"Parity of svlm's decoder with transformers' Qwen2ForCausalLM (fp32, random weights), checkpoint round trips, and mlx-lm interop."
import svlm  # before mlx: loads OpenBLAS on Linux
import json
import numpy as np
import pytest
import torch
import mlx.core as mx
from mlx.utils import tree_flatten
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging
from svlm.core import InputError
from svlm.model import (Model, ModelConfig, KVCache, preset, save_model, load_model, read_weights, assign_weights,
                        INDEX_NAME, WEIGHTS_NAME)

hf_logging.disable_progress_bar()
TOL = 1e-4  # fp32 on both sides: the observed gap is ~1e-5 on logits of magnitude ~5; a mapping/layout bug gives > 0.1
VOCAB = 300


def hf_model(tie: bool, kv_heads: int, rope_theta: float = 1e6, seed: int = 0) -> Qwen2ForCausalLM:
    "A tiny random Qwen2ForCausalLM with every parameter (biases and norms included) set to non-trivial random values"
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=kv_heads, rope_theta=rope_theta, tie_word_embeddings=tie,
                      max_position_embeddings=1024, attn_implementation="eager")
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return m


def hf_logits(m, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad(): return m(torch.tensor(ids)).logits.float().numpy()


def ids_for(B: int, T: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (B, T))


CASES = [  # (tied embeddings, kv heads): GQA 4:2 and 4:1 (MQA), plus plain multi-head attention
    pytest.param(False, 2, id="untied-gqa2"),
    pytest.param(True, 2, id="tied-gqa2"),
    pytest.param(True, 1, id="tied-mqa"),
    pytest.param(False, 4, id="untied-mha"),
]


@pytest.mark.parametrize("tie,kv", CASES)
def test_logits_match_transformers(tmp_path, tie, kv):
    hf = hf_model(tie, kv)
    hf.save_pretrained(tmp_path)
    assert ("lm_head.weight" in read_weights(tmp_path)) == (not tie)
    ours = load_model(tmp_path)
    assert ours.config.tie_word_embeddings == tie and ours.config.num_key_value_heads == kv
    ids = ids_for(2, 40)
    ref = hf_logits(hf, ids)
    got = np.array(ours(mx.array(ids)))
    assert got.dtype == np.float32 and np.abs(ref).max() > 1.0
    assert np.abs(got - ref).max() < TOL


@pytest.mark.parametrize("tie,kv", CASES[:2])
def test_cached_decoding_matches_full_forward(tmp_path, tie, kv):
    "Prefill 250 tokens, then decode one token at a time across the cache's 256-token growth step"
    hf = hf_model(tie, kv, seed=3)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    ids = ids_for(1, 270, seed=4)
    ref = hf_logits(hf, ids)
    cache = ours.make_cache()
    out = [ours(mx.array(ids[:, :250]), cache=cache)]
    out += [ours(mx.array(ids[:, t:t + 1]), cache=cache) for t in range(250, 270)]
    got = np.array(mx.concatenate(out, axis=1))
    assert cache[0].offset == 270 and cache[0].keys.shape[2] == 512
    assert np.abs(got - ref).max() < TOL


def test_greedy_generation_matches_transformers(tmp_path):
    hf = hf_model(False, 2, seed=5)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    prompt = ids_for(1, 12, seed=6)
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt), max_new_tokens=16, do_sample=False, pad_token_id=0).numpy()[0, 12:]
    cache = ours.make_cache()
    y = mx.argmax(ours(mx.array(prompt), cache=cache)[:, -1], axis=-1, keepdims=True)
    got = [y.item()]
    for _ in range(15):
        y = mx.argmax(ours(y, cache=cache)[:, -1], axis=-1, keepdims=True)
        got.append(y.item())
    assert got == want.tolist()


def test_sharded_transformers_folder(tmp_path):
    hf = hf_model(False, 2, rope_theta=10000.0)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / INDEX_NAME).exists() and not (tmp_path / WEIGHTS_NAME).exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ours = load_model(tmp_path)
    assert ours.config.rope_theta == 10000.0
    ids = ids_for(1, 33)
    assert np.abs(np.array(ours(mx.array(ids))) - hf_logits(hf, ids)).max() < TOL


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_loads_svlm_checkpoint(tmp_path, tie):
    "A decoder-only svlm checkpoint is a valid Qwen2ForCausalLM folder, sharded or not"
    mx.random.seed(7)
    ours = Model(preset("tiny", vision_tower=False, tie_word_embeddings=tie, vocab_size=VOCAB))
    save_model(ours, tmp_path, max_shard_size=60_000)
    assert (tmp_path / INDEX_NAME).exists()
    hf = Qwen2ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = ids_for(2, 20)
    assert np.abs(np.array(ours(mx.array(ids))) - hf_logits(hf, ids)).max() < TOL


def test_fp16_close_to_fp32(tmp_path):
    hf_model(False, 2).save_pretrained(tmp_path)
    ids = mx.array(ids_for(1, 30))
    f32 = np.array(load_model(tmp_path)(ids))
    f16 = np.array(load_model(tmp_path, dtype=mx.float16)(ids).astype(mx.float32))
    assert np.abs(f16 - f32).max() < 0.1  # fp16 carries ~3 significant digits on logits of magnitude ~5


def test_vision_checkpoint_round_trip(tmp_path):
    m = Model(preset("tiny"))
    save_model(m, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["vision_tower"] is True and cfg["architectures"] == ["Qwen2ForCausalLM"]
    back = load_model(tmp_path)
    frames = mx.random.randint(0, 256, (2, 2, 56, 84, 3)).astype(mx.uint8)
    assert np.array_equal(np.array(back.encode_video(frames)), np.array(m.encode_video(frames)))


def test_bad_checkpoints(tmp_path):
    hf_model(False, 2).save_pretrained(tmp_path / "ok")
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    # a config without a required key names it
    (tmp_path / "nokey").mkdir()
    (tmp_path / "nokey" / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "num_hidden_layers"}))
    with pytest.raises(InputError, match="field 'num_hidden_layers': missing required key"): load_model(tmp_path / "nokey")
    # missing and unexpected names, in one error
    w = read_weights(tmp_path / "ok")
    w.pop("model.layers.1.mlp.up_proj.weight"); w["model.layers.9.extra.weight"] = mx.zeros(3)
    with pytest.raises(InputError, match=r"1 missing: model.layers.1.mlp.up_proj.weight; 1 unexpected: model.layers.9.extra.weight"):
        assign_weights(Model(ModelConfig.from_dict(cfg)), w)
    # a wrong shape names the parameter and both shapes
    w = read_weights(tmp_path / "ok")
    w["model.norm.weight"] = mx.ones(32)
    with pytest.raises(InputError, match=r"field 'model.norm.weight': wrong shape: model.norm.weight: \(32,\) in the checkpoint, \(64,\) in the model"):
        assign_weights(Model(ModelConfig.from_dict(cfg)), w)
    # another architecture is refused by name
    with pytest.raises(InputError, match="model_type 'llama'"): ModelConfig.from_dict(dict(cfg, model_type="llama"))


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = Model(preset("tiny", vision_tower=False))
    save_model(m, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    def boom(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(mx, "save_safetensors", boom)
    with pytest.raises(OSError): save_model(Model(preset("tiny", vision_tower=False)), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, nothing replaced


def test_mlx_lm_cache_and_generate_step(tmp_path):
    "mlx-lm's own KVCache and generation loop drive svlm's model; mlx-lm's qwen2 loads an svlm checkpoint"
    from mlx_lm.models.cache import KVCache as MlxLmKVCache, make_prompt_cache
    from mlx_lm.generate import generate_step
    from mlx_lm.models import qwen2
    mx.random.seed(0)
    ours = Model(preset("tiny", vision_tower=False))
    ids = mx.array(ids_for(1, 20))
    full = np.array(ours(ids))
    for cache in ([MlxLmKVCache() for _ in ours.layers], make_prompt_cache(ours)):
        out = [ours(ids[:, :12], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(12, 20)]
        assert np.abs(np.array(mx.concatenate(out, axis=1)) - full).max() < TOL
    assert isinstance(make_prompt_cache(ours)[0], KVCache)
    toks = [t for t, _ in generate_step(ids[0], ours, max_tokens=8)]
    cache = ours.make_cache()
    y = mx.argmax(ours(ids, cache=cache)[:, -1], axis=-1, keepdims=True)
    want = [y.item()]
    for _ in range(7):
        y = mx.argmax(ours(y, cache=cache)[:, -1], axis=-1, keepdims=True); want.append(y.item())
    assert toks == want
    save_model(ours, tmp_path)
    ref = qwen2.Model(qwen2.ModelArgs.from_dict(json.loads((tmp_path / "config.json").read_text())))
    ref.load_weights(list(read_weights(tmp_path).items()), strict=True)
    assert np.abs(np.array(ref(ids)) - full).max() < TOL
