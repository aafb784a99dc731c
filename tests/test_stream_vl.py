"Streaming Qwen2.5-VL (#13): the M-RoPE streaming cache against a fresh prefill at get_rope_index positions and against StreamingVLM's recompute-and-re-rotate method, the engine's positions with generated replies, seeded sampling, and `svlm infer` on tiny random checkpoints saved by transformers (both weight layouts) and by convert-model (quantized)."
import svlm  # before mlx: loads OpenBLAS on Linux
import json
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
from mlx.utils import tree_map
from svlm.core import CacheConfig, Config, SamplingConfig, SynthConfig, VideoConfig, InputError
from svlm.cache import make_cache, RawMRoPEKeyCache, BaseStreamCache
from svlm.tokenizer import load_tokenizer, reply_text, ByteTokenizer
from svlm.vision import VisionConfig
from svlm.qwen25vl import Qwen25VLConfig, Qwen25VL, convert_model
from svlm.stream import StreamEngine, synthetic_frames
from svlm.video import IteratorSource, iter_chunks
from svlm.events import read_vtt
from svlm.synth import make_clip
from svlm.cli import main

SMALL = CacheConfig(previous_sink_tokens=8, previous_window_tokens=16, vision_rounds=3)
VIDEO = VideoConfig(max_pixels=56 * 112, min_pixels=56 * 56)


@pytest.fixture(scope="module")
def qtok(): return load_tokenizer("qwen")


def tiny_vl(layers=1, seed=0) -> Qwen25VL:
    v = VisionConfig.from_dict(dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=32, fullatt_block_indexes=[0],
                                    tokens_per_second=2, spatial_merge_size=2, patch_size=14, temporal_patch_size=2, window_size=112))
    c = Qwen25VLConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                       vocab_size=151680, vision=v, mrope_section=(2, 1, 1), rope_theta=100.0, tie_word_embeddings=True)
    mx.random.seed(seed); m = Qwen25VL(c)
    m.update(tree_map(lambda p: 0.5 * mx.random.normal(p.shape), m.parameters()))
    return m


def fresh_logits(model, sc, feats):
    "Logits at the last kept token of a fresh prefill of exactly the kept ids, at get_rope_index positions"
    kept, grids = sc.kept_ids(), [r.grid for r in sc.rounds if r.n_vision]
    pos, _ = model.config.rope_index(np.array([kept]), None, grids, [r.seconds_per_grid for r in sc.rounds if r.n_vision])
    np.testing.assert_allclose(sc._pos, np.array(pos)[:, 0], rtol=0, atol=1e-5)   # get_rope_index returns float32
    emb = model.embed_with_vision(mx.array([kept]), mx.concatenate([feats[r.index] for r in sc.rounds if r.n_vision]))
    return model(mx.array([kept]), pos, None, emb)[0, -1]


def stream(model, qtok, chunks, seed=0, layer=None, fps=2.0, check=True):
    "Random chunks of two sizes, replies random words or silence fed token by token or at once; per chunk the max |Δ| to a fresh prefill"
    rng = np.random.default_rng(seed)
    sc = make_cache(model, qtok, SMALL, previous="The match starts.")
    if layer: sc.layers = [layer(sc, model.config.mrope_section) for _ in sc.layers]; sc.layers[0].log = []
    feats, errs, logits = {}, [], []
    words = "goal pass shot save corner cross tackle header".split()
    for k in range(chunks):
        frames = rng.integers(0, 256, (2, 56 + 28 * (k % 3 == 0), 56 + 28 * (k % 2), 3), dtype=np.uint8)
        f, grid = model.encode_chunk(frames, 56 * 56, 84 * 84)
        feats[k] = f
        ids = sc.start_round(float(k), k + 1.0, f.shape[0], "Commentate on this match" if k == 0 else "", grid=grid,
                             seconds_per_grid=2 / fps)
        got = sc.feed(model, ids, model.embed_with_vision(mx.array([ids]), f))[0, -1]
        text = "" if rng.random() < 0.4 else " ".join(rng.choice(words, rng.integers(1, 4)))
        reply = qtok.encode(reply_text(text)) + [qtok.token_id("<|im_end|>")]
        last = [sc.feed(model, [t]) for t in reply][-1][0, -1] if rng.random() < 0.5 else sc.feed(model, reply)[0, -1]
        logits.append((got, last))
        if check: errs.append(max(mx.abs(last - fresh_logits(model, sc, feats)).max().item(), 0.0))
        sc.end_round()
    return np.array(errs), sc, logits


