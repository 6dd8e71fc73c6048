"""Pivot tokens: the few prompt positions that later layers attend to most (paper: "pivot-token-salient").

Two rules, both computed during the prefill forward with hooks, so sdpa/flash attention keep working:

- `massive` (the paper's rule): rank tokens by a massive-activation score of the residual stream leaving one
  decoder layer (`max_abs`: max |h| over channels; `norm`: L2 norm; `massive_channels`: L2 norm over the few
  channels with the largest activations in that row). No attention matrix is needed.
- `attention` (SnapKV-style, for comparison): recompute q for the last `window` prompt queries and k for all
  prompt tokens from the attention module's inputs, softmax those rows only (never the T x T matrix), and rank
  keys by the attention mass they receive, summed over the window queries, averaged over heads and layers.

Every score is computed per row, padding is excluded and ties go to the earlier position, so a prompt's
pivots do not depend on its place in the batch. Defaults were chosen by measurement (docs/saliency.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from akvq.errors import ConfigError
from akvq.models.registry import decoder_layers

log = logging.getLogger(__name__)

SCORES: tuple[str, ...] = ("max_abs", "norm", "massive_channels")
RULES: tuple[str, ...] = ("massive", "attention")
DEFAULT_K = 15
DEFAULT_SCORE = "max_abs"
DEFAULT_WINDOW = 32
MASSIVE_CHANNELS = 4


def default_layer(num_layers: int) -> int:
    """Detection layer when none is given: the output of decoder layer `num_layers // 4` (layer 7 of 30 in
    SmolLM2, 8 of 32 in LLaVA-7B). Massive activations appear within the first few layers and stay put through
    the middle of the network; measured on SmolLM2 in docs/saliency.md."""
    return max(0, min(num_layers - 1, num_layers // 4))


def token_scores(hidden: torch.Tensor, score: str, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] float32 massive-activation score of residual-stream states `hidden` [B, T, D]."""
    h = hidden.float()
    if score == "max_abs":
        return h.abs().amax(-1)
    if score == "norm":
        return h.norm(dim=-1)
    if score == "massive_channels":
        a = h.abs()
        peak = a.masked_fill(~valid[..., None], 0.0) if valid is not None else a
        chans = peak.amax(1).topk(min(MASSIVE_CHANNELS, h.shape[-1]), dim=-1).indices  # [B, C] per row
        sel = torch.gather(h, 2, chans[:, None, :].expand(-1, h.shape[1], -1))
        return sel.norm(dim=-1)
    raise ConfigError(f"unknown pivot score {score!r}; choose one of {', '.join(SCORES)}")


def topk_mask(scores: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BoolTensor[B, T] with the k highest-scoring valid positions of each row (all valid ones if fewer).

    Ties go to the earlier position (stable sort), so the result is a function of the row alone."""
    s = scores.float()
    if valid is not None:
        s = s.masked_fill(~valid, float("-inf"))
    mask = torch.zeros_like(s, dtype=torch.bool)
    if k <= 0:
        return mask
    order = torch.sort(-s, dim=-1, stable=True).indices[:, : min(k, s.shape[-1])]
    mask.scatter_(1, order, True)
    if valid is not None:
        mask &= valid
    return mask


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def window_attention_mass(
    attn: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    valid: torch.Tensor | None,
    window: int,
) -> torch.Tensor:
    """[B, T] attention mass each key receives from the last `window` queries (summed), averaged over heads.

    Recomputes q/k with the module's own projections and rotary tables: O(window x T), not O(T^2)."""
    b, t, _ = hidden.shape
    hd = int(attn.head_dim)
    w = min(window, t)
    x = hidden.float()
    q = nn.functional.linear(x[:, -w:], attn.q_proj.weight.float(), _f(attn.q_proj.bias))
    k = nn.functional.linear(x, attn.k_proj.weight.float(), _f(attn.k_proj.bias))
    q = q.view(b, w, -1, hd)
    k = k.view(b, t, -1, hd)
    if hasattr(attn, "q_norm") and hasattr(attn, "k_norm"):  # Qwen3-style per-head norms before RoPE
        q, k = attn.q_norm(q.to(hidden.dtype)).float(), attn.k_norm(k.to(hidden.dtype)).float()
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, w, hd], [B, Hkv, T, hd]
    cos, sin = (c.float() for c in position_embeddings)
    if cos.shape[-1] != hd or cos.shape[-2] != t:
        raise ConfigError(
            f"pivot rule 'attention' expects rotary tables of shape [B, {t}, {hd}], got {tuple(cos.shape)}; "
            "use rule='massive' for this architecture"
        )
    cos, sin = cos[:, None], sin[:, None]
    q = q * cos[:, :, -w:] + _rotate_half(q) * sin[:, :, -w:]
    k = k * cos + _rotate_half(k) * sin
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    scaling = float(getattr(attn, "scaling", hd**-0.5))
    logits = torch.matmul(q, k.transpose(-1, -2)) * scaling  # [B, H, w, T]
    qpos = torch.arange(t - w, t, device=hidden.device)[:, None]
    kpos = torch.arange(t, device=hidden.device)[None, :]
    allowed = (kpos <= qpos)[None, None]
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return probs.sum(2).mean(1)


