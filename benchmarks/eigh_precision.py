"""The null space's eigendecompositions in fp32 against fp64 (train/null_space.py `principal_basis`), on
SmolLM2-135M's input moments over 120 bundled replay rows: seconds of each, the largest difference in k (the
directions kept) and in the share of a moment's energy left open. Reproduces the figures in `principal_basis`'s
docstring (5.2 s against 11.1 s, the same k, within 2e-6).

    .venv/bin/python benchmarks/eigh_precision.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ENERGY = 0.98


def top_directions(moment, dtype):
    """The eigenvectors holding ENERGY of the moment's trace, as principal_basis picks them: ([n, k] fp64, k)."""
    import torch

    values, vectors = torch.linalg.eigh(moment.to(dtype))
    values, vectors = values.double().clamp(min=0).flip(0), vectors.flip(1)
    share = values.cumsum(0) / values.sum()
    k = min(int((share < ENERGY - 1e-6).sum()) + 1, moment.shape[0])
    return vectors[:, :k].double(), k


def left_open(moment, basis) -> float:
    """The share of the moment's energy outside the span of `basis`."""
    total = moment.double().trace()
    return float((total - (basis.T @ moment.double() @ basis).trace()) / total)


def main() -> None:
    import torch
    from anchor_padding import replay_examples
    from anchor_profile import lora_smollm2

    from tunesmith.train.null_space import input_moments, lora_layers

    model, tokenizer = lora_smollm2()
    began = time.perf_counter()
    moments, _, tokens = input_moments(model, lora_layers(model), replay_examples(tokenizer)[:120],
                                       tokenizer.pad_token_id)
    print(f"read {tokens} tokens into {len(moments)} moments in {time.perf_counter() - began:.1f} s")
    seconds = {"fp64": 0.0, "fp32": 0.0}
    k_difference, energy_difference, most_open = 0, 0.0, 0.0
    for moment in moments.values():
        found = {}
        for name, dtype in (("fp64", torch.float64), ("fp32", torch.float32)):
            began = time.perf_counter()
            found[name] = top_directions(moment, dtype)
            seconds[name] += time.perf_counter() - began
        k_difference = max(k_difference, abs(found["fp64"][1] - found["fp32"][1]))
        open64, open32 = left_open(moment, found["fp64"][0]), left_open(moment, found["fp32"][0])
        energy_difference, most_open = max(energy_difference, abs(open64 - open32)), max(most_open, open32)
    print(f"eigh fp64 {seconds['fp64']:.1f} s, fp32 {seconds['fp32']:.1f} s; largest k difference {k_difference}; "
          f"largest difference in the energy left open {energy_difference:.2e}; most left open (fp32) {most_open:.4f}")


if __name__ == "__main__":
    main()
