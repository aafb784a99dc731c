"Dense checks of svlm.generate against oracles: fresh full forwards, hand-computed distributions, single runs, mlx-lm's loop."
import math
from dataclasses import replace
import numpy as np
import pytest
import svlm
import mlx.core as mx
from svlm.core import InputError, SamplingConfig
from svlm.model import Model, KVCache, preset
from svlm.tokenizer import ByteTokenizer
from svlm.generate import (repetition_penalty, make_logits_processors, top_k_filter, top_p_filter, min_p_filter, greedy,
                           make_sampler, sampler_from, padded_mask, generate_step, stream_generate, generate, batch_generate,
                           prompt_ids, stop_ids_of)

GREEDY = SamplingConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    mx.random.seed(0)
    return Model(preset("tiny", vocab_size=TOK.vocab_size, video_pad_id=TOK.token_id("<|video_pad|>"), tie_word_embeddings=False))


def last_logits(model, ids): return model(mx.array([ids]))[0, -1]


def penalized(logits, ctx, p):
    "Numpy oracle of the sign-aware repetition penalty"
    x = np.array(logits, dtype=np.float64).copy()
    for t in set(ctx): x[t] = x[t] * p if x[t] < 0 else x[t] / p
    return x


# --- processors -------------------------------------------------------------------------------------------------------

def test_repetition_penalty_sign_aware():
    out = repetition_penalty(1.5)(mx.array([[0, 2, 2]]), mx.array([[3.0, 1.0, -3.0, 0.0]]))
    np.testing.assert_allclose(np.array(out), [[2.0, 1.0, -4.5, 0.0]], rtol=1e-6)


def test_repetition_penalty_context_and_rows():
    logits = mx.array([[1.0, 2.0, 3.0, -1.0], [1.0, 2.0, 3.0, -1.0]])
    out = repetition_penalty(2.0, context=2)(mx.array([[0, 1, 3], [2, 2, 2]]), logits)   # row 0 sees only (1, 3)
    np.testing.assert_allclose(np.array(out), [[1.0, 1.0, 3.0, -2.0], [1.0, 2.0, 1.5, -1.0]])


def test_repetition_penalty_empty_and_invalid():
    x = mx.array([[1.0, -1.0]])
    assert repetition_penalty(2.0)(mx.zeros((1, 0), mx.int32), x).tolist() == x.tolist()
    with pytest.raises(InputError): repetition_penalty(0.0)
    assert make_logits_processors(replace(GREEDY, repetition_penalty=1.0)) == []


# --- filters and samplers ----------------------------------------------------------------------------------------------

P = [0.4, 0.3, 0.15, 0.1, 0.05]


def kept(x): return np.array(x > -mx.inf).astype(int).tolist()


@pytest.mark.parametrize("k,want", [(1, [1, 0, 0, 0, 0]), (3, [1, 1, 1, 0, 0]), (0, [1] * 5), (5, [1] * 5), (9, [1] * 5)])
def test_top_k(k, want):
    assert kept(top_k_filter(mx.log(mx.array([P])), k))[0] == want


@pytest.mark.parametrize("p,want", [(0.3, [1, 0, 0, 0, 0]), (0.5, [1, 1, 0, 0, 0]), (0.72, [1, 1, 1, 0, 0]), (0.9, [1, 1, 1, 1, 0]),
                                    (0.99, [1] * 5), (1.0, [1] * 5)])
def test_top_p(p, want):
    # cumulative mass 0.4, 0.7, 0.85, 0.95, 1.0: keep the smallest prefix whose mass reaches p
    assert kept(top_p_filter(mx.log(mx.array([P])), p))[0] == want


@pytest.mark.parametrize("m,want", [(0.3, [1, 1, 1, 0, 0]), (0.5, [1, 1, 0, 0, 0]), (0.2, [1, 1, 1, 1, 0]), (0.0, [1] * 5), (1.0, [1, 0, 0, 0, 0])])
def test_min_p(m, want):
    # thresholds: p ≥ m × 0.4, i.e. 0.12, 0.2, 0.08, 0, 0.4
    assert kept(min_p_filter(mx.log(mx.array([P])), m))[0] == want


