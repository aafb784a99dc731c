"svlm.vision against transformers' Qwen2.5-VL: the tower on many grids and settings, pre-processing, weights in both layouts, bad inputs."
import svlm
import numpy as np
import mlx.core as mx
import pytest
from PIL import Image
from mlx.utils import tree_flatten
from svlm.core import InputError
from svlm.video import smart_resize
from svlm.vision import (VisionConfig, VisionTower, vision_weights, load_vision, image_inputs, video_inputs, patchify_frames,
                         window_index, cu_seqlens, rot_pos_ids, segments)

TINY = dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=24, window_size=56, fullatt_block_indexes=[1])


def _hf_tower(seed=0, **vision):
    "transformers' Qwen2.5-VL vision tower with every parameter random (biases and norms too), fp32"
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    torch.manual_seed(seed)
    hf = Qwen2_5_VisionTransformerPretrainedModel._from_config(Qwen2_5_VLVisionConfig(**{**TINY, **vision})).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in n or "ln_q" in n else 0.1 * torch.randn_like(p) if p.ndim > 1 else 0.3 * torch.randn_like(p))
    return hf


def _ours(hf):
    tower = VisionTower(VisionConfig.from_dict(hf.config.to_dict()))
    return load_vision(tower, vision_weights({"visual." + k: v for k, v in hf.state_dict().items()}))


def _delta(hf, tower, grids, seed=0):
    import torch
    g = torch.tensor(grids)
    px = torch.randn(int(g.prod(1).sum()), tower.config.patch_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(): ref = hf(px, grid_thw=g).pooler_output.numpy()
    got = np.array(tower(px.numpy(), grids))
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max())


# window 56 px = 2×2 merged tokens: grids whose merged sides are even divide into windows, odd ones leave cut-short edge windows
GRIDS = {
    "square, windows divide": [[1, 8, 8]],
    "square, large": [[1, 16, 16]],
    "non-square, windows divide": [[1, 8, 20]],
    "non-square, edge windows": [[1, 10, 14]],
    "tall, edge windows": [[1, 18, 6]],
    "one merged token": [[1, 2, 2]],
    "video t=2": [[2, 12, 8]],
    "video t=3, edge windows": [[3, 6, 10]],
    "batch of images": [[1, 8, 12], [1, 6, 4], [1, 10, 10]],
    "video and image": [[2, 8, 8], [1, 14, 6]],
}

@pytest.fixture(scope="module")
def pair():
    hf = _hf_tower()
    return hf, _ours(hf)

@pytest.mark.parametrize("grids", GRIDS.values(), ids=GRIDS.keys())
def test_tower_parity(pair, grids):
    assert _delta(*pair, grids) < 1e-5


SETTINGS = {
    "gelu": dict(hidden_act="gelu"),
    "gelu_pytorch_tanh": dict(hidden_act="gelu_pytorch_tanh"),
    "quick_gelu": dict(hidden_act="quick_gelu"),
    "default window 112, full attention first and last": dict(window_size=112, fullatt_block_indexes=[0, 2]),
    "window 84 (3×3 merged tokens)": dict(window_size=84),
    "merge 1": dict(spatial_merge_size=1, out_hidden_size=16),
    "no full attention": dict(fullatt_block_indexes=[]),
    "8 heads, rope_theta 100": dict(hidden_size=64, num_heads=8, rope_parameters={"rope_theta": 100.0, "rope_type": "axial"}),
    "patch 8, temporal 1": dict(patch_size=8, temporal_patch_size=1, window_size=32),
}

@pytest.mark.parametrize("kw", SETTINGS.values(), ids=SETTINGS.keys())
def test_tower_parity_settings(kw):
    hf = _hf_tower(1, **kw)
    tower = _ours(hf)
    if "rope_parameters" in kw: assert tower.config.rope_theta == 100.0
    for grids in ([[1, 12, 20]], [[2, 8, 6], [1, 4, 10]]): assert _delta(hf, tower, grids) < 1e-5


def test_windows_matter(pair):
    "A tower that attends over whole frames in every block gives other features: the windowed blocks are exercised"
    hf, tower = pair
    full = load_vision(VisionTower(VisionConfig(**{**TINY, "fullatt_block_indexes": [0, 1, 2]})), dict(tree_flatten(tower.parameters())))
    px = np.random.default_rng(0).normal(size=(256, 1176)).astype(np.float32)
    assert float(mx.abs(full(px, [[1, 16, 16]]) - tower(px, [[1, 16, 16]])).max()) > 1e-2


