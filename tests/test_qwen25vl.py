"Qwen2.5-VL in svlm against transformers 5.24 (fp32, random weights): config layouts, M-RoPE, positions, logits, cached decoding, checkpoint layouts and loading errors."
import svlm  # before mlx: loads OpenBLAS on Linux
import copy, json, re
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from safetensors.torch import save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding
from transformers.utils import logging as hf_logging
from svlm.core import InputError
from svlm.model import read_weights, INDEX_NAME
from svlm.qwen25vl import (Qwen25VLConfig, Qwen25VL, get_rope_index, mrope_cos_sin, mrope_inv_freq, apply_mrope,
                           text_positions, load_qwen25vl, qwen25vl_weights)

hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
TOL = 1e-4    # fp32 on both sides: observed ~1e-5 on logits of magnitude ~6; a layout or mapping bug gives > 1e-2
TOK = dict(image_token_id=4, video_token_id=5, vision_start_token_id=3)
TPS = 3       # tokens_per_second given to get_rope_index: with 0.5 s per temporal patch the step is 1.5 (fractional)
ROW = 3 * 2 * 14 * 14


def hf_config(tie=True, kv=2, layers=2, mrope=(2, 3, 3), theta=100.0, fullatt=(1,), depth=2) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv,
                         vocab_size=99, rope_theta=theta, rms_norm_eps=1e-6, tie_word_embeddings=tie,
                         rope_scaling={"type": "mrope", "mrope_section": list(mrope)}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, fullatt_block_indexes=list(fullatt), tokens_per_second=2),
        image_token_id=4, video_token_id=5, vision_start_token_id=3, vision_end_token_id=6, tie_word_embeddings=tie)


def hf_model(seed=0, **kw) -> Qwen2_5_VLForConditionalGeneration:
    "Tiny random model, every parameter (biases, norms) non-trivial"
    torch.manual_seed(seed)
    m = Qwen2_5_VLForConditionalGeneration(hf_config(**kw)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters(): p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in n or "ln_q" in n else 0.2 * torch.randn_like(p))
    return m


def save_in_memory_layout(m, path, max_keys=None):
    "state_dict() names (model.visual.*, model.language_model.*), optionally sharded by key count with an index"
    path.mkdir(parents=True, exist_ok=True); m.config.save_pretrained(path)
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if not (k == "lm_head.weight" and m.config.tie_word_embeddings)}
    if max_keys is None: save_file(sd, str(path/"model.safetensors")); return path
    ks = list(sd); parts = [ks[i:i + max_keys] for i in range(0, len(ks), max_keys)]
    wm = {}
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: sd[k] for k in part}, str(path/name)); wm.update({k: name for k in part})
    (path/INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return path


def rng_rows(rng, n): return rng.standard_normal((n, ROW)).astype(np.float32)


def prompt(kind, rng):
    "(input_ids, vision kwargs, second_per_grid_ts) for kind in text / image / video / mixed / batch"
    if kind == "text": return rng.integers(7, 99, (2, 30)), {}, None
    if kind == "image":   # 12×16 patches: 2×... windows of 8×8 patches, so windowed and full blocks differ
        return np.array([[7, 8, 3] + [4] * 48 + [6, 9, 10]]), dict(pixel_values=rng_rows(rng, 192), image_grid_thw=np.array([[1, 12, 16]])), None
    if kind == "video":   # two temporal patches of 8×12 at 4 fps
        return np.array([[7, 3] + [5] * 48 + [6, 8, 9]]), dict(pixel_values_videos=rng_rows(rng, 192), video_grid_thw=np.array([[2, 8, 12]])), [0.5]
    if kind == "mixed":   # image, video chunk, text, video chunk (StreamingVLM-like), grids in order
        ids = [7, 3] + [4] * 12 + [6, 8, 3] + [5] * 24 + [6, 9, 10, 3] + [5] * 12 + [6, 11]
        vis = dict(pixel_values=rng_rows(rng, 48), image_grid_thw=np.array([[1, 6, 8]]),
                   pixel_values_videos=rng_rows(rng, 96 + 48), video_grid_thw=np.array([[2, 6, 8], [1, 6, 8]]))
        return np.array([ids]), vis, [1.0, 0.5]
    if kind == "batch":   # two rows, one video each: grids consumed across rows
        row = lambda a: [7, a, 3] + [5] * 12 + [6, 9]
        return np.array([row(20), row(30)]), dict(pixel_values_videos=rng_rows(rng, 96), video_grid_thw=np.array([[1, 6, 8], [1, 6, 8]])), [1.0, 0.5]
    raise ValueError(kind)


def positions(ids, vis, spg):
    return get_rope_index(ids, vis.get("image_grid_thw"), vis.get("video_grid_thw"), spg, tokens_per_second=TPS, **TOK)


def hf_logits(hf, ids, pos, vis):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), position_ids=torch.tensor(np.array(pos)), **{k: torch.tensor(v) for k, v in vis.items()}).logits.float().numpy()