def test_filters_per_row_and_unnormalized():
    lp = mx.log(mx.array([P, P[::-1]]))
    assert kept(top_k_filter(lp, 2)) == [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert kept(top_p_filter(lp, 0.6)) == [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert kept(min_p_filter(lp, 0.5)) == [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]]
    # top-p measures mass relative to what is left (rows after another filter, or logits off by a constant)
    shifted = mx.log(mx.array([P])) + 3.0
    assert kept(top_p_filter(shifted, 0.72)) == [[1, 1, 1, 0, 0]]


def test_filter_order_is_intersection():
    lp = mx.log(mx.array([P]))
    a = top_k_filter(min_p_filter(top_p_filter(lp, 0.9), 0.3), 4)
    b = top_p_filter(top_k_filter(min_p_filter(lp, 0.3), 4), 0.9)
    assert kept(a) == kept(b) == [[1, 1, 1, 0, 0]]


def test_sampler_frequencies_and_temperature():
    lp = mx.broadcast_to(mx.log(mx.array([P])), (40000, 5))
    f = np.bincount(np.array(make_sampler(1.0, top_p=0.72)(lp, mx.random.key(1))), minlength=5) / 40000
    np.testing.assert_allclose(f, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0], atol=0.012)   # 5 sigma of a binomial at n=40000
    f = np.bincount(np.array(make_sampler(2.0, min_p=0.5)(lp, mx.random.key(2))), minlength=5) / 40000
    w = np.sqrt([0.4, 0.3]); np.testing.assert_allclose(f, [*(w / w.sum()), 0, 0, 0], atol=0.012)   # temperature after filtering
    assert make_sampler(0.0) is greedy
    with pytest.raises(InputError): make_sampler(-1.0)


def test_seeded_sampler_ignores_global_rng():
    lp = mx.broadcast_to(mx.log(mx.array([P])), (64, 5))
    s = make_sampler(1.0)
    mx.random.seed(1); a = s(lp, mx.random.key(5)).tolist()
    mx.random.seed(2); b = s(lp, mx.random.key(5)).tolist()
    assert a == b and a != s(lp, mx.random.key(6)).tolist()


# --- the loop against a fresh full forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("prefill_step", [1, 3, 512])
def test_greedy_equals_full_forward(model, prefill_step):
    ids = TOK.encode("Messi, Messi, Messi!")
    steps = list(generate_step(model, ids, max_tokens=15, prefill_step=prefill_step))
    gen = [t for (t,), _ in steps]
    assert len(set(gen)) > 3
    for i, ((t,), (l,)) in enumerate(steps):
        full = last_logits(model, ids + gen[:i])
        assert t == mx.argmax(full).item()
        assert abs(l - (full[t] - mx.logsumexp(full)).item()) < 1e-5


def test_repetition_penalty_in_loop_matches_oracle(model):
    ids, R, pen = TOK.encode("again and again"), 6, 3.0
    cfg = replace(GREEDY, repetition_penalty=pen, repetition_context=R, max_new_tokens=10)
    g = generate(model, TOK, ids, config=cfg, stop_ids=())
    ctx = list(ids)
    for t, l in zip(g.tokens, g.logprobs):
        x = penalized(last_logits(model, ctx), ctx[-R:], pen)
        assert t == int(np.argmax(x))
        assert abs(l - (x[t] - np.log(np.exp(x - x.max()).sum()) - x.max())) < 1e-5
        ctx.append(t)
    plain = generate(model, TOK, ids, config=replace(cfg, repetition_penalty=1.0), stop_ids=())
    assert plain.tokens != g.tokens


def test_continue_from_warm_cache(model):
    a, b = TOK.encode("First half. "), TOK.encode("Second half:")
    cache = model.make_cache()
    g1 = generate(model, TOK, a, cache=cache, config=replace(GREEDY, max_new_tokens=4), stop_ids=())
    assert cache[0].offset == len(a) + 4                     # every yielded token is in the cache
    g2 = generate(model, TOK, b, cache=cache, config=GREEDY, stop_ids=())
    fresh = generate(model, TOK, a + g1.tokens + b, config=GREEDY, stop_ids=())
    assert g2.tokens == fresh.tokens and g2.prompt_tokens == len(b)


def test_early_break_leaves_yielded_tokens_in_cache(model):
    ids, cache, got = TOK.encode("Kick-off"), model.make_cache(), []
    for s in stream_generate(model, TOK, ids, cache=cache, config=replace(GREEDY, max_new_tokens=50), stop_ids=()):
        got.append(s.token)
        if len(got) == 5: break
    mx.eval([c.state for c in cache])
    assert cache[0].offset == len(ids) + 5


# --- sampling reproducibility ----------------------------------------------------------------------------------------------

