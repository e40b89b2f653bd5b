"""Run a GGUF export in llama.cpp (through llama-cpp-python, the `llamacpp` extra): perplexity on the same token
windows as the report, and prompt-processing / generation speed.

The windows are fed as token ids, so the numbers compare with the report's whatever the tokenizer does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from twossp_core.errors import InvalidSpec


def require_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise InvalidSpec("running GGUF files needs llama-cpp-python: pip install 'twossp[llamacpp]'") from None
    return llama_cpp


@contextmanager
def _without_weight_repacking(llama_cpp: Any) -> Iterator[None]:
    """Models loaded inside use llama.cpp's plain CPU weight buffers (`use_extra_bufts = false`, which
    llama-cpp-python does not expose): the repacked AMX / AVX-512 buffers for q8_0 weights stop with an illegal
    instruction on virtual machines that advertise AMX without enabling it."""
    module = llama_cpp.llama.llama_cpp
    default = module.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = False
        return value

    module.llama_model_default_params = params
    try:
        yield
    finally:
        module.llama_model_default_params = default


def load_gguf(
    path: str | Path, *, n_ctx: int, threads: int | None = None, logits_all: bool = True, f32_cache: bool = False,
    repack: bool = False,
) -> Any:
    """A llama-cpp-python model; `f32_cache` keeps the KV cache in f32 (llama.cpp's default is f16); `repack`
    lets llama.cpp repack weights into its CPU-specific buffers (see _without_weight_repacking)."""
    llama_cpp = require_llama_cpp()
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    kwargs = dict(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                  n_threads=threads, n_threads_batch=threads, verbose=False, **cache)
    if repack:
        return llama_cpp.Llama(**kwargs)
    with _without_weight_repacking(llama_cpp):
        return llama_cpp.Llama(**kwargs)


def window_logits(llm: Any, window: list[int]) -> np.ndarray:
    """Logits (len(window) x vocab) of one window evaluated from an empty context."""
    llm.reset()
    llm.eval(window)
    return np.asarray(llm.scores[: len(window)], dtype=np.float64)


def gguf_perplexity(path: str | Path, windows: Any, *, threads: int | None = None) -> float:
    """exp of the mean next-token NLL over all windows (rows of token ids), as the report computes it."""
    rows = [list(map(int, w)) for w in np.asarray(windows)]
    llm = load_gguf(path, n_ctx=len(rows[0]), threads=threads)
    total, count = 0.0, 0
    try:
        for row in rows:
            logits = window_logits(llm, row)[:-1]
            top = logits.max(axis=1, keepdims=True)
            log_z = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
            targets = np.asarray(row[1:])
            total += float((log_z - logits[np.arange(len(targets)), targets]).sum())
            count += len(targets)
    finally:
        llm.close()
    return math.exp(total / count)


def gguf_speed(path: str | Path, prompt: list[int], continuation: list[int], *, threads: int | None = None,
               repeats: int = 3) -> dict[str, float]:
    """Median tokens/s of prompt processing (`prompt` in one batch) and of generation (`continuation` fed one
    token at a time after it, with the KV cache, as decoding does; which tokens does not change the work)."""
    llm = load_gguf(path, n_ctx=len(prompt) + len(continuation), threads=threads, logits_all=False)
    pp, tg = [], []
    try:
        llm.reset()
        llm.eval(prompt[:8])  # warm-up
        for _ in range(repeats):
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            pp.append(len(prompt) / (time.perf_counter() - start))
            start = time.perf_counter()
            for token in continuation:
                llm.eval([token])
            tg.append(len(continuation) / (time.perf_counter() - start))
    finally:
        llm.close()
    return {"prompt_tokens_per_s": float(np.median(pp)), "generation_tokens_per_s": float(np.median(tg))}