def test_grid_forms(pair):
    "grid_thw as a list, a NumPy array, an mx array or a torch tensor gives the same features"
    import torch
    _, tower = pair
    px = np.random.default_rng(1).normal(size=(96, 1176)).astype(np.float32)
    ref = np.array(tower(px, [[1, 8, 12]]))
    for g in (np.array([[1, 8, 12]]), mx.array([[1, 8, 12]]), torch.tensor([[1, 8, 12]])):
        np.testing.assert_array_equal(np.array(tower(mx.array(px), g)), ref)
    np.testing.assert_array_equal(np.array(tower(torch.tensor(px), [[1, 8, 12]])), ref)


def test_index_helpers_match_transformers():
    torch = pytest.importorskip("torch")
    from transformers.vision_utils import get_vision_window_index, get_vision_position_ids, get_vision_cu_seqlens
    for grids in ([[1, 12, 20]], [[3, 6, 10], [1, 4, 4]], [[2, 16, 16]], [[1, 2, 2], [1, 30, 14]]):
        for ws in (56, 112, 84):
            wi, cu = get_vision_window_index(torch.tensor(grids), 2, ws, 14)
            ours_wi, ours_cu = window_index(grids, ws, 14, 2)
            np.testing.assert_array_equal(ours_wi, wi.numpy())
            np.testing.assert_array_equal(ours_cu, cu.numpy())
        np.testing.assert_array_equal(rot_pos_ids(grids, 2), get_vision_position_ids(torch.tensor(grids), 2).numpy())
        np.testing.assert_array_equal(cu_seqlens(grids, 2), get_vision_cu_seqlens(torch.tensor(grids)).numpy())


def test_segments_cover_every_token_once():
    cu = window_index([[2, 10, 14], [1, 4, 6]], 56)[1]
    seg = segments(cu)
    gathered = np.array(seg.gather).reshape(-1)[np.array(seg.slot)]
    np.testing.assert_array_equal(gathered, np.arange(cu[-1]))
    assert seg.mask is not None and segments([0, 4, 8]).mask is None


# --- weights -------------------------------------------------------------------------------------------------------

def _full_hf_model(seed=0):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=24, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=99, rope_theta=10000, tie_word_embeddings=True, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 1]}),
        vision_config=TINY, image_token_id=4, video_token_id=5, vision_start_token_id=3, vision_end_token_id=6)
    torch.manual_seed(seed)
    hf = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters(): p.copy_(0.1 * torch.randn_like(p) + (1.0 if "norm" in n or "ln_q" in n else 0.0))
    return hf


def test_both_state_dict_layouts(tmp_path):
    "In memory transformers 5 says model.visual.*; save_pretrained writes visual.*; both load to the same tower and match"
    from svlm.model import read_weights
    hf = _full_hf_model()
    mem = vision_weights(hf.state_dict())
    assert all(k.startswith("model.visual.") for k in hf.state_dict() if "visual" in k)
    hf.save_pretrained(tmp_path)
    disk_state = read_weights(tmp_path)
    assert any(k.startswith("visual.") for k in disk_state) and not any(k.startswith("model.visual.") for k in disk_state)
    disk = vision_weights(disk_state)
    assert set(mem) == set(disk) and mem["patch_embed.proj.weight"].shape == (32, 1176)
    for k in mem: np.testing.assert_array_equal(np.array(mem[k]), np.array(disk[k]))
    cfg = VisionConfig.from_dict(hf.config.vision_config.to_dict())
    tower = load_vision(VisionTower(cfg), disk, tmp_path)
    assert _delta(hf.model.visual, tower, [[1, 10, 14], [2, 8, 8]]) < 1e-5


def test_load_vision_accepts_conv3d_and_bf16():
    torch = pytest.importorskip("torch")
    hf = _hf_tower()
    state = hf.state_dict()
    assert state["patch_embed.proj.weight"].ndim == 5
    tower = load_vision(VisionTower(VisionConfig(**TINY)), dict(state))      # tower names, torch tensors, the Conv3d weight
    assert _delta(hf, tower, [[1, 8, 8]]) < 1e-5
    bf = load_vision(VisionTower(VisionConfig(**TINY)), {k: v.to(torch.bfloat16) for k, v in state.items()})
    assert bf.patch_embed.proj.weight.dtype == mx.float32


def test_load_vision_errors():
    tower = VisionTower(VisionConfig(**TINY))
    w = dict(tree_flatten(tower.parameters()))
    with pytest.raises(InputError, match="missing: blocks.1.mlp.up_proj.bias"):
        load_vision(tower, {k: v for k, v in w.items() if k != "blocks.1.mlp.up_proj.bias"})
    with pytest.raises(InputError, match="unexpected: blocks.7.norm1.weight"):
        load_vision(tower, {**w, "blocks.7.norm1.weight": mx.ones(32)})
    with pytest.raises(InputError, match="unexpected: visual.merger.ln_q.weight"):    # prefixed names: strip them with vision_weights
        load_vision(tower, {**w, "visual.merger.ln_q.weight": mx.ones(32)})
    with pytest.raises(InputError, match=r"ckpt: field 'merger.mlp.2.weight': wrong shape: merger.mlp.2.weight: \(16, 128\) in the checkpoint, \(24, 128\) in the model") as e:
        load_vision(tower, {**w, "merger.mlp.2.weight": mx.zeros((16, 128))}, "ckpt")
    assert e.value.field == "merger.mlp.2.weight"