def test_seeded_generation_reproducible(model):
    cfg = SamplingConfig(temperature=1.0, top_p=0.9, top_k=40, min_p=0.01, max_new_tokens=20, seed=11)
    mx.random.seed(0); a = generate(model, TOK, "Penalty!", config=cfg, stop_ids=())
    mx.random.seed(99); b = generate(model, TOK, "Penalty!", config=cfg, stop_ids=())
    c = generate(model, TOK, "Penalty!", config=replace(cfg, seed=12), stop_ids=())
    assert a.tokens == b.tokens and a.logprobs == b.logprobs and a.tokens != c.tokens


def test_sampled_tokens_respect_filters(model):
    cfg = SamplingConfig(temperature=1.5, top_k=3, repetition_penalty=1.0, max_new_tokens=12, seed=0)
    ids = TOK.encode("Top three:")
    g = generate(model, TOK, ids, config=cfg, stop_ids=())
    for i, t in enumerate(g.tokens):
        top3 = np.argsort(-np.array(last_logits(model, ids + g.tokens[:i])))[:3]
        assert t in top3


# --- text, stops, statistics -----------------------------------------------------------------------------------------------

def forcing(seq):
    n = 0
    def process(tokens, logits):
        nonlocal n
        i, n = seq[min(n, len(seq) - 1)], n + 1
        return logits + 1e4 * (mx.arange(logits.shape[-1]) == i)
    return process


def test_text_never_splits_utf8_and_stops_on_im_end(model):
    seq = list("é🎉".encode()) + [TOK.token_id("<|im_end|>")]
    steps = list(stream_generate(model, TOK, "x", config=replace(GREEDY, max_new_tokens=20), processors=[forcing(seq)]))
    assert [s.text for s in steps] == ["", "é", "", "", "", "🎉", ""]
    assert steps[-1].finish_reason == "stop" and steps[-1].token == TOK.token_id("<|im_end|>")
    assert all(s.finish_reason is None for s in steps[:-1])
    g = generate(model, TOK, "x", config=replace(GREEDY, max_new_tokens=20), processors=[forcing(seq)])
    assert g.text == "é🎉" and g.finish_reason == "stop" and len(g.tokens) == 7


def test_length_flushes_unfinished_character(model):
    g = generate(model, TOK, "x", config=replace(GREEDY, max_new_tokens=2), stop_ids=(), processors=[forcing(list("🎉".encode()))])
    assert g.text == "\ufffd" and g.finish_reason == "length"


def test_stop_ids_default_and_override():
    sp = TOK.special_ids
    assert stop_ids_of(TOK) == {sp["<|im_end|>"], sp["<|endoftext|>"]}
    assert stop_ids_of(TOK, ()) == set() and stop_ids_of(TOK, [5, 6]) == {5, 6}


def test_statistics(model):
    mx.reset_peak_memory()
    ids = TOK.encode("stats " * 10)
    g = generate(model, TOK, ids, config=replace(GREEDY, max_new_tokens=6), stop_ids=())
    assert (g.prompt_tokens, g.generation_tokens, g.finish_reason) == (len(ids), 6, "length")
    assert g.prompt_tps > 0 and g.generation_tps > 0 and g.peak_memory_gb > 0
    steps = list(stream_generate(model, TOK, ids, config=replace(GREEDY, max_new_tokens=3), stop_ids=()))
    assert [s.generation_tokens for s in steps] == [1, 2, 3] and steps[0].generation_tps == 0.0


def test_prompt_forms_and_errors(model):
    ids = TOK.encode("same")
    want = generate(model, TOK, ids, config=GREEDY, stop_ids=()).tokens
    for p in ("same", np.array(ids), mx.array([ids])):
        assert generate(model, TOK, p, config=GREEDY, stop_ids=()).tokens == want
    with pytest.raises(InputError): generate(model, TOK, [], config=GREEDY)
    with pytest.raises(InputError): prompt_ids(TOK, mx.zeros((2, 3), mx.int32))
    g = generate(model, TOK, ids, config=replace(GREEDY, max_new_tokens=0))
    assert g.tokens == [] and g.finish_reason is None and g.text == ""


# --- vision ---------------------------------------------------------------------------------------------------------------

def vision_prompt(model, seed=0):
    c = model.config
    mx.random.seed(seed)
    feats = model.encode_video(mx.random.randint(0, 256, (1, 2, c.frame_height, c.frame_width, 3)).astype(mx.uint8))
    VP = TOK.token_id("<|video_pad|>")
    return TOK.encode("Time=3.0-4.0s ") + [VP] * feats.shape[1] + TOK.encode(" comment:"), feats


