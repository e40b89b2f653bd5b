"""How fast 2SSP can be on this CPU at float32: the arithmetic the reference protocol's stage 1 cannot skip, timed
(docs/models.md, "Against the reference implementation").

    MODEL=$(bash scripts/smollm2.sh | tail -1)
    OMP_NUM_THREADS=1 .venv/bin/python bench/cpu_floor.py --model "$MODEL" --reference-s 1118
        # → bench/results/cpu-floor-smollm2.json

Stage 1 scores every FFN neuron by its activation norms over the calibration windows of the dense model: one
forward pass of every window through the decoder, which no implementation of the method avoids (the scores of
block i need block i's input, so every block before it; each window counts). On one thread this measures

1. one window's pass through the decoder as stage 1 runs it (twossp_core/pruning/twossp/stage1.py: hooks on the
   down projections, the pass stops at the last one), the best of `--repeats`;
2. the same pass's matrix products alone, as bare `torch.mm` on contiguous operands of the same shapes (the seven
   projections of every block), and its attention alone (`scaled_dot_product_attention`, causal, the model's heads),
   each the best of `--repeats`: what the pass costs without any framework around its arithmetic;

and prints stage 1's time for `--windows` windows at each rate against a fifth of `--reference-s` (the reference
implementation's whole prune on the same CPU, measured separately; the speed target is 5 x). When even the bare
products of stage 1 take longer than that fifth, no float32 implementation on this CPU reaches the target with
the same calibration work, whatever stage 2 costs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from run import machine  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory (SmolLM2: scripts/smollm2.sh)")
    parser.add_argument("--windows", type=int, default=32, help="calibration windows (the reference's default)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per window (the reference's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-s", type=float, required=True,
                        help="the reference implementation's prune time on this CPU, measured separately")
    parser.add_argument("--name", default="cpu-floor-smollm2", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from twossp_core.models.registry import adapter_for
    from twossp_core.progress import Reporter
    from twossp_core.pruning.twossp.stage1 import neuron_scores
    from twossp_core.runtime.loading import load_model

    model, _ = load_model(args.model, device="cpu")
    model.eval()
    adapter = adapter_for(model)
    config = model.config
    hidden, inter, blocks = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = hidden // heads
    tokens = args.seq_len
    window = torch.randint(0, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))

    with torch.inference_mode():
        neuron_scores(adapter, window, reporter=Reporter())  # warm-up
        forward_s = best_of(args.repeats, lambda: neuron_scores(adapter, window, reporter=Reporter()))

        # (rows, inner, cols) of each projection of one block: q, k, v, o, gate, up, down
        shapes = [(tokens, hidden, heads * head_dim), (tokens, hidden, kv_heads * head_dim),
                  (tokens, hidden, kv_heads * head_dim), (tokens, heads * head_dim, hidden),
                  (tokens, hidden, inter), (tokens, hidden, inter), (tokens, inter, hidden)]
        operands = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
        for a, b in operands:
            torch.mm(a, b)
        gemm_s = blocks * sum(best_of(args.repeats, lambda a=a, b=b: torch.mm(a, b)) for a, b in operands)
        gemm_flops = blocks * sum(2 * m * k * n for m, k, n in shapes)

        q = torch.randn(1, heads, tokens, head_dim)
        kv = torch.randn(1, heads, tokens, head_dim)  # the key-value heads repeated to the query heads, as in the model
        sdpa = torch.nn.functional.scaled_dot_product_attention
        sdpa(q, kv, kv, is_causal=True)
        attention_s = blocks * best_of(args.repeats, lambda: sdpa(q, kv, kv, is_causal=True))

    fifth = args.reference_s / 5
    stage1 = {"forward": forward_s * args.windows, "bare_products": (gemm_s + attention_s) * args.windows,
              "matrix_products_only": gemm_s * args.windows}
    results = {
        "machine": machine(torch.get_num_threads()),
        "model": args.model, "windows": args.windows, "seq_len": tokens, "repeats": args.repeats,
        "per_window_s": {"stage1_forward": forward_s, "matrix_products": gemm_s, "attention": attention_s},
        "matrix_products_gflop_per_s": gemm_flops / gemm_s / 1e9,
        "stage1_s": stage1,
        "reference_s": args.reference_s, "target_s": fifth,
        "reachable": {name: seconds <= fifth for name, seconds in stage1.items()},
    }
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"one window of {tokens} tokens, one thread: stage 1's pass {forward_s:.2f} s; its matrix products "
          f"{gemm_s:.2f} s ({results['matrix_products_gflop_per_s']:.1f} GFLOP/s), its attention {attention_s:.2f} s")
    print(f"stage 1 on {args.windows} windows: {stage1['forward']:.0f} s as run, {stage1['bare_products']:.0f} s "
          f"for its bare products, {stage1['matrix_products_only']:.0f} s for its matrix products alone; a fifth of "
          f"the reference's {args.reference_s:.0f} s is {fifth:.0f} s")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