# --- config --------------------------------------------------------------------------------------------------------

def test_config_defaults_and_round_trip():
    pytest.importorskip("torch")
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    hf = Qwen2_5_VLVisionConfig().to_dict()
    c = VisionConfig.from_dict(hf)
    assert c == VisionConfig() and c.fullatt_block_indexes == (7, 15, 23, 31)
    assert VisionConfig.from_dict(c.to_dict()) == c
    again = Qwen2_5_VLVisionConfig(**c.to_dict()).to_dict()
    assert {k: again[k] for k in c.to_dict()} == c.to_dict()


@pytest.mark.parametrize("bad,field", [
    (dict(depth=2, fullatt_block_indexes=[2]), "fullatt_block_indexes"),
    (dict(depth=2, fullatt_block_indexes=[-1]), "fullatt_block_indexes"),
    (dict(hidden_size=30, num_heads=4), "hidden_size"),
    (dict(hidden_size=24, num_heads=4), "num_heads"),             # head width 6: not a multiple of 4
    (dict(hidden_act="swish"), "hidden_act"),
    (dict(window_size=14), "window_size"),
    (dict(depth=0), "depth"),
    (dict(patch_size="14"), "patch_size"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1.0}), "rope_parameters"),
])
def test_config_errors(bad, field):
    with pytest.raises(InputError, match=f"config.json: field '{field}'") as e: VisionConfig.from_dict({**TINY, **bad}, "config.json")
    assert e.value.field == field


# --- pre-processing ------------------------------------------------------------------------------------------------

