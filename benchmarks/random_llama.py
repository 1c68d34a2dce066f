"""A random-initialised llama-family model with a given tokenizer, for GPU benchmarks that must not download one.

Presets: `1b` has Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, tied embeddings;
1.07B parameters with SmolLM2's 49,152-token vocabulary); `small` (hidden 512, 4 layers) trains in milliseconds
a step. Weights are saved in bf16; the loss of a random model says nothing about quality, only that variants
agree.

    python benchmarks/random_llama.py --tokenizer DIR --preset 1b --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

PRESETS = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "small": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 4},
}


def build_random_llama(tokenizer_dir: Path, target: Path, preset: str = "1b", seed: int = 0) -> Path:
    """Save a random llama of `preset`'s shape with `tokenizer_dir`'s tokenizer to `target` (initialised on the GPU
    when there is one); returns `target`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **PRESETS[preset])
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    build_random_llama(args.tokenizer, args.out, args.preset)
    print(args.out)


if __name__ == "__main__":
    main()