def test_one_layer_equals_fresh_prefill_over_200_chunks(qtok):
    errs, sc, _ = stream(tiny_vl(1), qtok, 200)
    assert sc.n_rounds == 200 and len(sc.rounds) == 3 and sc.n_previous > 16     # evicted and re-cut all along
    assert errs.max() < 1e-4, errs.max()                                          # fp32; positions stay below ~300


def test_fractional_temporal_steps_stay_exact(qtok):
    "At 3 fps a temporal patch is 2/3 s: the steps are fractional, and with two-patch chunks the shifts are too"
    m = tiny_vl(1, seed=2)
    rng = np.random.default_rng(1)
    sc = make_cache(m, qtok, SMALL)
    feats, errs = {}, []
    for k in range(30):
        f, grid = m.encode_chunk(rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8), 28 * 28, 28 * 28)   # grid (2, 2, 2): one token per patch
        feats[k] = f
        ids = sc.start_round(float(k), k + 1.0, f.shape[0], grid=grid, seconds_per_grid=2 / 3)
        sc.feed(m, ids, m.embed_with_vision(mx.array([ids]), f))
        sc.feed(m, qtok.encode(reply_text("")) + [qtok.token_id("<|im_end|>")])
        errs.append(mx.abs(sc.feed(m, [qtok.encode(" a")[0]])[0, -1] - fresh_logits(m, sc, feats)).max().item())
        sc.trim(1); sc.end_round()
    assert not np.all(sc._pos == np.round(sc._pos))                                # fractional positions were in play
    assert max(errs) < 1e-4


def test_deep_model_equals_streamingvlm_method(qtok):
    m = tiny_vl(3, seed=1)
    _, sa, la = stream(m, qtok, 40, check=False)
    _, sb, lb = stream(m, qtok, 40, layer=RawMRoPEKeyCache, check=False)
    assert sa.kept_ids() == sb.kept_ids()
    d = max(max(mx.abs(a - b).max().item() for a, b in zip(x, y)) for x, y in zip(la, lb))
    assert d < 1e-4, d


def test_positions_survive_save_and_load(qtok, tmp_path):
    m = tiny_vl(1)
    _, sc, _ = stream(m, qtok, 7, check=False)
    p = sc.save(tmp_path/"c.safetensors")
    back = BaseStreamCache.load(p, qtok)
    np.testing.assert_array_equal(back._pos, sc._pos)
    assert back._next == sc._next and back.scheme == sc.scheme
    f, grid = m.encode_chunk(np.zeros((2, 56, 56, 3), np.uint8), 56 * 56, 56 * 56)
    outs = []
    for c in (sc, back):
        ids = c.start_round(7.0, 8.0, f.shape[0], grid=grid)
        outs.append(c.feed(m, ids, m.embed_with_vision(mx.array([ids]), f))[0, -1])
    assert mx.abs(outs[0] - outs[1]).max().item() == 0.0


def test_missing_grid_and_sink_mode_are_refused(qtok):
    m = tiny_vl(1)
    sc = make_cache(m, qtok, SMALL)
    with pytest.raises(InputError, match="patch grid"): sc.start_round(0.0, 1.0, 4)
    with pytest.raises(InputError, match="cuts through video spans"): make_cache(m, qtok, CacheConfig(mode="sink"))
    assert make_cache(m, qtok, CacheConfig(mode="sink", positions="1d")).scheme is None