def _synthetic(H, W, seed=0):
    yy, xx = np.mgrid[:H, :W]
    noise = np.random.default_rng(seed).integers(0, 256, (H, W))
    return np.stack([xx * 255 // W, yy * 255 // H, noise], -1).astype(np.uint8)

IMAGES = {"up to min_pixels": (20, 30, 56 * 56, 14 * 14 * 4 * 1280), "defaults": (123, 217, 56 * 56, 14 * 14 * 4 * 1280),
          "down to max_pixels": (500, 333, 56 * 56, 64 * 28 * 28), "already on the grid": (112, 168, 56 * 56, 14 * 14 * 4 * 1280),
          "wide": (60, 900, 56 * 56, 100 * 28 * 28)}

@pytest.mark.parametrize("H,W,mn,mx_", IMAGES.values(), ids=IMAGES.keys())
def test_image_inputs_equal_transformers(H, W, mn, mx_):
    pytest.importorskip("torch")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    proc = Qwen2VLImageProcessorPil(min_pixels=mn, max_pixels=mx_)
    a = _synthetic(H, W)
    rgba = np.dstack([a, np.random.default_rng(2).integers(0, 256, (H, W)).astype(np.uint8)])
    for img in (Image.fromarray(a), Image.fromarray(rgba, "RGBA"), Image.fromarray(a[..., 0], "L")):
        ref = proc(images=img, return_tensors="np")
        rows, grid = image_inputs(img, mn, mx_)
        np.testing.assert_array_equal(grid, ref["image_grid_thw"])
        np.testing.assert_array_equal(rows, ref["pixel_values"])     # bit-identical: same PIL bicubic, same float ops
    np.testing.assert_array_equal(image_inputs(a, mn, mx_)[0], image_inputs(Image.fromarray(a), mn, mx_)[0])


def test_smart_resize_agrees_with_transformers():
    "svlm.video.smart_resize is transformers' rule, tiny sides included (a side under 14 px rounds to 0 and is scaled up to min_pixels)"
    pytest.importorskip("torch")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
    assert smart_resize(10, 1000, 28, 56 * 56, 14 * 14 * 4 * 1280) == hf_smart_resize(10, 1000, 28, 56 * 56, 14 * 14 * 4 * 1280) == (28, 560)
    for mn, mx_ in [(56 * 56, 14 * 14 * 4 * 1280), (128 * 28 * 28, 768 * 28 * 28), (4 * 28 * 28, 364 * 644)]:
        for h in [*range(1, 60), *range(60, 1300, 11)]:
            for w in [*range(max(1, h // 200 + 1), 60, 3), *range(60, 2600, 53)]:
                if max(h, w) / min(h, w) <= 200: assert smart_resize(h, w, 28, mn, mx_) == hf_smart_resize(h, w, 28, mn, mx_), (h, w)


def _hf_video_patchify(video, p=14, m=2, tp=2):
    "transformers' Qwen2VLVideoProcessor.patchify written out (its module needs torchvision): (T, C, H, W) → rows"
    T, C, H, W = video.shape
    if pad := -T % tp: video = np.concatenate([video, np.repeat(video[-1:], pad, 0)]); T += pad
    x = video.reshape(1, T // tp, tp, C, H // p // m, m, p, W // p // m, m, p).transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(T // tp * (H // p) * (W // p), C * tp * p * p)


@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_video_inputs(T):
    "Each frame is resized and normalized exactly as transformers' image processor does; rows in the video processor's order"
    pytest.importorskip("torch")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    frames = np.stack([_synthetic(90, 160, seed=i) for i in range(T)])
    mn, mx_ = 56 * 56, 30 * 28 * 28
    rows, grid = video_inputs(frames, mn, mx_)
    h, w = smart_resize(90, 160, 28, mn, mx_)
    assert grid.tolist() == [[(T + 1) // 2, h // 14, w // 14]]
    proc = Qwen2VLImageProcessorPil(min_pixels=mn, max_pixels=mx_, do_rescale=True)
    per_frame = []
    for f in frames:     # the processor's resized, normalized frame, recovered from its image rows (each patch holds the frame twice)
        r = proc(images=Image.fromarray(f), return_tensors="np")["pixel_values"].reshape(h // 28, w // 28, 2, 2, 3, 2, 14, 14)[:, :, :, :, :, 0]
        per_frame.append(r.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, h, w))   # (C, h/28, 2, 14, w/28, 2, 14) → (C, H, W)
    np.testing.assert_array_equal(rows, _hf_video_patchify(np.stack(per_frame)))
    assert video_inputs(list(frames), mn, mx_)[0].shape == rows.shape


def test_patchify_frames_matches_transformers_image_patchify():
    pytest.importorskip("torch")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    x = np.random.default_rng(0).normal(size=(56, 112, 3)).astype(np.float32)
    rows, grid = patchify_frames(x[None])
    ref, gh, gw = Qwen2VLImageProcessorPil.patchify(None, x.transpose(2, 0, 1), patch_size=14, merge_size=2, temporal_patch_size=2)
    np.testing.assert_array_equal(rows, ref)
    assert grid.tolist() == [1, gh, gw]


def test_end_to_end_image(pair, tmp_path):
    "A PNG on disk through image_inputs and the tower equals transformers' processor and tower"
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    hf, tower = pair
    path = tmp_path/"img.png"
    Image.fromarray(_synthetic(150, 200, 3)).save(path)
    ref = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=40 * 28 * 28)(images=Image.open(path), return_tensors="pt")
    with torch.no_grad(): want = hf(ref["pixel_values"], grid_thw=ref["image_grid_thw"]).pooler_output.numpy()
    rows, grid = image_inputs(path, 56 * 56, 40 * 28 * 28)
    assert np.abs(np.array(tower(rows, grid)) - want).max() < 1e-5


# --- bad inputs ----------------------------------------------------------------------------------------------------

def test_bad_image_file(tmp_path):
    bad = tmp_path/"notes.jpg"
    bad.write_text("this is text")
    with pytest.raises(InputError, match="notes.jpg: not a readable image") as e: image_inputs(bad)
    assert e.value.path == bad
    with pytest.raises(InputError, match="missing.png: file not found"): image_inputs(tmp_path/"missing.png")
    with pytest.raises(InputError, match="field 'image'"): image_inputs(np.zeros((28, 28, 3), np.float32))
    with pytest.raises(InputError, match="field 'frames'"): video_inputs(np.zeros((2, 28, 28), np.uint8))


def test_grid_not_divisible_by_merge():
    tower = VisionTower(VisionConfig(**TINY))
    with pytest.raises(InputError, match="field 'grid_thw': h and w must be multiples of spatial_merge_size=2"):
        tower(mx.zeros((5 * 4, 1176)), [[1, 5, 4]])
    with pytest.raises(InputError, match="field 'grid_thw'"): tower(mx.zeros((0, 1176)), [[1, 0, 4]])
    with pytest.raises(InputError, match="field 'grid_thw'"): tower(mx.zeros((16, 1176)), [[1.0, 4.0, 4.0]])
    with pytest.raises(InputError, match=r"field 'pixel_values': grid \[\[1, 4, 4\]\] needs \(16, 1176\) rows, got \(16, 1000\)"):
        tower(mx.zeros((16, 1000)), [[1, 4, 4]])
    with pytest.raises(InputError, match="field 'frames': height 42 is not a multiple of"): patchify_frames(np.zeros((2, 42, 56, 3)))
