"""Bad input never produces a traceback: random truncations and byte flips of every kind of file svlm reads (annotations and
their seek files, records, events, WebVTT, metrics, YAML configs, checkpoints) and random command-line overrides. The only
exception that may escape a reader is svlm's `InputError`, and it names the file it is about; nothing is written on failure.

Each property's example count is its `max_examples` (hypothesis runs exactly that many when no example fails)."""
import json, shutil, tempfile
from pathlib import Path
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
import svlm
import mlx.core as mx
from svlm.core import InputError, load_config, recipe
from svlm.data import AnnotationFile, convert, load_records
from svlm.events import Event, write_events, read_events, write_vtt, read_vtt, write_metrics, read_metrics

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT/"data"/"annotations"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

cuts = st.floats(0.0, 1.0)                                                      # keep this fraction of the bytes (1: all)
flips = st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), max_size=4)   # (position, xor mask)

def mutated(b:bytes, cut:float, fl) -> bytes:
    "`b` truncated to the fraction `cut`, then with the bytes at `fl`'s positions xor-ed"
    b = bytearray(b if cut >= 1 else b[:int(len(b) * cut)])
    for pos, x in fl:
        if b: b[pos % len(b)] ^= x
    return bytes(b)

def refused_or_read(fn, *paths):
    "Call `fn`; an exception other than an `InputError` naming one of `paths` fails the property"
    try: return fn()
    except InputError as e:
        assert any(Path(p).name in str(e) for p in paths), f"{e!r} names none of {[Path(p).name for p in paths]}"

@pytest.fixture(scope="module")
def tmp():
    d = Path(tempfile.mkdtemp(prefix="svlm-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)

def _case(tmp, name) -> Path:
    d = Path(tempfile.mkdtemp(dir=tmp)); (d/name).mkdir(); return d/name

@FUZZ
@given(which=st.sampled_from(["streamingvlm_with_seeks.jsonl", "streamingvlm_seeks.jsonl", "livecc_with_seeks.jsonl"]), cut=cuts, fl=flips)
def test_annotations_and_seek_files(tmp, which, cut, fl):
    d = _case(tmp, "ann")
    for f in DATA.glob("*.jsonl"): shutil.copy(f, d/f.name)
    (d/which).write_bytes(mutated((DATA/which).read_bytes(), cut, fl))
    ann = d/("livecc_with_seeks.jsonl" if which.startswith("livecc") else "streamingvlm_with_seeks.jsonl")
    out = d/"records.jsonl"; out.write_text("old\n")
    r = refused_or_read(lambda: convert(ann, out, data_root=str(d)), ann, d/"streamingvlm_seeks.jsonl")
    if r is None: assert out.read_text() == "old\n"                          # a refused conversion leaves the output as it was
    else: load_records(out)

@pytest.fixture(scope="module")
def good(tmp):
    "One well-formed file of each kind svlm writes"
    d = tmp/"good"; d.mkdir()
    convert(DATA/"streamingvlm_with_seeks.jsonl", d/"records.jsonl", data_root=str(d))
    evs = [Event(1.0, 2.0, "Red passes forward.", "speak", 0.75, 12.5), Event(3.0, 4.5, "Great save by Blue!")]
    write_events(d/"events.jsonl", evs); write_vtt(d/"events.vtt", evs)
    write_metrics(d/"metrics.jsonl", [dict(t0=0.0, t1=1.0, latency_ms=10.0, ttft_ms=None, tokens=3, cache_tokens=40, peak_mb=1.5, spoke=False)])
    shutil.copy(recipe("toy"), d/"toy.yaml")
    return d

READERS = {"records.jsonl": load_records, "events.jsonl": read_events, "events.vtt": read_vtt, "metrics.jsonl": read_metrics,
           "toy.yaml": load_config}

@FUZZ
@given(name=st.sampled_from(sorted(READERS)), cut=cuts, fl=flips)
def test_records_events_vtt_metrics_config(tmp, good, name, cut, fl):
    p = _case(tmp, "f")/name
    p.write_bytes(mutated((good/name).read_bytes(), cut, fl))
    refused_or_read(lambda: READERS[name](p), p)

@FUZZ
@given(text=st.text(max_size=300))
def test_vtt_and_jsonl_from_any_text(tmp, text):
    d = _case(tmp, "t")
    (d/"x.vtt").write_text("WEBVTT\n\n" + text); (d/"x.jsonl").write_text(text)
    refused_or_read(lambda: read_vtt(d/"x.vtt"), d/"x.vtt")
    refused_or_read(lambda: read_events(d/"x.jsonl"), d/"x.jsonl")
    refused_or_read(lambda: load_records(d/"x.jsonl"), d/"x.jsonl")

@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(["sampling.temperature", "train.steps", "cache.mode", "video.fps", "cache.vision_rounds", "tokenizer.sink",
                            "train.model", "stream.policy", "nope", "sampling", "sampling.temperature.x", ""]),
       value=st.text(max_size=20), sep=st.sampled_from(["=", "", "=="]))
def test_command_line_overrides(key, value, sep):
    try: load_config(None, [f"{key}{sep}{value}"])
    except InputError as e: assert "command line" in str(e) or "override" in str(e), repr(e)

@pytest.fixture(scope="module")
def checkpoint(tmp):
    "A tiny model's training checkpoint"
    import mlx.optimizers as optim
    from svlm.model import Model, preset
    from svlm.tokenizer import ByteTokenizer
    from svlm.train import save_checkpoint, make_optimizer
    from svlm.core import TrainConfig
    tok = ByteTokenizer()
    m = Model(preset("tiny", vocab_size=tok.vocab_size, video_pad_id=tok.token_id("<|video_pad|>")))
    opt = make_optimizer(TrainConfig()); opt.init(m.trainable_parameters())
    return save_checkpoint(tmp/"run", 1, m, tok, opt, dict(data={}, config={}))

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json", "svlm_tokenizer.json"]),
       cut=cuts, fl=flips)
def test_checkpoint_files(tmp, checkpoint, which, cut, fl):
    from svlm.train import load_checkpoint, make_optimizer, load
    from svlm.core import TrainConfig
    d = _case(tmp, "ck")
    shutil.rmtree(d); shutil.copytree(checkpoint, d)
    (d/which).write_bytes(mutated((checkpoint/which).read_bytes(), cut, fl))
    refused_or_read(lambda: load_checkpoint(d, make_optimizer(TrainConfig())), d/which)
    refused_or_read(lambda: load(d), d/which)

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["step", "data", "mlx_rng", "format", "config"]),
       value=st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=5), st.lists(st.integers(-2, 2**40), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
       drop=st.booleans())
def test_trainer_state_fields(tmp, checkpoint, key, value, drop):
    "A trainer state that is valid JSON but has a field missing or of the wrong type is refused by name, never a KeyError or TypeError"
    from svlm.train import load_checkpoint, make_optimizer
    from svlm.core import TrainConfig
    d = _case(tmp, "st")
    shutil.rmtree(d); shutil.copytree(checkpoint, d)
    s = json.loads((d/"trainer_state.json").read_text())
    if drop: s.pop(key, None)
    else: s[key] = value
    (d/"trainer_state.json").write_text(json.dumps(s))
    refused_or_read(lambda: load_checkpoint(d, make_optimizer(TrainConfig())), d/"trainer_state.json")
