"A tiny random Qwen2.5-VL built by transformers, for the tests that need a checkpoint written by another tool (imported, not collected)."
import torch


def hf_qwen25vl(seed=0, depth=2, scale=0.5, norm_scale=0.1):
    "transformers' Qwen2_5_VLForConditionalGeneration: a 32-wide, 2-layer decoder over the Qwen vocabulary, a `depth`-block tower, every weight ~ N(0, scale²)"
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    c = Qwen2_5_VLConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          vocab_size=151_680, rope_theta=100.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                          rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
                         vision_config=dict(depth=depth, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=32,
                                            fullatt_block_indexes=[depth - 1], tokens_per_second=2), tie_word_embeddings=True)
    m = Qwen2_5_VLForConditionalGeneration(c).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(1 + norm_scale * torch.randn_like(p) if "norm" in n or "ln_q" in n else scale * torch.randn_like(p))
    return m