def engine(model, qtok, **sampling):
    return StreamEngine(model, qtok, Config(cache=SMALL, video=VIDEO, sampling=SamplingConfig(**sampling)), query="Commentate on this match")


def test_engine_replies_sit_at_get_rope_index_positions(qtok, tmp_path):
    "Generated replies run before they are declared: after every chunk a probe through (a saved copy of) the cache equals a fresh prefill"
    m = tiny_vl(1)
    eng = engine(m, qtok, max_new_tokens=6)
    feats, enc = {}, eng.encode
    def keep(frames):                                   # remember each chunk's features for the fresh prefill
        f, g = enc(frames); feats[eng.index] = f; return f, g
    eng.encode = keep
    errs, spoke = [], 0
    for ch in iter_chunks(IteratorSource(synthetic_frames(24, (56, 84), seed=4)), 1.0):
        eng.step(ch)
        spoke += len(eng.last_reply) > 2
        c = BaseStreamCache.load(eng.cache.save(tmp_path/"c.safetensors"), qtok)
        c.feed(m, c._pending + qtok.encode(" and"))     # the closing of the reply and one more token, through the cache
        errs.append(mx.abs(c.feed(m, [qtok.encode(" so")[0]])[0, -1] - fresh_logits(m, c, feats)).max().item())
    assert max(errs) < 1e-4
    assert spoke > 5 and eng.cache.n_rounds == 24 and len(eng.cache.rounds) == 3


def test_seeded_sampling_replays_and_varies_across_chunks(qtok):
    m = tiny_vl(1)
    def run(seed):
        eng = engine(m, qtok, temperature=0.9, seed=seed, max_new_tokens=4)
        firsts = []
        src = IteratorSource((t, np.full((56, 84, 3), 128, np.uint8)) for t in np.arange(0, 8, 0.5))   # identical chunks
        for ch in iter_chunks(src, 1.0):
            eng.step(ch); firsts.append(eng.last_reply[0])
        return firsts
    a, b, c = run(0), run(0), run(1)
    assert a == b                        # one seed, one stream
    assert len(set(a)) > 1               # identical chunks, different first draws
    assert a != c


def test_tokenizer_without_qwen_tokens_is_refused(qtok):
    with pytest.raises(InputError, match="video_token_id"):
        StreamEngine(tiny_vl(1), ByteTokenizer(), Config(video=VIDEO))


# --- svlm infer on saved checkpoints -------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


def hf_tiny(seed=0):
    from tiny_qwen import hf_qwen25vl
    return hf_qwen25vl(seed)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from safetensors.torch import save_file
    d = tmp_path_factory.mktemp("vlck")
    hf = hf_tiny()
    hf.save_pretrained(d/"saved")
    (d/"memory").mkdir()                                        # the in-memory layout (model.language_model.*), tied head left out
    save_file({k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}, d/"memory"/"model.safetensors")
    (d/"memory"/"config.json").write_text((d/"saved"/"config.json").read_text())
    convert_model(d/"saved", d/"q4", bits=4, group_size=32)
    clip = make_clip(d/"clip.mp4", seed=3, cfg=SynthConfig(duration=5.3))
    return d, clip.path