def our_logits(m, ids, pos, vis):
    h = m.embed(mx.array(ids), **{k: mx.array(v) for k, v in vis.items()})
    return np.array(m(mx.array(ids), pos, input_embeddings=h).astype(mx.float32))


# ---------------------------------------------------------------- config
@pytest.fixture(scope="module")
def v5_dict(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg"); hf_config().save_pretrained(d)
    return json.loads((d/"config.json").read_text())


def flat_4x(v5):
    t = v5["text_config"]
    out = {k: v for k, v in t.items() if k not in ("rope_parameters", "model_type", "layer_types")}
    out.update(model_type="qwen2_5_vl", rope_theta=t["rope_parameters"]["rope_theta"], tie_word_embeddings=v5["tie_word_embeddings"],
               rope_scaling={"type": "mrope", "rope_type": "default", "mrope_section": t["rope_parameters"]["mrope_section"]},
               vision_config={**{k: v for k, v in v5["vision_config"].items() if k != "rope_parameters"}, "model_type": "qwen2_5_vl", "in_chans": 3},
               **{k: v5[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")})
    return out


def test_config_layouts_agree(v5_dict):
    c = Qwen25VLConfig.from_hf(v5_dict)
    assert (c.mrope_section, c.rope_theta, c.head_dim, c.num_key_value_heads, c.tie_word_embeddings) == ((2, 3, 3), 100.0, 16, 2, True)
    assert (c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id) == (4, 5, 3, 6)
    assert c.vision.fullatt_block_indexes == (1,) and c.vision.out_hidden_size == 64
    assert Qwen25VLConfig.from_hf(flat_4x(v5_dict)) == c
    nested_4x = {**v5_dict, "text_config": flat_4x(v5_dict)}                  # 4.5x nested saves: rope_scaling inside text_config
    assert Qwen25VLConfig.from_hf(nested_4x) == c
    tie_inside = {**v5_dict, "tie_word_embeddings": False}                     # pre-v5 save: tie only in text_config
    assert Qwen25VLConfig.from_hf(tie_inside).tie_word_embeddings


@pytest.mark.parametrize("change,match", [
    (lambda d: {**d, "model_type": "qwen2_vl"}, "field 'model_type'.*'qwen2_vl' is not supported"),
    (lambda d: {**d, "model_type": "qwen3_vl"}, "field 'model_type'.*'qwen3_vl' is not supported"),
    (lambda d: {k: v for k, v in d.items() if k != "model_type"}, "field 'model_type'"),
    (lambda d: {**d, "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 2]}}, "field 'mrope_section'.*head_dim // 2 = 8"),
    (lambda d: {**d, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "field 'rope_scaling'.*'yarn'"),
    (lambda d: {**d, "use_sliding_window": True}, "field 'use_sliding_window'"),
    (lambda d: {**d, "hidden_act": "gelu"}, "field 'hidden_act'"),
    (lambda d: {**d, "head_dim": 32}, "field 'head_dim'"),
    (lambda d: {k: v for k, v in d.items() if k != "vision_config"}, "field 'vision_config'"),
    (lambda d: {k: v for k, v in d.items() if k != "num_hidden_layers"}, "field 'num_hidden_layers'"),
    (lambda d: {**d, "vision_config": {**d["vision_config"], "out_hidden_size": 32}}, "field 'vision_config.out_hidden_size'"),
    (lambda d: {**d, "num_key_value_heads": 3}, "field 'num_key_value_heads'"),
])
def test_config_errors(v5_dict, change, match):
    with pytest.raises(InputError, match=match): Qwen25VLConfig.from_hf(change(flat_4x(v5_dict)), "config.json")


# ---------------------------------------------------------------- M-RoPE
@pytest.mark.parametrize("head_dim,section,theta", [(16, (2, 3, 3), 100.0), (16, (4, 2, 2), 1e4), (128, (16, 24, 24), 1e6), (64, (8, 12, 12), 5e5)])
def test_rotary_matches_transformers(head_dim, section, theta):
    tcfg = Qwen2_5_VLConfig(text_config=dict(hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=theta,
                                             rope_scaling={"type": "mrope", "mrope_section": list(section)})).text_config
    rng = np.random.default_rng(0)
    pos = np.cumsum(rng.uniform(0, 2, (3, 2, 40)), axis=-1) + rng.choice([0, 0.5, 1000], (3, 2, 1))   # fractional, up to ~1e3
    ref_cos, ref_sin = Qwen2_5_VLRotaryEmbedding(tcfg)(torch.zeros(1), torch.tensor(pos, dtype=torch.float32))
    cos, sin = mrope_cos_sin(mx.array(pos.astype(np.float32)), mrope_inv_freq(head_dim, theta), section)
    assert np.abs(np.array(cos) - ref_cos.numpy()).max() < 1e-4 and np.abs(np.array(sin) - ref_sin.numpy()).max() < 1e-4


def test_mrope_on_text_positions_is_plain_rope():
    x = mx.random.normal((2, 3, 9, 32))
    pos = text_positions(2, 9, 17)
    cos, sin = mrope_cos_sin(pos, mrope_inv_freq(32, 1e4), (4, 6, 6))
    assert np.abs(np.array(apply_mrope(x, cos, sin)) - np.array(nn.RoPE(32, base=1e4)(x, offset=17))).max() < 1e-4


# ---------------------------------------------------------------- positions
def rope_index_4x(ids, image_grid_thw, video_grid_thw, second_per_grid_ts, tokens_per_second, merge=2, truncate=False,
                  image_token_id=4, video_token_id=5, vision_start_token_id=3):
    "A transcription of transformers 4.5x's `get_rope_index` (no attention mask), with its `.long()` optional"
    B, T = ids.shape
    out, deltas, ii, vi = np.zeros((3, B, T)), [], 0, 0
    for b in range(B):
        toks = ids[b].tolist()
        starts = np.flatnonzero(ids[b] == vision_start_token_id)
        vt = ids[b][starts + 1]
        n_img, n_vid = int((vt == image_token_id).sum()), int((vt == video_token_id).sum())
        parts, st, ri, rv = [], 0, n_img, n_vid
        for _ in range(n_img + n_vid):
            ed_i = toks.index(image_token_id, st) if image_token_id in toks[st:] and ri > 0 else T + 1
            ed_v = toks.index(video_token_id, st) if video_token_id in toks[st:] and rv > 0 else T + 1
            if ed_i < ed_v: (t, h, w), spg, ed = image_grid_thw[ii], 0, ed_i; ii += 1; ri -= 1
            else: (t, h, w), spg, ed = video_grid_thw[vi], (1.0 if second_per_grid_ts is None else second_per_grid_ts[vi]), ed_v; vi += 1; rv -= 1
            gt, gh, gw = int(t), int(h) // merge, int(w) // merge
            text_len = ed - st
            st_idx = parts[-1].max() + 1 if parts else 0
            parts.append(np.broadcast_to(np.arange(text_len) + st_idx, (3, text_len)))
            time = np.repeat(np.arange(gt), gh * gw) * spg * tokens_per_second
            t_index = np.trunc(time) if truncate else time
            h_index = np.tile(np.repeat(np.arange(gh), gw), gt)
            w_index = np.tile(np.arange(gw), gt * gh)
            parts.append(np.stack([t_index, h_index, w_index]) + text_len + st_idx)
            st = ed + gt * gh * gw
        if st < T:
            st_idx = parts[-1].max() + 1 if parts else 0
            parts.append(np.broadcast_to(np.arange(T - st) + st_idx, (3, T - st)))
        p = np.concatenate(parts, axis=1)
        out[:, b] = p; deltas.append(p.max() + 1 - T)
    return out, np.array(deltas)[:, None]


@pytest.mark.parametrize("kind", ["text", "image", "video", "mixed", "batch"])
@pytest.mark.parametrize("tps", [1, 2, 3])
def test_rope_index_matches_4x_reference(kind, tps):
    ids, vis, spg = prompt(kind, np.random.default_rng(0))
    pos, delta = get_rope_index(ids, vis.get("image_grid_thw"), vis.get("video_grid_thw"), spg, tokens_per_second=tps, **TOK)
    ref, ref_delta = rope_index_4x(ids, vis.get("image_grid_thw"), vis.get("video_grid_thw"), spg, tps)
    assert pos.dtype == mx.float32 and pos.shape == (3, *ids.shape) and delta.shape == (ids.shape[0], 1)
    np.testing.assert_array_equal(np.array(pos), ref)
    np.testing.assert_array_equal(np.array(delta), ref_delta)


def test_rope_index_hand_computed():
    # image 4×6 patches → 2×3 tokens at 3; text resumes at 6
    pos, d = get_rope_index([[7, 8, 3] + [4] * 6 + [6, 9]], image_grid_thw=[[1, 4, 6]], **TOK)
    assert np.array(pos)[:, 0].tolist() == [[0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7], [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7], [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]]
    assert d.tolist() == [[-3]]
    # video at fps 2: second_per_grid_t 1.0 → step tokens_per_second
    ids = [[7, 3] + [5] * 12 + [6]]
    for tps, t in [(2, [2, 4, 6]), (1, [2, 3, 4])]:
        p = np.array(get_rope_index(ids, video_grid_thw=[[3, 4, 4]], second_per_grid_ts=[1.0], tokens_per_second=tps, **TOK)[0])
        assert p[0, 0, 2:14:4].tolist() == t and p[0, 0, -1] == t[-1] + 1
    # fps 4: 0.5 s per temporal patch → fractional steps, kept
    for tps, t in [(1, [2, 2.5, 3]), (3, [2, 3.5, 5])]:
        p = np.array(get_rope_index(ids, video_grid_thw=[[3, 4, 4]], second_per_grid_ts=[0.5], tokens_per_second=tps, **TOK)[0])
        assert p[0, 0, 2:14:4].tolist() == t and p[0, 0, -1] == max(t[-1], 3) + 1   # rows and columns reach 2 + 1 = 3
    # no second_per_grid_ts: 1.0 each
    p1 = get_rope_index(ids, video_grid_thw=[[3, 4, 4]], **TOK)[0]
    p2 = get_rope_index(ids, video_grid_thw=[[3, 4, 4]], second_per_grid_ts=[1.0], **TOK)[0]
    assert np.array_equal(np.array(p1), np.array(p2))


def test_rope_index_images_agree_with_transformers_5():
    "For images (and text) transformers 5.24's spatial-only advance equals max + 1"
    hf = Qwen2_5_VLForConditionalGeneration(hf_config()).eval()
    ids = np.array([[7, 3] + [4] * 12 + [6, 8, 9, 3] + [4] * 6 + [6, 10]])
    grids = np.array([[1, 6, 8], [1, 4, 6]])
    types = torch.tensor((ids == 4).astype(int))
    ref, ref_d = hf.model.get_rope_index(torch.tensor(ids), types, image_grid_thw=torch.tensor(grids))
    pos, d = get_rope_index(ids, image_grid_thw=grids, **TOK)
    np.testing.assert_array_equal(np.array(pos), ref.numpy())
    np.testing.assert_array_equal(np.array(d), ref_d.numpy())


@pytest.mark.parametrize("ids,kw,match", [
    ([[7, 3] + [4] * 6 + [6]], dict(image_grid_thw=[[1, 4, 4]]), r"image grid \(1, 4, 4\) makes 4 tokens but the span at token 2 has 6"),
    ([[7, 3] + [4] * 4 + [6]], dict(), r"more image spans in input_ids than image grids"),
    ([[7, 3] + [4] * 4 + [6]], dict(image_grid_thw=[[1, 4, 4]] * 2), r"more grids than image spans"),
    ([[7, 3] + [5] * 4 + [6]], dict(video_grid_thw=[[1, 4, 4]], image_grid_thw=[[1, 4, 4]]), r"more grids than image spans"),
    ([[7, 8] + [5] * 4 + [6]], dict(video_grid_thw=[[1, 4, 4]]), r"does not follow <\|vision_start\|>"),
])
def test_rope_index_errors(ids, kw, match):
    with pytest.raises(InputError, match=match): get_rope_index(ids, **kw, **TOK)


def test_config_rope_index_uses_the_config(v5_dict):
    c = Qwen25VLConfig.from_hf(v5_dict)
    ids, vis, spg = prompt("mixed", np.random.default_rng(0))
    got = c.rope_index(ids, vis["image_grid_thw"], vis["video_grid_thw"], spg)
    ref = get_rope_index(ids, vis["image_grid_thw"], vis["video_grid_thw"], spg, tokens_per_second=2, **TOK)
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(got, ref))


def test_rope_index_without_vision_start_check():
    pos, _ = get_rope_index([[7, 8] + [5] * 4 + [6]], video_grid_thw=[[1, 4, 4]], image_token_id=4, video_token_id=5, vision_start_token_id=None)
    assert np.array(pos)[1, 0].tolist() == [0, 1, 2, 2, 3, 3, 4]


# ---------------------------------------------------------------- logits
CONFIGS = {  # id: transformers model kwargs (GQA 4:2, MQA 4:1, MHA 4:4; 2 and 3 layers; tied and untied)
    "tied-gqa": dict(tie=True, kv=2),
    "untied-gqa": dict(tie=False, kv=2, layers=3),
    "tied-mqa": dict(tie=True, kv=1, mrope=(4, 2, 2)),
    "untied-mha": dict(tie=False, kv=4, layers=3, fullatt=(0,), depth=3),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    hf = hf_model(seed=list(CONFIGS).index(request.param), **CONFIGS[request.param])
    d = tmp_path_factory.mktemp(request.param); hf.save_pretrained(d)
    ours, cfg = load_qwen25vl(d)
    return hf, ours, cfg


@pytest.mark.parametrize("kind", ["text", "image", "video", "mixed", "batch"])
def test_logits_match_transformers(pair, kind):
    hf, ours, cfg = pair
    ids, vis, spg = prompt(kind, np.random.default_rng(1))
    pos, _ = positions(ids, vis, spg)
    ref, got = hf_logits(hf, ids, pos, vis), our_logits(ours, ids, pos, vis)
    assert got.shape == ref.shape and np.abs(ref).max() > 1.0
    assert np.abs(got - ref).max() < TOL


def test_wrong_positions_are_detected(pair):
    "The parity tolerance is far below what a wrong position rule costs"
    hf, ours, _ = pair
    ids, vis, spg = prompt("video", np.random.default_rng(1))
    pos, _ = positions(ids, vis, spg)
    ref = hf_logits(hf, ids, pos, vis)
    for wrong in (text_positions(1, ids.shape[1]), mx.concatenate([mx.floor(pos[:1]), pos[1:]]), pos[mx.array([0, 2, 1])]):
        assert np.abs(our_logits(ours, ids, wrong, vis) - ref).max() > 1e-2


@pytest.mark.parametrize("kind", ["image", "mixed", "batch"])
def test_cached_greedy_decoding_matches_full_forward(pair, kind):
    hf, ours, _ = pair
    ids, vis, spg = prompt(kind, np.random.default_rng(2))
    pos, delta = positions(ids, vis, spg)
    B, T = ids.shape
    h = ours.embed(mx.array(ids), **{k: mx.array(v) for k, v in vis.items()})
    cache = ours.make_cache()
    k = T // 2   # chunked prefill: the prompt in two pieces, each with its slice of the positions
    steps = [ours(None, pos[:, :, :k], cache, input_embeddings=h[:, :k]), ours(None, pos[:, :, k:], cache, input_embeddings=h[:, k:])]
    steps = [mx.concatenate(steps, axis=1)]
    new = []
    for _ in range(10):
        new.append(mx.argmax(steps[-1][:, -1, 7:], axis=-1) + 7)                 # greedy over ordinary tokens (ids 3-6 are special)
        steps.append(ours(new[-1][:, None], text_positions(B, 1, cache[0].offset + delta), cache))
    all_ids = np.concatenate([ids, np.array(mx.stack(new, axis=1))], axis=1)
    all_pos = mx.concatenate([pos, text_positions(B, 10, T + delta)], axis=2)
    full = our_logits(ours, all_ids, all_pos, vis)
    stepped = np.array(mx.concatenate(steps, axis=1))
    assert cache[0].offset == T + 10
    assert np.abs(stepped - full[:, :T + 10]).max() < TOL
    assert np.abs(full - hf_logits(hf, all_ids, all_pos, vis)).max() < TOL


def test_text_positions_default_from_cache(pair):
    "Without position_ids, text continues from the cache offset (mlx-lm's loop works unchanged)"
    _, ours, _ = pair
    ids = mx.array(np.random.default_rng(3).integers(7, 99, (1, 12)))
    full = ours(ids)
    cache = ours.make_cache()
    stepped = mx.concatenate([ours(ids[:, :7], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(7, 12)], axis=1)
    assert np.abs(np.array(stepped) - np.array(full)).max() < TOL
    assert np.abs(np.array(ours(ids, text_positions(1, 12))) - np.array(full)).max() == 0


def test_mlx_lm_generate_step_drives_the_model(pair):
    gen = pytest.importorskip("mlx_lm.generate")
    _, ours, _ = pair
    ids = mx.array(np.random.default_rng(4).integers(7, 99, (8,)))
    toks = [int(t) for t, _ in gen.generate_step(ids, ours, max_tokens=6)]
    ref, seq = [], ids[None]
    for _ in range(6):
        ref.append(int(mx.argmax(ours(seq)[0, -1]))); seq = mx.concatenate([seq, mx.array([[ref[-1]]])], axis=1)
    assert toks == ref


def test_embed_count_mismatch(pair):
    _, ours, _ = pair
    ids, vis, _ = prompt("mixed", np.random.default_rng(5))
    with pytest.raises(InputError, match=r"12 <\|image_pad\|> tokens \(id 4\) in input_ids but 24 <\|image_pad\|> features"):
        ours.embed(mx.array(ids), pixel_values=mx.array(np.zeros((96, ROW), np.float32)), image_grid_thw=[[1, 8, 12]])
    with pytest.raises(InputError, match=r"36 <\|video_pad\|> tokens \(id 5\) in input_ids but 24 <\|video_pad\|> features"):
        ours.embed(mx.array(ids), pixel_values_videos=vis["pixel_values_videos"][:96], video_grid_thw=vis["video_grid_thw"][:1])


# ---------------------------------------------------------------- loading matrix
@pytest.mark.parametrize("tie", [True, False])
def test_layouts_load_to_the_same_logits(tmp_path, tie):
    hf = hf_model(seed=7, tie=tie)
    hf.save_pretrained(tmp_path/"saved")
    hf.save_pretrained(tmp_path/"sharded", max_shard_size="60KB")
    save_in_memory_layout(hf, tmp_path/"memory")
    save_in_memory_layout(hf, tmp_path/"memory-sharded", max_keys=20)
    assert len(json.loads((tmp_path/"sharded"/INDEX_NAME).read_text())["weight_map"]) > 0
    assert any(k.startswith("model.language_model.") for k in read_weights(tmp_path/"memory-sharded"))
    assert ("lm_head.weight" in read_weights(tmp_path/"saved")) == (not tie)
    ids, vis, spg = prompt("mixed", np.random.default_rng(8))
    pos, _ = positions(ids, vis, spg)
    ref = hf_logits(hf, ids, pos, vis)
    for name in ("saved", "sharded", "memory", "memory-sharded"):
        m, cfg = load_qwen25vl(tmp_path/name)
        assert cfg.tie_word_embeddings == tie and ("lm_head.weight" in dict(tree_flatten(m.parameters()))) == (not tie)
        assert np.abs(our_logits(m, ids, pos, vis) - ref).max() < TOL, name


def test_tied_checkpoint_with_a_redundant_lm_head(tmp_path):
    hf = hf_model(seed=9, tie=True)
    hf.config.save_pretrained(tmp_path)
    sd = {k: v.clone() for k, v in hf.state_dict().items()}                     # includes lm_head.weight (= the embedding)
    sd["model.language_model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old checkpoints carry RoPE buffers
    save_file(sd, str(tmp_path/"model.safetensors"))
    m, _ = load_qwen25vl(tmp_path)
    ids = np.random.default_rng(10).integers(7, 99, (1, 16))
    pos, _ = get_rope_index(ids, **TOK)
    assert np.abs(our_logits(m, ids, pos, {}) - hf_logits(hf, ids, pos, {})).max() < TOL


@pytest.mark.parametrize("src", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("want", [None, mx.float32, mx.bfloat16, mx.float16])
def test_checkpoint_dtypes(tmp_path, src, want):
    hf = hf_model(seed=11, tie=False)
    copy.deepcopy(hf).to(src).save_pretrained(tmp_path)
    with torch.no_grad():                                                        # the same rounded weights, computed in fp32
        for p in hf.parameters(): p.copy_(p.to(src).float())                     # (not hf.to(src): that would round RoPE buffers too)
    m, _ = load_qwen25vl(tmp_path, dtype=want)
    dtypes = {v.dtype for _, v in tree_flatten(m.parameters())}
    assert dtypes == {want or mx.float32}
    ids, vis, spg = prompt("image", np.random.default_rng(12))
    pos, _ = positions(ids, vis, spg)
    got, ref = our_logits(m, ids, pos, vis), hf_logits(hf, ids, pos, vis)
    assert np.abs(got - ref).max() < (TOL if want is None or want == mx.float32 else 0.5)   # half-precision compute: a loose bound


# ---------------------------------------------------------------- loading errors
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved"); hf_model(seed=13).save_pretrained(d)
    return d, read_weights(d), json.loads((d/"config.json").read_text())


def folder(path, weights, config):
    path.mkdir(parents=True, exist_ok=True)
    (path/"config.json").write_text(json.dumps(config))
    if weights is not None: mx.save_safetensors(str(path/"model.safetensors"), weights)
    return path


def test_loading_errors(tmp_path, saved):
    d, sd, cfg = saved
    with pytest.raises(InputError, match=r"no config.json"): load_qwen25vl(tmp_path)
    (tmp_path/"bad").mkdir(); (tmp_path/"bad"/"config.json").write_text("{oops")
    with pytest.raises(InputError, match=r"bad/config.json:1: malformed JSON"): load_qwen25vl(tmp_path/"bad")
    with pytest.raises(InputError, match=r"cfg2/config.json: field 'model_type'"): load_qwen25vl(folder(tmp_path/"cfg2", sd, {**cfg, "model_type": "qwen2_vl"}))
    with pytest.raises(InputError, match=r"no model.safetensors or model.safetensors.index.json"): load_qwen25vl(folder(tmp_path/"none", None, cfg))
    (tmp_path/"none"/"pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match=r"svlm never unpickles"): load_qwen25vl(tmp_path/"none")
    for key in ("model.norm.weight", "visual.merger.ln_q.weight", "model.layers.1.self_attn.k_proj.bias"):
        with pytest.raises(InputError, match=rf"missing: weights do not match the model: 1 missing: {re.escape(key)}"):
            load_qwen25vl(folder(tmp_path/"missing", {k: v for k, v in sd.items() if k != key}, cfg))
    with pytest.raises(InputError, match=r"1 unexpected: visual.blocks.5.norm1.weight"):
        load_qwen25vl(folder(tmp_path/"extra", {**sd, "visual.blocks.5.norm1.weight": sd["visual.blocks.0.norm1.weight"]}, cfg))
    with pytest.raises(InputError, match=r"1 unexpected: model.mm_projector.weight"):
        load_qwen25vl(folder(tmp_path/"extra2", {**sd, "model.mm_projector.weight": sd["model.norm.weight"]}, cfg))
    bad = {**sd, "model.layers.0.self_attn.q_proj.bias": mx.zeros((32,))}
    with pytest.raises(InputError, match=r"field 'model.layers.0.self_attn.q_proj.bias': wrong shape: model.layers.0.self_attn.q_proj.bias: \(32,\) in the checkpoint, \(64,\) in the model"):
        load_qwen25vl(folder(tmp_path/"shape", bad, cfg))


def test_truncated_and_missing_shards(tmp_path):
    hf_model(seed=14).save_pretrained(tmp_path/"s", max_shard_size="60KB")
    shards = sorted((tmp_path/"s").glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].write_bytes(shards[1].read_bytes()[:500])
    with pytest.raises(InputError, match=rf"{shards[1].name}: unreadable safetensors file"): load_qwen25vl(tmp_path/"s")
    shards[1].unlink()
    with pytest.raises(InputError, match=rf"shard {shards[1].name} named by the index is missing"): load_qwen25vl(tmp_path/"s")


def test_qwen25vl_weights_renames_both_layouts(saved):
    d, sd, cfg = saved
    c = Qwen25VLConfig.from_hf(cfg)
    mem = {("model.visual." + k[7:]) if k.startswith("visual.") else "model.language_model." + k[6:] if k.startswith("model.") else k: v for k, v in sd.items()}
    a, b = qwen25vl_weights(sd, c), qwen25vl_weights(mem, c)
    assert sorted(a) == sorted(b) == sorted(k for k, _ in tree_flatten(Qwen25VL(c).parameters()))
    assert a["visual.patch_embed.proj.weight"].shape == (32, ROW)          # the Conv3d flattened by svlm.vision


# ---------------------------------------------------------------- quantized MLX checkpoints
from svlm.qwen25vl import save_qwen25vl, quantize_qwen25vl, convert_model, quantization_of


@pytest.mark.parametrize("bits,gs,tie", [(8, 64, True), (4, 64, False), (4, 32, True), (6, 32, False)])
def test_quantized_round_trip(tmp_path, bits, gs, tie):
    hf = hf_model(seed=5, tie=tie); hf.save_pretrained(tmp_path/"src")
    m, c = load_qwen25vl(tmp_path/"src")
    quantize_qwen25vl(m, bits, gs)
    assert quantization_of(m) == {"group_size": gs, "bits": bits}
    assert not any(k.startswith("visual.") and k.endswith(".scales") for k, _ in tree_flatten(m.parameters()))   # the tower stays float
    save_qwen25vl(m, c, tmp_path/"q")
    r, rc = load_qwen25vl(tmp_path/"q")
    assert rc == c
    ids, vis, _ = prompt("image", np.random.default_rng(0))
    pos = positions(ids, vis, None)[0]
    np.testing.assert_array_equal(our_logits(r, ids, pos, vis), our_logits(m, ids, pos, vis))   # the reload is exact


def test_unquantized_conversion_is_lossless(tmp_path):
    hf = hf_model(seed=6, tie=False); hf.save_pretrained(tmp_path/"src")
    a, _ = load_qwen25vl(tmp_path/"src"); b, _ = load_qwen25vl(convert_model(tmp_path/"src", tmp_path/"dst"))
    ids, vis, spg = prompt("mixed", np.random.default_rng(1))
    pos = positions(ids, vis, spg)[0]
    np.testing.assert_array_equal(our_logits(a, ids, pos, vis), our_logits(b, ids, pos, vis))


def test_conversion_errors(tmp_path):
    hf_model(seed=7).save_pretrained(tmp_path/"src")
    (tmp_path/"full").mkdir(); (tmp_path/"full"/"x").write_text("x")
    with pytest.raises(InputError, match="full: destination exists and is not empty"): convert_model(tmp_path/"src", tmp_path/"full")
    with pytest.raises(InputError, match="field 'group_size'"): convert_model(tmp_path/"src", tmp_path/"o", bits=4, group_size=48)
    q = convert_model(tmp_path/"src", tmp_path/"q", bits=4)
    d = json.loads((q/"config.json").read_text()); d["quantization"] = {"bits": 4}
    (q/"config.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match=r"q/config.json.*field 'quantization'"): load_qwen25vl(q)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "q", "src"]          # no temporary folder left behind
