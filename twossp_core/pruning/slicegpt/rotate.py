"""Rotate-and-slice of a Llama-family model (the glue between PCA bases and modules; module names come from the
adapter).

Row-vector convention: a residual state h (original basis) becomes h Q[:, :k]. Norm weights are folded into the
linears that read the norm's output; norms keep a constant weight sqrt(d / k) and eps * d / k, so an RMS over k
components stands for the RMS over d. Each block gets two (k, k) shortcut matrices that carry the residual from
the attention-input basis to the FFN-input basis and on to the next block's basis.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from twossp_core.export.remote_modeling import SHORTCUT_KEY, add_shortcut_rotations
from twossp_core.models.base import ModelAdapter


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=bias is not None, device=like.weight.device, dtype=like.weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def rotate_inputs(linear: nn.Linear, gamma: torch.Tensor | None, basis: torch.Tensor) -> nn.Linear:
    """A linear reading the (normed) residual: fold the norm weight, then read the rotated, sliced stream."""
    w = linear.weight.data.double()
    if gamma is not None:
        w = w * gamma.double()[None, :]
    b = linear.bias.data.double() if linear.bias is not None else None
    return _linear(w @ basis, b, linear)


def rotate_outputs(linear: nn.Linear, basis: torch.Tensor) -> nn.Linear:
    """A linear writing into the residual stream: write in the rotated, sliced basis."""
    w = basis.T @ linear.weight.data.double()
    b = basis.T @ linear.bias.data.double() if linear.bias is not None else None
    return _linear(w, b, linear)


def _reset_norm(norm: nn.Module, kept: int, scale: float, eps: float) -> None:
    ref = norm.weight
    norm.weight = nn.Parameter(torch.full((kept,), scale, dtype=ref.dtype, device=ref.device), requires_grad=False)
    norm.variance_epsilon = eps


@torch.no_grad()
def rotate_and_slice(
    adapter: ModelAdapter, attn_bases: list[torch.Tensor], mlp_bases: list[torch.Tensor], final_basis: torch.Tensor,
    kept: int,
) -> None:
    model, config = adapter.model, adapter.config
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // config.num_attention_heads)
    eps = float(config.rms_norm_eps)
    new_eps, scale = eps * hidden / kept, math.sqrt(hidden / kept)
    decoder = adapter.decoder
    device = getattr(decoder, adapter.embedding_module).weight.device
    qa = [q[:, :kept].to(device) for q in attn_bases]
    qm = [q[:, :kept].to(device) for q in mlp_bases]
    qf = final_basis[:, :kept].to(device)

    embed = getattr(decoder, adapter.embedding_module)
    new_embed = nn.Embedding(embed.num_embeddings, kept, padding_idx=embed.padding_idx, device=device,
                             dtype=embed.weight.dtype)
    new_embed.weight.data.copy_(embed.weight.data.double() @ qa[0])
    final_norm = getattr(decoder, adapter.final_norm_module)
    setattr(model, adapter.head_module, rotate_inputs(getattr(model, adapter.head_module), final_norm.weight.data, qf))
    setattr(decoder, adapter.embedding_module, new_embed)
    _reset_norm(final_norm, kept, scale, new_eps)

    shortcuts = []
    for i, layer in enumerate(adapter.layers):
        nxt = qa[i + 1] if i + 1 < len(qa) else qf
        attn, mlp = adapter.attention(i), adapter.mlp(i)
        (attn_norm,), (mlp_norm,) = adapter.attention_norms, adapter.mlp_norms  # one pre-norm each
        gamma_a, gamma_m = getattr(layer, attn_norm).weight.data, getattr(layer, mlp_norm).weight.data
        *reads, out = adapter.attention_projs  # q, k, v read the normed residual; o writes into it
        for name in reads:
            setattr(attn, name, rotate_inputs(getattr(attn, name), gamma_a, qa[i]))
        setattr(attn, out, rotate_outputs(getattr(attn, out), qm[i]))
        for name in adapter.up_projs:
            setattr(mlp, name, rotate_inputs(getattr(mlp, name), gamma_m, qm[i]))
        setattr(mlp, adapter.down_proj, rotate_outputs(getattr(mlp, adapter.down_proj), nxt))
        _reset_norm(getattr(layer, attn_norm), kept, scale, new_eps)
        _reset_norm(getattr(layer, mlp_norm), kept, scale, new_eps)
        shortcuts.append((qa[i].T @ qm[i], qm[i].T @ nxt))

    config.head_dim = head_dim
    config.hidden_size = kept
    config.rms_norm_eps = new_eps
    config.tie_word_embeddings = False
    if hasattr(config, "get_text_config"):
        config.get_text_config().tie_word_embeddings = False
    adapter.record_structure(**{SHORTCUT_KEY: {"dim": kept}})
    add_shortcut_rotations(model, adapter.structure())
    for layer, (attn_s, mlp_s) in zip(adapter.layers, shortcuts, strict=True):
        layer.attn_shortcut.data.copy_(attn_s)
        layer.mlp_shortcut.data.copy_(mlp_s)


def llama_like(adapter: ModelAdapter) -> bool:
    return getattr(adapter.config, "model_type", None) == "llama"

