"""How the `tiny` built-in model was made: a 2-layer Llama with a byte-level tokenizer.

It makes every command runnable on a bare CPU machine with no download. Its weights are seeded
random values (its text is noise), written as a normal HF directory (config.json, model.safetensors,
tokenizer files), so the same directory also loads in transformers, the engine's test oracle. The
package ships the result in `model/configs/tiny/` (1.4 MB), so nothing is written at run time;
`python -m shifttune.model.tiny DIR` writes it again (a test checks the two are the same).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from shifttune.config import ModelConfig
from shifttune.model.loader import expected_shapes

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 264,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "float32",
}
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel tokenizers use)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tokenizer(out: Path) -> None:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab |= {ch: len(SPECIAL_TOKENS) + b for b, ch in _byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def write_random_weights(out: Path, config: dict, seed: int = 0) -> None:
    """Seeded random weights for a Llama-shaped config, saved as HF-named safetensors."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in expected_shapes(ModelConfig.from_dict(config)).items():
        tensors[name] = torch.ones(shape) if "norm" in name else torch.randn(shape, generator=gen) * 0.05
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def write_tiny_model(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(TINY_CONFIG, indent=2) + "\n")
    write_tokenizer(out)
    write_random_weights(out, TINY_CONFIG)
    return out


if __name__ == "__main__":
    print(write_tiny_model(Path(sys.argv[1])))