@pytest.mark.parametrize("prefill_step", [2, 5, 512])
def test_vision_matches_full_forward(model, prefill_step):
    ids, feats = vision_prompt(model)
    g = generate(model, TOK, ids, vision=feats, config=GREEDY, stop_ids=(), prefill_step=prefill_step)
    for i, (t, l) in enumerate(zip(g.tokens, g.logprobs)):
        full = model(None, input_embeddings=model.embed_with_vision(mx.array([ids + g.tokens[:i]]), feats))[0, -1]
        assert t == mx.argmax(full).item()
        assert abs(l - (full[t] - mx.logsumexp(full)).item()) < 1e-5
    emb = model.embed_with_vision(mx.array([ids]), feats)
    assert generate(model, TOK, ids, input_embeddings=emb, config=GREEDY, stop_ids=(), prefill_step=3).tokens == g.tokens
    assert generate(model, TOK, ids, input_embeddings=emb[0], config=GREEDY, stop_ids=()).tokens == g.tokens


def test_vision_errors(model):
    ids, feats = vision_prompt(model)
    with pytest.raises(InputError, match="vision features"): generate(model, TOK, ids, vision=feats[:, :3], config=GREEDY)
    with pytest.raises(InputError, match="not both"): generate(model, TOK, ids, vision=feats, input_embeddings=feats, config=GREEDY)
    with pytest.raises(InputError, match="do not match"):
        generate(model, TOK, ids, input_embeddings=mx.zeros((len(ids) + 1, model.config.hidden_size)), config=GREEDY)


# --- batches --------------------------------------------------------------------------------------------------------------

PROMPTS = ["Goal!", "What a save by the keeper", "x", "Corner kick, headed in at the near post"]


@pytest.mark.parametrize("prefill_step", [4, 512])
def test_batch_equals_singles(model, prefill_step):
    b = batch_generate(model, TOK, PROMPTS, config=GREEDY, stop_ids=(), prefill_step=prefill_step)
    assert b.prompt_tokens == sum(len(TOK.encode(p)) for p in PROMPTS)
    for r, p in zip(b.results, PROMPTS):
        s = generate(model, TOK, p, config=GREEDY, stop_ids=())
        assert r.tokens == s.tokens and r.text == s.text
        np.testing.assert_allclose(r.logprobs, s.logprobs, atol=1e-4)


def test_batch_with_repetition_penalty_equals_singles(model):
    cfg = replace(GREEDY, repetition_penalty=2.0, repetition_context=8)   # longer than "x": its window must not see pads
    b = batch_generate(model, TOK, PROMPTS, config=cfg, stop_ids=(), pad_id=TOK.encode("!")[0])
    for r, p in zip(b.results, PROMPTS):
        assert r.tokens == generate(model, TOK, p, config=cfg, stop_ids=()).tokens


def test_batch_rows_stop_separately(model):
    singles = [generate(model, TOK, p, config=GREEDY, stop_ids=()).tokens for p in PROMPTS]
    stop = singles[0][1]
    b = batch_generate(model, TOK, PROMPTS, config=GREEDY, stop_ids=[stop])
    for r, s in zip(b.results, singles):
        n = s.index(stop) + 1 if stop in s else len(s)
        assert r.tokens == s[:n]
        assert r.finish_reason == ("stop" if stop in s else "length")


def test_padded_mask_never_empty():
    m = np.array(padded_mask(5, 2, [4, 1, 0]))
    assert m.shape == (3, 1, 5, 7) and m.any(-1).all()
    assert not m[0, 0, :, :4][2:].any()                               # real queries of row 0 never see its pads


def test_batch_errors(model):
    with pytest.raises(InputError): batch_generate(model, TOK, ["ok", ""], config=GREEDY)
    with pytest.raises(InputError): batch_generate(model, TOK, [], config=GREEDY)


# --- other caches --------------------------------------------------------------------------------------------------------

class ListCache:
    "A minimal protocol cache: concatenates, exposes offset, update_and_fetch, make_mask and state"
    def __init__(self): self.k = self.v = None; self.offset = 0
    def update_and_fetch(self, k, v):
        self.k = k if self.k is None else mx.concatenate([self.k, k], axis=2)
        self.v = v if self.v is None else mx.concatenate([self.v, v], axis=2)
        self.offset += k.shape[2]
        return self.k, self.v
    def make_mask(self, N, return_array=False, window_size=None): return None if N == 1 else "causal"
    @property
    def state(self): return self.k, self.v


