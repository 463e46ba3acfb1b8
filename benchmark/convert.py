"""Rewrite torch layers EMQ cannot quantize into equivalent ones it can.

EMQ quantizes ``Conv2d`` and ``Linear`` layers (``benchmark.quantizers``). A user's model
often holds attention as ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer``
and ``nn.TransformerDecoderLayer``), whose query/key/value projections are raw parameters
passed to a fused kernel, never ``Linear`` modules: they could not be quantized, hooked or
scored. ``make_quantizable`` replaces each one with ``LinearMultiheadAttention``, the same
function written with four ``nn.Linear`` projections (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``), as ``torch.ao.nn.quantizable.MultiheadAttention`` and AIMET's quantizable
attention do. The converted model is checked to compute the same outputs; a layout the
rewrite does not cover (bias on key/value, zero attention) is one clear error.

The rewritten module also turns off the fused "fast path" of the transformer layers (it has
no packed ``in_proj_bias``), so every projection runs as a module EMQ can hook.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models import evaluating

CHECK_SEED = 0  # the fixed random input the converted model is checked on


class LinearMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with its projections as ``nn.Linear`` modules.

    Same call signature and outputs (``(output, weights or None)``), for both layouts
    (``batch_first`` or sequence first), separate key/value dimensions, boolean or float
    ``attn_mask`` and ``key_padding_mask``, and ``is_causal``.
    """

    # Read by the transformer layers' fast-path checks: no packed projection, so they take
    # the module path (which calls this module) instead of the fused kernel.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, bias: bool,
                 dropout: float, batch_first: bool) -> None:  # fmt: skip
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> LinearMultiheadAttention:
        """The same function as ``mha``, its weights copied."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv=True or add_zero_attn=True cannot be "
                "converted for quantization: build it without them"
            )
        e = mha.embed_dim
        bias = mha.in_proj_bias is not None
        new = cls(e, mha.num_heads, mha.kdim, mha.vdim, bias, mha.dropout, mha.batch_first)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
            for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases,
                                  strict=True):  # fmt: skip
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, L, E]`` -> ``[N, heads, L, head_dim]``."""
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:  # [L, N, E] -> [N, L, E]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q = self._heads(self.q_proj(query)) / math.sqrt(self.head_dim)
        k, v = self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        scores = q @ k.transpose(-2, -1)  # [N, heads, Lq, Lk]
        if attn_mask is None and is_causal:
            lq, lk = scores.shape[-2:]
            attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(scores.shape)
            scores = _masked(scores, mask)
        if key_padding_mask is not None:
            scores = _masked(scores, key_padding_mask[:, None, None, :])
        weights = F.softmax(scores, dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(q.shape[0], -1, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(1)
        return out, weights.squeeze(0) if unbatched else weights


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores with a boolean mask (True: not attended) or a float mask (added) applied."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


def _weight_hooks(module: nn.Module) -> list:
    """The old-style ``torch.nn.utils.weight_norm`` / ``spectral_norm`` hooks of a layer
    (they recompute ``weight`` before every call, so a quantized weight written into it
    would be overwritten: the layer would silently stay in float)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return [
        h for h in module._forward_pre_hooks.values() if isinstance(h, (WeightNorm, SpectralNorm))
    ]


def _reparametrized(module: nn.Module) -> bool:
    return nn.utils.parametrize.is_parametrized(module) or bool(_weight_hooks(module))


def _remove_reparametrizations(module: nn.Module) -> None:
    """Bake a layer's weight reparametrization (weight norm, spectral norm, any
    ``torch.nn.utils.parametrize``) into a plain weight: the same function at inference."""
    from torch.nn.utils.spectral_norm import SpectralNorm, remove_spectral_norm
    from torch.nn.utils.weight_norm import remove_weight_norm

    if nn.utils.parametrize.is_parametrized(module):
        # Not parametrize.remove_parametrizations: it deletes the tensor's property from the
        # module's generated class, which a deepcopy shares with the user's model (whose
        # forward then fails). Each tensor's current value becomes a plain parameter.
        values = {n: getattr(module, n).detach().clone() for n in module.parametrizations}
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]
        for n, v in values.items():
            setattr(module, n, nn.Parameter(v))
    for hook in _weight_hooks(module):
        remove = remove_spectral_norm if isinstance(hook, SpectralNorm) else remove_weight_norm
        remove(module, hook.name)


def needs_conversion(model: nn.Module) -> bool:
    """Whether ``model`` holds a layer ``make_quantizable`` rewrites."""
    return any(isinstance(m, nn.MultiheadAttention) or _reparametrized(m) for m in model.modules())


def make_quantizable(
    model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28), atol: float = 1e-4
) -> nn.Module:
    """``model`` with every ``nn.MultiheadAttention`` rewritten (module docstring).

    Returns ``model`` itself when there is nothing to rewrite, else a converted copy (the
    user's model is never modified), checked on a fixed random batch of ``input_shape``
    to give the same outputs within ``atol`` (relative to their scale).
    """
    if not needs_conversion(model):
        return model
    converted = copy.deepcopy(model)
    for module in list(converted.modules()):
        if _reparametrized(module):
            _remove_reparametrizations(module)
    for name, module in list(converted.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            converted.set_submodule(name, LinearMultiheadAttention.from_torch(module))
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(CHECK_SEED))
    with evaluating(model), torch.no_grad():
        ref, out = model(x), converted.eval()(x)
    scale = float(ref.abs().max()) if torch.is_tensor(ref) else 1.0
    if not (
        torch.is_tensor(out) and torch.allclose(ref, out, rtol=1e-3, atol=atol * max(scale, 1))
    ):
        raise ValueError(
            "rewriting nn.MultiheadAttention with nn.Linear projections (or baking weight "
            "norm / parametrizations into plain weights) changed the model's output: this "
            "layout is not supported (write the projections as nn.Linear modules, without "
            "weight parametrizations)"
        )
    return converted