def _f(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class PivotDetector:
    """Context manager: hooks that find the pivots of the prefill forward and call `cache.set_pivots(mask)`.

    `cache` is anything with `set_pivots(BoolTensor[B, T])` (or None: read `detector.mask`). The prefill is a
    forward whose query length is > 1 and whose cache is empty (when the cache can tell its length).
    """

    def __init__(
        self,
        model: nn.Module,
        cache: Any = None,
        k: int = DEFAULT_K,
        layer: int | None = None,
        score: str = DEFAULT_SCORE,
        rule: str = "massive",
        window: int = DEFAULT_WINDOW,
        layers: list[int] | None = None,
    ) -> None:
        if rule not in RULES:
            raise ConfigError(f"unknown pivot rule {rule!r}; choose one of {', '.join(RULES)}")
        if score not in SCORES:
            raise ConfigError(f"unknown pivot score {score!r}; choose one of {', '.join(SCORES)}")
        if k < 0 or window < 1:
            raise ConfigError("pivot k must be >= 0 and window >= 1")
        self.model = model
        self.cache = cache
        self.k = int(k)
        self.score = score
        self.rule = rule
        self.window = int(window)
        self._layers = decoder_layers(model)
        n = len(self._layers)
        self.layer = default_layer(n) if layer is None else (layer + n if layer < 0 else int(layer))
        if not 0 <= self.layer < n:
            raise ConfigError(f"pivot layer {layer} out of range for {n} decoder layers")
        self.attn_layers = list(range(n)) if layers is None else [i + n if i < 0 else i for i in layers]
        self.mask: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._active = False
        self._fired = False
        self._valid: torch.Tensor | None = None
        self._acc: torch.Tensor | None = None

    # ----------------------------------------------------------------- hooks
    def __enter__(self) -> PivotDetector:
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        if self.rule == "massive":
            self._handles.append(self._layers[self.layer].register_forward_hook(self._on_layer_out))
        else:
            for i in self.attn_layers:
                attn = getattr(self._layers[i], "self_attn", None)
                if attn is None or not hasattr(attn, "q_proj") or not hasattr(attn, "k_proj"):
                    raise ConfigError(f"decoder layer {i} has no self_attn.q_proj/k_proj; use rule='massive'")
                self._handles.append(attn.register_forward_pre_hook(self._on_attn_in, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._on_model_end, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _is_prefill(self, args: tuple, kwargs: dict[str, Any]) -> bool:
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if x is None or x.dim() < 2 or x.shape[1] <= 1:
            return False
        for c in (kwargs.get("cache"), kwargs.get("past_key_values"), self.cache):
            if c is not None and callable(getattr(c, "get_seq_length", None)):
                try:
                    return int(c.get_seq_length()) == 0
                except Exception:  # a cache that cannot tell yet: treat as empty
                    return True
        return not self._fired

    def _on_model_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._active = self._is_prefill(args, kwargs)
        self._acc = None
        am = kwargs.get("attention_mask")
        self._valid = am.bool() if isinstance(am, torch.Tensor) and am.dim() == 2 else None

    def _valid_for(self, b: int, t: int, device: torch.device) -> torch.Tensor | None:
        v = self._valid
        if v is None or v.shape != (b, t):
            return None
        return v.to(device)

    def _publish(self, scores: torch.Tensor, valid: torch.Tensor | None) -> None:
        self.scores = scores
        self.mask = topk_mask(scores, self.k, valid)
        self._fired = True
        self._active = False
        if self.cache is not None:
            self.cache.set_pivots(self.mask)

    def _on_layer_out(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._active:
            return
        h = output[0] if isinstance(output, tuple | list) else output
        b, t = h.shape[:2]
        valid = self._valid_for(b, t, h.device)
        with torch.no_grad():
            self._publish(token_scores(h, self.score, valid), valid)

    def _on_attn_in(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not self._active:
            return
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pe = kwargs.get("position_embeddings")
        if hidden is None or pe is None:
            raise ConfigError(
                "pivot rule 'attention' needs the attention module's hidden_states and rotary tables"
            )
        b, t = hidden.shape[:2]
        valid = self._valid_for(b, t, hidden.device)
        with torch.no_grad():
            mass = window_attention_mass(module, hidden, pe, valid, self.window)
        self._acc = mass if self._acc is None else self._acc + mass

    def _on_model_end(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if not self._active or self._acc is None:
            return
        acc = self._acc / len(self.attn_layers)
        self._acc = None
        self._publish(acc, self._valid_for(*acc.shape, acc.device))


@torch.no_grad()
def detect_pivots(model: nn.Module, inputs: dict[str, Any], **kwargs: Any) -> torch.Tensor:
    """Run one prefill forward (no cache) and return the pivot mask [B, T]; kwargs go to PivotDetector."""
    with PivotDetector(model, None, **kwargs) as det:
        model(**inputs, use_cache=False)
    if det.mask is None:
        raise RuntimeError("the forward pass did not reach the pivot detection hooks")
    return det.mask
