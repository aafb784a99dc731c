"""`vision_delta`: the toy encoder sees each chunk after the previous chunk's last frame. Training takes that frame from
the record (`FrameCache(previous_frame=True)`), streaming keeps it from the chunk before (`StreamEngine.encode`); the
two must hand the encoder the same frames, or a model trained one way streams another. The oracle is `chunk_context`
over the whole record: the frames are compared exactly, the features to 1e-5 (a matmul over one chunk
rounds differently from one over all of them, ~2e-7 here)."""
import svlm
import numpy as np
import mlx.core as mx
import pytest
from svlm.core import Config, SynthConfig, StreamConfig, SamplingConfig
from svlm.synth import make_dataset
from svlm.data import convert, load_records
from svlm.model import Model, preset, chunk_context
from svlm.tokenizer import ByteTokenizer
from svlm.train import FrameCache
from svlm.stream import StreamEngine

@pytest.fixture(scope="module")
def record(tmp_path_factory):
    d = tmp_path_factory.mktemp("delta")
    ann = make_dataset(d, "train", n_clips=1, cfg=SynthConfig(seed=5, duration=6.0, width=84, height=56))
    convert(ann, d/"train.jsonl")
    return load_records(d/"train.jsonl")

def _model(tok):
    mx.random.seed(0)
    return Model(preset("tiny", vision_delta=True, vocab_size=tok.vocab_size, video_pad_id=tok.token_id("<|video_pad|>")))

def test_frame_cache_prepends_previous_frame(record):
    plain, ctx = FrameCache(record, (56, 84), 2)(0), FrameCache(record, (56, 84), 2, previous_frame=True)(0)
    assert ctx.shape == (plain.shape[0], 3, 56, 84, 3)
    np.testing.assert_array_equal(ctx[1:, 0], plain[:-1, 1])         # chunk k after chunk k-1's last frame
    np.testing.assert_array_equal(ctx[0, 0], plain[0, 0])            # the first after its own first frame
    np.testing.assert_array_equal(ctx[:, 1:], plain)
    assert np.abs(ctx[1:, 0].astype(int) - ctx[1:, 2]).max() > 0      # the play moves: the change is not all zero

def test_stream_encodes_what_training_encodes(record):
    tok = ByteTokenizer()
    model = _model(tok)
    eng = StreamEngine(model, tok, Config(stream=StreamConfig(policy="model"), sampling=SamplingConfig(max_new_tokens=2)))
    seen, enc = [], model.encode_video
    model.encode_video = lambda fr: (seen.append(np.array(fr)), enc(fr))[1]
    for _ in range(2):                                                 # twice: a new stream starts without the old one's frame
        seen.clear()
        eng.run_record(record[0])
        want = FrameCache(record, (56, 84), 2, previous_frame=True)(0)
        np.testing.assert_array_equal(np.concatenate(seen), want)
    feats = np.concatenate([np.array(enc(mx.array(s))) for s in seen])
    np.testing.assert_allclose(feats, np.array(enc(mx.array(want))), atol=1e-5)   # one chunk at a time vs all at once: float32 rounding only

def test_chunk_context_prev_and_mlx():
    fr = np.random.default_rng(0).integers(0, 255, (4, 2, 56, 84, 3), dtype=np.uint8)
    prev = np.full((56, 84, 3), 7, np.uint8)
    c = chunk_context(fr, prev)
    np.testing.assert_array_equal(c[0, 0], prev)
    np.testing.assert_array_equal(np.array(chunk_context(mx.array(fr), prev)), c)
