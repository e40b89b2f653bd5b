"""Helpers for the competitor-method tests: prune a tiny model, reload it both ways, the real-data workspace."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model, tokenizer_for

from twossp_core.export.load import load_pruned
from twossp_core.export.save import save_pruned
from twossp_core.models.registry import adapter_for
from twossp_core.plan.methods import method_config
from twossp_core.pruning.base import PruneContext, PruneOutcome
from twossp_core.pruning.registry import method_class

VOCAB = 96


def calibration(n: int = 4, seq: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seq), generator=g)


def prune(
    method: str, model: Any, sparsity: float, *, options: dict[str, Any] | None = None,
    windows: torch.Tensor | None = None, cache: dict[str, Any] | None = None,
) -> PruneOutcome:
    ctx = PruneContext(adapter=adapter_for(model), calibration=calibration() if windows is None else windows,
                       cache={} if cache is None else cache)
    return method_class(method)(method_config(method, options)).prune(ctx, sparsity)


def pruned_tiny(method: str, sparsity: float, family: str = "llama", **kw: Any) -> tuple[Any, Any, PruneOutcome]:
    dense = tiny_model(family)
    model = copy.deepcopy(dense)
    return dense, model, prune(method, model, sparsity, **kw)


def make_identity(model: Any, idx: int) -> None:
    """Zero the outputs of block idx's attention and FFN (llama layout): the block then passes its input through."""
    layer = model.model.layers[idx]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_reloads_equal(model: Any, tmp_path: Path, *, remote_code: bool | None = None) -> tuple[Any, Any]:
    """Save, reload through twossp and through plain transformers; logits must equal the in-memory model's.

    remote_code: True → the export must need trust_remote_code; False → it must load without it."""
    from transformers import AutoModelForCausalLM

    out = save_pruned(model, tokenizer_for(model.config.vocab_size), tmp_path / "export", {"method": "test"})
    ids = calibration(2, 24, seed=7)
    expected = logits(model, ids)
    ours, _ = load_pruned(out)
    torch.testing.assert_close(logits(ours, ids), expected, rtol=1e-5, atol=1e-5)
    has_code = (out / "modeling_twossp.py").exists()
    if remote_code is not None:
        assert has_code == remote_code
    if has_code:  # never loadable as the base architecture, whose removed modules would come back at random
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            AutoModelForCausalLM.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=has_code)
    plain.eval()
    torch.testing.assert_close(logits(plain, ids), expected, rtol=1e-5, atol=1e-5)
    return ours, plain


@functools.lru_cache(maxsize=1)
def stories_workspace(model_dir: str, text: str) -> Any:
    """The real-data protocol (calibration stories 0..500, 32 windows; evaluation stories 500..1000, capped at
    24 windows to keep the tests short), prepared once per test session."""
    from twossp_core.pipeline import prepare
    from twossp_core.plan.spec import parse_spec
    from twossp_core.progress import Reporter

    spec = parse_spec({
        "model": model_dir, "sparsity": 0.5, "calibration": [f"{text}:0:500"], "eval": [f"{text}:500:1000"],
        "doc_separator": "<|endoftext|>", "seq_len": 512, "calibration_windows": 32, "eval_windows": 24,
        "measure_throughput": False, "device": "cpu",
    })
    return prepare(spec, Reporter())


def prune_stories(ws: Any, method: str, sparsity: float, options: dict[str, Any] | None = None) -> dict[str, Any]:
    from twossp_core.pipeline import measure_pruned, prune_model
    from twossp_core.progress import Reporter

    config = method_config(method, options)
    model, outcome, prune_s = prune_model(ws, method, sparsity, config, Reporter(), copy_model=True)
    report = measure_pruned(ws, model, method, sparsity, config, outcome, prune_s, Reporter())
    report["_model"] = model
    return report


def ppl(report: dict[str, Any]) -> tuple[float, float]:
    row = report["perplexity"][0]
    return row["dense"], row["pruned"]
