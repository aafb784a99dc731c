"Qwen2.5-VL generation with images and video (svlm.generate's VL section): greedy tokens against transformers 5.24 for images, against svlm's own full forward for video, prompts against the real chat template, quantized round trips, and bad inputs."
import svlm  # before mlx: loads OpenBLAS on Linux
import json, shutil
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mlx.core as mx
from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.utils import logging as hf_logging
from svlm.core import InputError, SamplingConfig
from svlm.tokenizer import load_tokenizer, qwen_tokenizer_dir, vl_prompt_ids
from svlm.qwen25vl import load_qwen25vl, convert_model, text_positions
from svlm.generate import VLInputs, vl_inputs, generate_vl, stream_vl, load_vl

hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
GREEDY = SamplingConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=10)
TEMPLATE = ("{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_hf(seed=0, layers=2, kv=1, hidden=32, heads=4, mrope=(2, 1, 1)):
    torch.manual_seed(seed)
    c = Qwen2_5_VLConfig(text_config=dict(hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=kv, vocab_size=151_680, rope_theta=100.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                          rope_scaling={"type": "mrope", "mrope_section": list(mrope)}),
                         vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=hidden,
                                            fullatt_block_indexes=[1], tokens_per_second=2), tie_word_embeddings=True)
    m = Qwen2_5_VLForConditionalGeneration(c).eval()
    with torch.no_grad():
        for n, p in m.named_parameters(): p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in n or "ln_q" in n else 0.5 * torch.randn_like(p))
    m.generation_config.eos_token_id, m.generation_config.pad_token_id = None, 0
    return m


@pytest.fixture(scope="module")
def tok(): return load_tokenizer("qwen")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("vl"); hf = tiny_hf(); hf.save_pretrained(d)
    return hf, load_qwen25vl(d)[0], d


def image(seed, h, w): return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind,n", [("image", 1), ("image", 300), ("video", 24)])
def test_prompt_matches_chat_template(tok, tmp_path, kind, n):
    d = tmp_path/"tok"; shutil.copytree(qwen_tokenizer_dir(), d); (d/"chat_template.jinja").write_text(TEMPLATE)
    hf = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    text = "What is in it? <|im_end|> (not a turn)"
    s = hf.apply_chat_template([{"role": "user", "content": [{"type": kind, kind: "x"}, {"type": "text", "text": text}]}],
                               tokenize=False, add_generation_prompt=True).replace(f"<|{kind}_pad|>", f"<|{kind}_pad|>" * n)
    ids = vl_prompt_ids(tok, text, **{f"n_{kind}_tokens": n})
    assert tok.decode(ids) == s
    assert ids.count(tok.token_id("<|im_end|>")) == 2                 # the text's '<|im_end|>' stays text


@pytest.mark.parametrize("size", [(168, 224), (100, 300), (56, 56)])
def test_image_greedy_equals_transformers(tok, pair, size):
    hf, ours, _ = pair
    inp = VLInputs("Describe this image.", images=(image(1, *size),))
    got = generate_vl(ours, tok, inp, config=GREEDY, stop_ids=(), prefill_step=16).tokens
    p = vl_inputs(tok, ours.config, inp)
    t = lambda a: torch.tensor(np.array(a))
    with torch.no_grad():
        ref = hf.generate(input_ids=t(p.ids).long(), attention_mask=torch.ones_like(t(p.ids)), pixel_values=t(p.pixels["pixel_values"]),
                          image_grid_thw=t(p.pixels["image_grid_thw"]).long(), mm_token_type_ids=t(p.ids == 151655).long(),
                          max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    assert got == ref[0, p.ids.shape[1]:].tolist()


@pytest.mark.parametrize("frames,fps", [(4, 2.0), (6, 4.0), (3, 1.0)])
def test_video_greedy_equals_full_forward(tok, pair, frames, fps):
    _, ours, _ = pair
    clip = np.random.default_rng(2).integers(0, 256, (frames, 56, 84, 3), dtype=np.uint8)
    inp = VLInputs("What happens?", video=clip, fps=fps, video_min_pixels=56 * 56)
    g = generate_vl(ours, tok, inp, config=GREEDY, stop_ids=(), prefill_step=9).tokens
    p = vl_inputs(tok, ours.config, inp); T = p.ids.shape[1]
    ids = mx.concatenate([p.ids, mx.array([g[:-1]], dtype=mx.int32)], axis=1)
    pos = mx.concatenate([p.positions, text_positions(1, len(g) - 1, T + p.rope_deltas)], axis=2)
    emb = ours.model.embed_tokens(ids); emb[:, :T] = ours.embed(p.ids, **p.pixels)
    assert g == mx.argmax(ours(ids, pos, input_embeddings=emb)[0, T - 1:], axis=-1).tolist()


def test_generated_pad_ids_are_plain_tokens(tok, pair):
    "A processor forcing <|image_pad|> as the first generated token: decoding goes on, embedding it as a token, not a vision slot"
    _, ours, _ = pair
    force = lambda toks, logits: logits + 1e4 * (mx.arange(logits.shape[-1]) == 151655)
    from svlm.generate import MRoPEPositions, stream_generate
    p = vl_inputs(tok, ours.config, VLInputs("x", images=(image(3, 56, 56),)))
    steps = list(stream_generate(MRoPEPositions(ours, p.positions, p.rope_deltas), tok, p.ids, config=GREEDY, stop_ids=(),
                                 input_embeddings=ours.embed(p.ids, **p.pixels), processors=[force]))
    assert [s.token for s in steps] == [151655] * GREEDY.max_new_tokens


def test_sampling_reproducible_and_stream_text(tok, pair):
    _, ours, _ = pair
    inp = VLInputs("Describe.", images=(image(4, 84, 84),))
    cfg = SamplingConfig(temperature=0.9, top_p=0.9, top_k=1024, max_new_tokens=8, seed=5)
    a = [s.token for s in stream_vl(ours, tok, inp, cfg, stop_ids=())]
    b = [s.token for s in stream_vl(ours, tok, inp, cfg, stop_ids=())]
    assert a == b and len(a) == 8


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_folder_generates(tok, pair, tmp_path, bits):
    _, ours, d = pair
    q = convert_model(d, tmp_path/f"q{bits}", bits=bits, group_size=32)
    cfg = json.loads((q/"config.json").read_text())
    assert cfg["quantization"] == {"group_size": 32, "bits": bits}
    m, t, note = load_vl(q)
    assert "no tokenizer files" in note                               # the source had none to carry
    g = generate_vl(m, tok, VLInputs("Describe.", images=(image(5, 56, 56),)), config=GREEDY, stop_ids=())
    assert len(g.tokens) == GREEDY.max_new_tokens


def test_bad_inputs(tok, pair, tmp_path):
    _, ours, _ = pair
    with pytest.raises(InputError, match="nope.png: file not found"): vl_inputs(tok, ours.config, VLInputs("x", images=(tmp_path/"nope.png",)))
    with pytest.raises(InputError, match="fps must be positive"): vl_inputs(tok, ours.config, VLInputs("x", video=np.zeros((2, 56, 56, 3), np.uint8), fps=0))
    with pytest.raises(InputError, match="uint8 frames"): vl_inputs(tok, ours.config, VLInputs("x", video=np.zeros((2, 56, 56), np.uint8)))
    with pytest.raises(InputError, match="field 'n_tokens'"): vl_prompt_ids(tok, "x", n_image_tokens=[2, -1])
