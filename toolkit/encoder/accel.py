"""Speed-ups for the extractor, each measured in BENCHMARKS.md ("Extraction performance"). torch and PIL only.

features.py wires these in; nothing here imports open_clip. The text-tower helpers read the attributes that
open_clip's `CLIP` (tower flattened into the model) and `TextTransformer` (`CustomTextCLIP.text`) share.
"""
from __future__ import annotations

import types
from typing import Any, Callable, Optional

import torch


# ---------------------------------------------------------------- precision

def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX). Without it bf16 is emulated: slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def auto_dtype(device: torch.device) -> torch.dtype:
    """What precision 'auto' means: bf16 where the hardware runs it natively, else fp32 (fp16 on old GPUs)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32


def image_memory_format(dtype: torch.dtype) -> torch.memory_format:
    """channels_last speeds up the reduced-precision patch convolution (oneDNN); fp32 keeps the reference layout."""
    return torch.contiguous_format if dtype == torch.float32 else torch.channels_last


# ---------------------------------------------------------------- torch.compile

def compile_encoder(fn: Callable[[torch.Tensor], torch.Tensor], tower: torch.nn.Module
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile for inference: static shapes (callers pad to one batch size) and weights frozen as constants.

    Freezing lets inductor pre-pack the weights for oneDNN and fold the casts; it needs no_grad/inference_mode,
    which the extractor always uses. The first call pays the compilation (~20 s for ViT-B-32 on 2 CPU cores).
    Before compiling, `tower`'s self-attention blocks are switched to `sdpa_self_attention` (see there): traced
    as is, nn.MultiheadAttention ran at half the eager speed. Gains are small where matmuls already run near the
    machine's peak, so it is opt-in (ModelConfig.compile). Figures: BENCHMARKS.md.
    """
    use_sdpa_self_attention(tower)
    return torch.compile(fn, dynamic=False, options={"freezing": True})


def sdpa_self_attention(block: Any, q_x: torch.Tensor, k_x: Optional[torch.Tensor] = None,
                        v_x: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.attention, for batch-first self-attention, as one packed projection + SDPA.

    Same parameters and math as nn.MultiheadAttention (float masks are added to the scores in both). Outside its
    eager fast path, nn.MultiheadAttention transposes the input to (L, N, E) and projects it with a batched matmul
    that copies the (E, 3E) weight once per sequence on every call; that is the path torch.compile traces.
    """
    mha = block.attn
    if k_x is not None or v_x is not None:  # cross-attention: not what this handles
        return type(block).attention(block, q_x, k_x, v_x, attn_mask)
    n, length, e = q_x.shape
    heads = mha.num_heads
    qkv = torch.nn.functional.linear(q_x, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
    mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return mha.out_proj(out.transpose(1, 2).reshape(n, length, e))


def use_sdpa_self_attention(tower: torch.nn.Module) -> int:
    """Route every batch-first, packed-projection nn.MultiheadAttention block in `tower` through
    `sdpa_self_attention`; returns how many blocks were switched (0 for towers without them, e.g. ResNets)."""
    switched = 0
    for block in tower.modules():
        mha = getattr(block, "attn", None)
        if (isinstance(mha, torch.nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
                and mha.in_proj_weight is not None and callable(getattr(block, "attention", None))):
            block.attention = types.MethodType(sdpa_self_attention, block)
            switched += 1
    return switched


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad (n, ...) with zero rows to (size, ...), so a compiled encoder sees one shape and never recompiles."""
    if x.shape[0] >= size:
        return x
    return torch.cat([x, x.new_zeros((size - x.shape[0], *x.shape[1:]))])


# ---------------------------------------------------------------- text: drop the padding

class CausalTextTower:
    """open_clip's causal text tower, run on tokens truncated to the longest prompt in the batch.

    CLIP tokenizers pad every prompt to the context length (77) with `pad_id`; most prompts use 10-20 tokens.
    With the causal mask, position i attends only to positions <= i, so the padding after the longest prompt
    never influences a real token, and pooling (at the EOT token, or the first token) reads a position that is
    kept. Truncating to that length therefore gives the same embeddings, with the positional embeddings and the
    mask cut to the same length, for a fraction of the work (attention is quadratic in the length).
    """

    POOLS = ("argmax", "eos", "first")

    def __init__(self, tower: Any, pool_type: str, eos_id: Optional[int], pad_id: int):
        self.tower, self.pool_type, self.eos_id, self.pad_id = tower, pool_type, eos_id, pad_id

    @classmethod
    def find(cls, model: torch.nn.Module) -> Optional["CausalTextTower"]:
        """The model's text tower when truncation is exact for it; None otherwise (bidirectional, CLS, HF...)."""
        text = getattr(model, "text", None)
        tower = text if text is not None and hasattr(text, "token_embedding") else model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
        if not all(hasattr(tower, n) for n in needed) or tower.attn_mask is None:
            return None  # no causal mask: every position attends to the padding
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
            return None
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
        if pool not in cls.POOLS:
            return None  # 'last' pools at the padding position, which truncation moves
        eos = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        return cls(tower, pool, eos, int(getattr(tower, "pad_id", 0) or 0))

    def used_length(self, tokens: torch.Tensor) -> int:
        """1 + the last position holding a non-pad token in any row, i.e. the longest prompt's length."""
        used = (tokens != self.pad_id).any(dim=0).nonzero()
        return int(used[-1].item()) + 1 if len(used) else 1

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, context_length) token ids -> (n, D) unnormalized text features, as `model.encode_text` gives."""
        t = self.tower
        n = self.used_length(tokens)
        tokens = tokens[:, :n]
        cast = t.transformer.get_cast_dtype()
        x = t.token_embedding(tokens).to(cast) + t.positional_embedding[:n].to(cast)
        x = t.transformer(x, attn_mask=t.attn_mask[:n, :n])
        x = t.ln_final(x)
        x = self._pool(x, tokens)
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def _pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[0], device=x.device)
        if self.pool_type == "first":
            return x[:, 0]
        if self.pool_type == "eos":
            return x[rows, (tokens == self.eos_id).int().argmax(dim=-1)]
        return x[rows, tokens.argmax(dim=-1)]  # the EOT token has the highest id in CLIP's vocabulary


# ---------------------------------------------------------------- images: decode at reduced size