def test_protocol_caches_and_on_token(model):
    ids = TOK.encode("Any cache")
    want = generate(model, TOK, ids, config=GREEDY, stop_ids=()).tokens
    seen = []
    cache = [ListCache() for _ in model.layers]
    g = generate(model, TOK, ids, cache=cache, config=GREEDY, stop_ids=(), prefill_step=4, on_token=seen.append)
    assert g.tokens == want and seen == want and cache[0].offset == len(ids) + len(want)
    lm = pytest.importorskip("mlx_lm.models.cache")
    for c in ([lm.KVCache() for _ in model.layers], [lm.RotatingKVCache(max_size=128, keep=4) for _ in model.layers]):
        assert generate(model, TOK, ids, cache=c, config=GREEDY, stop_ids=()).tokens == want


# --- against mlx-lm's loop ----------------------------------------------------------------------------------------------

def test_same_tokens_as_mlx_lm_generate_step(model):
    lg = pytest.importorskip("mlx_lm.generate")
    from mlx_lm.sample_utils import make_logits_processors as lm_processors
    from mlx_lm.models.cache import make_prompt_cache
    ids = TOK.encode("Same loop, same tokens")
    for pen in (None, 1.5):
        lm = [t for t, _ in lg.generate_step(mx.array(ids), model, max_tokens=12, prompt_cache=make_prompt_cache(model),
                                            logits_processors=lm_processors(repetition_penalty=pen, repetition_context_size=5))]
        cfg = replace(GREEDY, repetition_penalty=pen or 1.0, repetition_context=5)
        assert generate(model, TOK, ids, config=cfg, stop_ids=()).tokens == lm


def test_bfloat16_model_logprobs_in_float32():
    mx.random.seed(1)
    m = Model(preset("tiny", vocab_size=TOK.vocab_size, video_pad_id=TOK.token_id("<|video_pad|>"), tie_word_embeddings=False))
    m.set_dtype(mx.bfloat16)
    g = generate(m, TOK, "half precision", config=replace(GREEDY, max_new_tokens=4), stop_ids=())
    assert len(g.tokens) == 4 and all(isinstance(l, float) and l <= 0 for l in g.logprobs)


def test_batch_zero_tokens(model):
    b = batch_generate(model, TOK, PROMPTS[:2], config=replace(GREEDY, max_new_tokens=0))
    assert [r.tokens for r in b.results] == [[], []] and b.generation_tokens == 0


def test_bench_generate_smoke():
    pytest.importorskip("mlx_lm")
    from svlm.bench import bench_generate
    r = bench_generate("tiny", prompt_len=24, max_tokens=6, repeats=1, prefill_step=8, verbose=False)
    assert r["tokens_match"] is True and r["prefill_ratio"] > 0 and r["decode_ratio"] > 0
    r = bench_generate("tiny", prompt_len=24, max_tokens=6, repeats=1, verbose=False, sampling=SamplingConfig(max_new_tokens=6))
    assert r["tokens_match"] is None and r["svlm"]["decode_tps"] > 0


def test_zero_context_penalizes_nothing(model):
    x = mx.array([[1.0, -1.0, 2.0]])
    assert repetition_penalty(2.0, context=0)(mx.array([[0, 1]]), x).tolist() == x.tolist()
    cfg = replace(GREEDY, repetition_penalty=2.0, repetition_context=0)
    assert generate(model, TOK, "no context", config=cfg, stop_ids=()).tokens == generate(model, TOK, "no context", config=GREEDY, stop_ids=()).tokens


def test_streaming_cache_from_svlm_cache(model):
    sc = pytest.importorskip("svlm.cache")
    from svlm.core import CacheConfig
    ids = TOK.encode("A long enough prompt for sliding")
    want = generate(model, TOK, ids, config=GREEDY, stop_ids=()).tokens
    cache = sc.make_cache(model, TOK, CacheConfig(mode="sink", sink_tokens=4, max_tokens=512, step_tokens=16))   # never slides here
    cache.declare(ids)
    g = generate(model, TOK, ids, cache=cache, config=GREEDY, stop_ids=(), prefill_step=8, on_token=lambda t: cache.declare([t]))
    assert g.tokens == want and cache.kept_ids() == ids + want
    small = sc.make_cache(model, TOK, CacheConfig(mode="sink", sink_tokens=4, max_tokens=24, step_tokens=8))       # slides while generating
    small.declare(ids)
    g = generate(model, TOK, ids, cache=small, config=replace(GREEDY, max_new_tokens=30), stop_ids=(), on_token=lambda t: small.declare([t]))
    assert len(g.tokens) == 30 and small.offset <= 24 and len(small.kept_ids()) == small.offset
