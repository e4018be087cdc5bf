"""Token-level targets of a timm ViT, shared by the teacher cache and the students' alignment loss.

Both sides describe a model the same way: its final (normed) patch tokens on the student's 8x8 grid, and the
class token's attention over the patches in the last block, averaged over heads. timm's attention runs fused
(`scaled_dot_product_attention`), which never materialises the map, so the map is recomputed here from the
last block's `qkv` weights on that block's normed input: one query (the class token) against every key, a
small fraction of one block's work. docs/asymmetric.md explains the choices (pooling, renormalisation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch
    from torch import nn

TARGET_GRID = 8  # the students' patch grid: 32px images, patch 4
TOKEN_TARGETS = ("patches", "attention")  # targets with one value per patch (beside logits and the embedding)


def check_vit(model: nn.Module, name: str) -> None:
    """Refuse, in one sentence, a model whose patch tokens and last-block attention cannot be read."""
    blocks = getattr(model, "blocks", None)
    attn = getattr(blocks[-1], "attn", None) if blocks is not None and len(blocks) else None
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if attn is None or getattr(attn, "qkv", None) is None or grid is None or not hasattr(model, "num_prefix_tokens"):
        raise CdeitError(
            f"--targets patches/attention need a timm VisionTransformer teacher (patch grid, blocks[-1].attn.qkv), "
            f"but {name} is not one; store logits and embedding only, or choose a ViT teacher."
        )


def pool_patches(tokens: torch.Tensor, grid: tuple[int, int], out: int = TARGET_GRID) -> torch.Tensor:
    """(B, H*W, D) patch tokens on an (H, W) grid -> (B, out*out, D), adaptive average pooling (in float32)."""
    import torch.nn.functional as F

    b, n, d = tokens.shape
    h, w = grid
    x = tokens.transpose(1, 2).reshape(b, d, h, w)  # (B, D, H, W)
    if (h, w) != (out, out):
        x = F.adaptive_avg_pool2d(x.float(), out).to(tokens.dtype)  # (B, D, out, out)
    return x.flatten(2).transpose(1, 2)  # (B, out*out, D)


def pool_map(maps: torch.Tensor, grid: tuple[int, int], out: int = TARGET_GRID) -> torch.Tensor:
    """(B, H*W) distributions over patches -> (B, out*out), average-pooled then renormalised to sum 1.

    Adaptive pooling of a 14x14 grid to 8x8 uses overlapping windows, so pooled sums are not exactly
    preserved; renormalising keeps each map a distribution.
    """
    import torch.nn.functional as F

    b = maps.shape[0]
    h, w = grid
    x = maps.float().reshape(b, 1, h, w)
    if (h, w) != (out, out):
        x = F.adaptive_avg_pool2d(x, out)  # (B, 1, out, out)
    x = x.flatten(1)  # (B, out*out)
    return x / x.sum(1, keepdim=True)


def cls_attention(attn: nn.Module, normed: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """The class token's attention over the patch tokens in one timm `Attention`, averaged over heads.

    normed: (B, T, D) the layer's input (the block's `norm1` output), class token first. Computes
    softmax(q_cls k^T / sqrt(d_head)) over all T tokens per head (as the layer does), keeps the patch part
    (dropping the prefix tokens), averages over heads and renormalises to sum 1 over the patches. Returns
    (B, T - num_prefix) in float32; differentiable, so it serves the student's loss as well.
    """
    import torch.nn.functional as F

    b, t, _ = normed.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    dim = heads * head_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias  # (3 dim, D): q, k, v stacked, as timm's reshape reads them
    q = F.linear(normed[:, :1], weight[:dim], None if bias is None else bias[:dim])  # (B, 1, dim)
    k = F.linear(normed, weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])  # (B, T, dim)
    q = attn.q_norm(q.reshape(b, 1, heads, head_dim).transpose(1, 2))  # (B, H, 1, d)
    k = attn.k_norm(k.reshape(b, t, heads, head_dim).transpose(1, 2))  # (B, H, T, d)
    scores = (q.float() * attn.scale) @ k.float().transpose(-2, -1)  # (B, H, 1, T)
    probs = scores.softmax(-1)[:, :, 0, num_prefix:].mean(1)  # (B, N): patch part, mean over heads
    return probs / probs.sum(-1, keepdim=True)
