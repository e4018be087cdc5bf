"""`TokenViT`: one ViT class for the three students, with one to three prefix tokens (class, distillation,
corruption), each with its own head.

As in timm's deit.py, the class has neutral defaults and the registered functions in `models.py` hold the 32px
sizes. `forward` returns the inference class logits (paper 2.3 and 3.3), or, after `set_return_heads(True)`, the
dict of per-head logits the losses take, in train and eval mode alike. See docs/students.md.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from timm.layers import get_device_dtype
from timm.models.vision_transformer import VisionTransformer, trunc_normal_
from torch import nn

from cdeit.common.dataset import CORRUPTIONS
from cdeit.common.errors import CdeitError
from cdeit.train.core.kinds import MODEL_NAMES, HeadStrategy, StudentKind, resolve_head_strategy

TOKENS: dict[str, tuple[str, ...]] = {"vit": ("cls",), "deit": ("cls", "dist"), "cdeit": ("cls", "dist", "corr")}


def corruption_projection(
    strategy: HeadStrategy, num_corruptions: int, num_classes: int, hidden: int, dd: dict[str, Any] | None = None
) -> nn.Module:
    """Corruption logits to class logits: strategy 2 is one linear layer, 3 two layers with GELU (paper 3.3)."""
    dd = dd or {}
    if strategy == "linear":
        return nn.Linear(num_corruptions, num_classes, **dd)
    return nn.Sequential(nn.Linear(num_corruptions, hidden, **dd), nn.GELU(), nn.Linear(hidden, num_classes, **dd))


class TokenViT(VisionTransformer):
    """A ViT with a class token and optionally a distillation and a corruption token, each with its own head.

    kind 'vit': class token and linear head. 'deit': plus a distillation token and head (timm's
    VisionTransformerDistilled). 'cdeit': plus a corruption token whose head predicts the image type, and for
    head strategies 'linear'/'mlp' a projection `corr_to_cls` of the corruption logits into the class space.
    """

    def __init__(
        self,
        kind: StudentKind = "vit",
        head_strategy: HeadStrategy | None = None,
        num_corruptions: int = len(CORRUPTIONS),
        corr_hidden_dim: int = 4 * len(CORRUPTIONS),
        **kwargs: Any,
    ) -> None:
        """`kind` and the CdeiT options here; sizes and everything else are timm's VisionTransformer arguments
        (its defaults; the registered functions give the 32px sizes)."""
        head_strategy = resolve_head_strategy(kind, head_strategy)
        if kwargs.get("dynamic_img_size") or kwargs.get("global_pool", "token") != "token":
            raise CdeitError("the cdeit students read their prefix tokens: keep global_pool='token', fixed size.")
        if kwargs.get("reg_tokens") or not kwargs.get("class_token", True):
            raise CdeitError(
                "the cdeit students have a class token and no register tokens; leave class_token, reg_tokens unset."
            )
        weight_init = kwargs.pop("weight_init", "")
        super().__init__(**kwargs, weight_init="skip")
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self._config = {  # what model_config() rebuilds from: every argument given, devices aside
            "head_strategy": head_strategy,
            "num_corruptions": num_corruptions,
            "corr_hidden_dim": corr_hidden_dim,
            **{k: v for k, v in kwargs.items() if k not in ("device", "dtype")},
        }
        self.kind = kind
        self.head_strategy = head_strategy
        self.token_names = TOKENS[kind]
        self.num_corruptions = num_corruptions if kind == "cdeit" else 0
        self.corr_hidden_dim = corr_hidden_dim
        self.num_prefix_tokens = len(self.token_names)
        self.return_heads = False  # forward's output: class logits, or every head's (set_return_heads)
        self.dist_token = nn.Parameter(torch.empty(1, 1, self.embed_dim, **dd)) if kind != "vit" else None
        self.corr_token = nn.Parameter(torch.empty(1, 1, self.embed_dim, **dd)) if kind == "cdeit" else None
        embed_len = self.patch_embed.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.empty(1, embed_len, self.embed_dim, **dd))
        self.head_dist = self.head_corr = self.corr_to_cls = None
        self._build_heads(dd)
        self.weight_init_mode = "reset" if weight_init == "skip" else weight_init
        if weight_init != "skip":
            self.init_weights(needs_reset=False)

    def _build_heads(self, dd: dict[str, Any]) -> None:
        """The class head's siblings, fresh: distillation head, corruption head and its projection to classes.

        With num_classes 0 (timm's convention for a feature extractor) the class-space heads are identities
        and there is no projection; the corruption head keeps predicting the image type.
        """
        d, c = self.embed_dim, self.num_classes
        if self.kind != "vit":
            self.head_dist = nn.Linear(d, c, **dd) if c > 0 else nn.Identity()
        if self.kind == "cdeit":
            self.head_corr = nn.Linear(d, self.num_corruptions, **dd)
            self.corr_to_cls = None
            if self.head_strategy in ("linear", "mlp") and c > 0:
                self.corr_to_cls = corruption_projection(self.head_strategy, self.num_corruptions, c,
                                                         self.corr_hidden_dim, dd)  # fmt: skip

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        for token in (self.dist_token, self.corr_token):
            if token is not None:
                trunc_normal_(token, std=0.02)  # as timm's distilled DeiT
        super().init_weights(mode=mode, needs_reset=needs_reset)

    @torch.jit.ignore
    def get_classifier(self) -> tuple[nn.Module, ...]:
        """Every head, class head first (timm's distilled DeiT returns its two the same way)."""
        heads = (self.head, self.head_dist, self.head_corr, self.corr_to_cls)
        return tuple(h for h in heads if h is not None)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New, freshly initialised heads for `num_classes` classes: class, distillation, corruption and projection.

        Fine-tuning on another label set changes every head that reads a prefix token, as timm's distilled DeiT
        resets both of its heads; 0 classes leaves the pre-logit embeddings (see `_build_heads`).
        """
        if global_pool not in (None, "", "token"):
            raise CdeitError(f"global_pool {global_pool!r}: the cdeit students read their prefix tokens; use 'token'.")
        dd = get_device_dtype(self)  # {"device": ..., "dtype": ...} of the model's parameters
        self.num_classes = num_classes
        self._config["num_classes"] = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._build_heads(dd)
        for head in self.get_classifier():
            head.train(self.training)

    @torch.jit.ignore
    def set_return_heads(self, enable: bool = True) -> TokenViT:
        """Make `forward` return every head's logits (the losses' input) instead of the class logits.

        cdeit's counterpart of timm's `set_distilled_training`, but explicit in every mode: the trainer
        switches it on once, evaluation reads the class logits of a model that has it off. Returns the model.
        """
        self.return_heads = enable
        return self

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay (timm convention; norms and biases are excluded by their ndim)."""
        names = {"pos_embed", "cls_token", "dist_token", "corr_token"}
        return {n for n in names if getattr(self, n, None) is not None}

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        prefix = [self.cls_token, self.dist_token, self.corr_token][: self.num_prefix_tokens]
        prefix = [t.expand(x.shape[0], -1, -1) for t in prefix]  # each (B, 1, D)
        if self.no_embed_class:  # position embedding covers patches only: add, then prepend the tokens
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)
        else:  # original ViT/DeiT: one position embedding per token, prefix tokens included
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        return self.pos_drop(x)  # (B, T + N, D)

    def heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-head logits from the final token embeddings (B, T + N, D): 'cls', 'dist', 'corr', 'corr_to_cls'.

        (After reset_classifier(0) 'cls' and 'dist' are the token embeddings themselves.)
        """
        tokens = self.head_drop(features[:, : self.num_prefix_tokens])  # (B, T, D)
        out = {"cls": self.head(tokens[:, 0])}  # (B, C)
        if self.head_dist is not None:
            out["dist"] = self.head_dist(tokens[:, 1])  # (B, C)
        if self.head_corr is not None:
            out["corr"] = self.head_corr(tokens[:, 2])  # (B, K)
        if self.corr_to_cls is not None:
            out["corr_to_cls"] = self.corr_to_cls(out["corr"])  # (B, C)
        return out

    def combine(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inference class logits (B, C): the mean of the class-space heads (cls, dist and corr_to_cls if present)."""
        parts = [outputs[k] for k in ("cls", "dist", "corr_to_cls") if k in outputs]
        return parts[0] if len(parts) == 1 else torch.stack(parts).mean(0)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:  # mean of the class-space token embeddings, as timm's distilled DeiT
            return self.head_drop(x[:, : min(self.num_prefix_tokens, 2)].mean(1))
        return self.combine(self.heads(x))

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised images (B, 3, H, W) to every head's logits, whatever `return_heads` says."""
        return self.heads(self.forward_features(x))

    def forward(self, x: torch.Tensor, features: tuple[str, ...] = ()) -> torch.Tensor | dict[str, torch.Tensor]:
        """Normalised images (B, 3, H, W) to class logits (B, C), or to every head's logits after set_return_heads.

        `features` (any of 'embedding', 'patches', 'attention') adds what the alignment loss compares with the
        teacher, from the same forward: `feat_embedding` (B, D), `feat_patches` (B, N, D), `feat_attention`
        (B, N) (see `align_features`); the dict of heads and features is then returned either way.
        """
        if features:
            return self.forward_with_features(x, features)
        outputs = self.forward_heads(x)
        return outputs if self.return_heads else self.combine(outputs)

    def forward_with_features(self, x: torch.Tensor, features: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Head logits plus the requested alignment features, in one forward (see `forward`)."""
        if "attention" in features:
            tokens, normed = self._features_and_last_input(x)
        else:
            tokens, normed = self.forward_features(x), None
        return self.heads(tokens) | self.align_features(tokens, normed, features)

    def align_features(
        self, tokens: torch.Tensor, normed: torch.Tensor | None, features: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """The student's side of the alignment from its final tokens (B, T + N, D).

        `feat_embedding`: the final (normed) class token, the class head's input (B, D). `feat_patches`: the
        final patch tokens (B, N, D). `feat_attention`: the class token's attention over the patches in the
        last block, averaged over heads and renormalised over the patches (B, N); needs `normed`, the last
        block's norm1 output (B, T + N, D).
        """
        from cdeit.common.tokens import cls_attention

        out = {}
        if "embedding" in features:
            out["feat_embedding"] = tokens[:, 0]
        if "patches" in features:
            out["feat_patches"] = tokens[:, self.num_prefix_tokens :]
        if "attention" in features:
            assert normed is not None, "the attention map needs the last block's input"
            out["feat_attention"] = cls_attention(self.blocks[-1].attn, normed, self.num_prefix_tokens)
        return out

    def _features_and_last_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward_features, with the last block written out to keep its normed input (B, T + N, D).

        timm's fused attention does not return its map, so the map is recomputed from this input
        (common.tokens.cls_attention). Same operations in the same order as timm's Block: same values.
        """
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        normed = last.norm1(x)
        x = x + last.drop_path1(last.ls1(last.attn(normed)))
        x = x + last.drop_path2(last.ls2(last.mlp(last.norm2(x))))
        return self.norm(x), normed

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid (H, W): 8x8 for 32px images and patch 4."""
        return tuple(self.patch_embed.grid_size)

    def forward_tokens(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final (normed) embedding of each prefix token, name -> (B, D), e.g. for cosine similarities (paper 4.4)."""
        features = self.forward_features(x)  # (B, T + N, D)
        return {name: features[:, i] for i, name in enumerate(self.token_names)}

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def model_config(self) -> dict[str, Any]:
        """Enough to rebuild this model: `timm.create_model(cfg['model_name'], **cfg['kwargs'])`."""
        return {"model_name": MODEL_NAMES[self.kind], "kwargs": json.loads(json.dumps(self._config))}