@pytest.mark.parametrize("kind", ["saved", "memory", "q4"])
def test_infer_streams_a_qwen25vl_folder(folders, kind, capsys):
    d, clip = folders
    out = d/f"out-{kind}"; out.mkdir()
    rc = main(["infer", "--checkpoint", str(d/kind), "--video", str(clip), "--output-vtt", str(out/"c.vtt"), "--output-json", str(out/"c.jsonl"),
               "--emit-json", "video.max_pixels=6272", "cache.vision_rounds=2", "sampling.max_new_tokens=5"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "no tokenizer files in the checkpoint" in cap.err            # the folder has none: the Qwen tokenizer, said so
    segs = [json.loads(l) for l in cap.out.splitlines()]
    assert segs and all(s["type"] == "segment" and set(s) == {"type", "start", "end", "text"} for s in segs)
    cues = read_vtt(out/"c.vtt")
    events = [json.loads(l) for l in (out/"c.jsonl").read_text().splitlines()]
    assert len(cues) == len(events) == len(segs)
    assert cues[-1].end <= 5.3 + 1e-6 and [e["start"] for e in events] == [s["start"] for s in segs]


def test_infer_dtype_applies_to_qwen_only(folders, tmp_path, capsys):
    d, clip = folders
    assert main(["infer", "--checkpoint", str(d/"saved"), "--video", str(clip), "--dtype", "bfloat16", "sampling.max_new_tokens=2",
                 "video.max_pixels=3136"]) == 0
    capsys.readouterr()


def write_video(path, frames, fps=4):
    import av
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps); s.height, s.width = frames.shape[1:3]; s.pix_fmt = "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")): out.mux(pkt)
        for pkt in s.encode(): out.mux(pkt)
    return path


def test_bad_inputs_to_infer_are_named(folders, tmp_path, capsys):
    d, clip = folders
    thin = write_video(tmp_path/"thin.mp4", np.zeros((8, 16, 3600, 3), np.uint8))     # aspect ratio 225: no grid fits
    assert main(["infer", "--checkpoint", str(d/"saved"), "--video", str(thin)]) == 2
    err = capsys.readouterr().err
    assert "thin.mp4" in err and "cannot be resized" in err and "Traceback" not in err
    bad = tmp_path/"badtok"; bad.mkdir()
    for f in (d/"saved").iterdir(): (bad/f.name).write_bytes(f.read_bytes())
    from tokenizers import Tokenizer as HFTok, models, pre_tokenizers
    t = HFTok(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")); t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(bad/"tokenizer.json"))
    (bad/"tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert main(["infer", "--checkpoint", str(bad), "--video", str(clip)]) == 2
    err = capsys.readouterr().err
    assert "Qwen special tokens" in err and "Traceback" not in err, err


def test_infer_streams_a_record_with_its_previous_text_and_query(folders, tmp_path, capsys):
    from svlm.data import StreamingRecord, Chunk
    d, clip = folders
    rec = StreamingRecord("clip:1", clip.name, 1.0, 4.0, [Chunk(float(t), t + 1.0, "Red passes." if t == 2 else "") for t in range(1, 4)],
                          previous="Kick-off in the rain.", query="Describe the play", data_root=str(clip.parent))
    (tmp_path/"r.jsonl").write_text(json.dumps(rec.to_dict()) + "\n")
    out = tmp_path/"m.jsonl"
    assert main(["infer", "--checkpoint", str(d/"q4"), "--data", str(tmp_path/"r.jsonl"), "--output-metrics", str(out),
                 "video.max_pixels=3136", "sampling.max_new_tokens=3"]) == 0
    got = capsys.readouterr().out
    assert "scores:" in got
    assert [json.loads(l)["t0"] for l in out.read_text().splitlines()] == [1.0, 2.0, 3.0]
    # the engine put the record's previous text and query in the first turn
    from svlm.stream import StreamEngine, load_streamer
    m, t, cfg, _ = load_streamer(d/"q4", ["video.max_pixels=3136", "sampling.max_new_tokens=3", "cache.vision_rounds=8"])
    eng = StreamEngine(m, t, cfg, query="Commentate on this match")
    eng.run_record(rec)
    text = t.decode(eng.cache.kept_ids())
    assert "Kick-off in the rain." in text and "Describe the play" in text and "Commentate" not in text
    assert eng.query == "Commentate on this match"                  # the engine's own query is back for the next stream


def test_vision_tokens_are_never_generated():
    from svlm.stream import _Banned
    out = _Banned([2, 5])(None, mx.zeros((1, 8)))
    assert np.isneginf(np.array(out)[0, [2, 5]]).all() and (np.array(out)[0, [0, 1, 3, 4, 6, 7]] == 0).all()
