"""Pass 1: the teacher's pre-logit features of every image, written shard by shard to CACHE/features/.

This is the expensive part (a forward at the teacher's resolution per image). The per-patch targets of
`--targets patches,attention` come out of the same forward. Batches never straddle shards
(the shard size is a multiple of the batch size), so a shard's features do not depend on which other shards a
run computes, and a resumed run gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.cache import FEATURES, ShardSpec, write_shard
from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch

    from cdeit.common.preprocess import DeviceResize
    from cdeit.common.teacher import Teacher

LOADER_FIELDS = ("image", "label", "corruption", "index")  # the order make_loader yields them in


def extract_features(teacher: Teacher, resize: DeviceResize, images: torch.Tensor, amp: bool) -> torch.Tensor:
    """(B, 3, 32, 32) uint8 on the device -> (B, D) float16 pre-logit features (bf16 autocast when `amp`)."""
    import torch

    model = teacher.model
    with torch.inference_mode():
        x = resize(images)  # float32: the resize and normalisation stay out of autocast
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            features = model.forward_head(model.forward_features(x), pre_logits=True)
        return features.to(torch.float16)


def extract_targets(
    teacher: Teacher, resize: DeviceResize, images: torch.Tensor, amp: bool, extras: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Pre-logit `features` (B, D) and the per-patch `extras` of one forward, all float16.

    `patches` (B, 64, D): the final (normed) patch tokens average-pooled from the teacher's grid to the
    students' 8x8; `attention` (B, 64): the last block's class-token attention over the patches, averaged
    over heads, pooled to 8x8 and renormalised (common.tokens). Without extras this is extract_features.
    """
    import torch

    from cdeit.common.tokens import cls_attention, pool_map, pool_patches

    if not extras:
        return {"features": extract_features(teacher, resize, images, amp)}
    model = teacher.model
    grid, prefix = tuple(model.patch_embed.grid_size), model.num_prefix_tokens
    captured: dict[str, torch.Tensor] = {}
    hook = model.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: captured.__setitem__("normed", out))
    try:
        with torch.inference_mode():
            x = resize(images)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                tokens = model.forward_features(x)  # (B, prefix + H*W, D)
                out = {"features": model.forward_head(tokens, pre_logits=True)}
                if "patches" in extras:
                    out["patches"] = pool_patches(tokens[:, prefix:], grid)  # (B, 64, D)
            if "attention" in extras:
                with torch.autocast("cuda", enabled=False):
                    out["attention"] = pool_map(cls_attention(model.blocks[-1].attn, captured["normed"], prefix), grid)
            return {k: v.to(torch.float16) for k, v in out.items()}
    finally:
        hook.remove()


class ShardBuffer:
    """Collects one shard's float16 arrays (features, extras) and integer fields on the device."""

    def __init__(
        self,
        spec: ShardSpec,
        dim: int,
        device: torch.device,
        extras: Mapping[str, tuple[int, ...]] | None = None,
        keys: Sequence[str] = ("index",),
    ):
        import torch

        self.spec, self.filled = spec, 0
        shapes = {"features": (dim,), **(extras or {})}
        self.floats = {k: torch.empty(spec.count, *s, dtype=torch.float16, device=device) for k, s in shapes.items()}
        self.ints = {
            k: torch.empty(spec.count, dtype=torch.int64, device=device) for k in ("label", "corruption", *keys)
        }

    @property
    def full(self) -> bool:
        return self.filled == self.spec.count

    def add(self, floats: Mapping[str, torch.Tensor], ints: Mapping[str, torch.Tensor]) -> None:
        n = len(floats["features"])
        if self.filled + n > self.spec.count:
            raise RuntimeError(
                f"a batch straddles the end of shard {self.spec.name}; shard size must be a multiple of batch size"
            )
        for k, v in (*floats.items(), *ints.items()):
            target = self.floats if k in self.floats else self.ints
            target[k][self.filled : self.filled + n] = v  # copies: the loader reuses its buffers
        self.filled += n

    def arrays(self) -> dict[str, np.ndarray]:
        import torch

        for name, values in self.floats.items():
            if not torch.isfinite(values).all():
                raise CdeitError(
                    f"the teacher's {name} of shard {self.spec.name} overflow float16 (values beyond 65504); "
                    "this teacher cannot be cached in cdeit's float16 feature format."
                )
        arrays = {
            "index": self.ints["index"],
            "features": self.floats["features"],
            **{k: self.ints[k] for k in ("label", "corruption")},
            **{k: v for k, v in self.ints.items() if k not in ("index", "label", "corruption")},
            **{k: v for k, v in self.floats.items() if k != "features"},
        }  # the paper's layout first (index, features, label, corruption): its files stay byte-identical
        return {k: v.cpu().numpy() for k, v in arrays.items()}


def compute_feature_shards(
    teacher: Teacher,
    resize: DeviceResize,
    data_dir: str | os.PathLike,
    specs: Sequence[ShardSpec],
    cache_dir: str | os.PathLike,
    attrs_for: Callable[[ShardSpec, str], dict[str, Any]],
    batch_size: int,
    device: torch.device,
    workers: int,
    advance: Callable[..., None],
    extras: Sequence[str] = (),
    with_source: bool = False,
) -> int:
    """Compute and write the feature shard of every spec (one loader per split); returns the images processed.

    `extras` (patches, attention) are computed in the same forward; `with_source` keeps each row's `source`
    id (the clean view, whose rows are the dataset's source photographs).
    """
    from cdeit.common.tokens import TARGET_GRID

    done = 0
    amp = device.type == "cuda"
    dim, cells = teacher.num_features, TARGET_GRID * TARGET_GRID
    shapes = {k: v for k, v in (("patches", (cells, dim)), ("attention", (cells,))) if k in extras}
    keys = ("index", "source") if with_source else ("index",)
    for split, group in itertools.groupby(specs, key=lambda s: s.split):
        group = list(group)
        batches = _batches(data_dir, split, group, batch_size, device, workers, with_source)
        for k, spec in enumerate(group, 1):
            buf = ShardBuffer(spec, dim, device, shapes, keys)
            while not buf.full:
                images, label, corruption, index, *source = next(batches)
                ints = {"label": label, "corruption": corruption, "index": index}
                ints |= dict(zip(keys[1:], source, strict=True))
                buf.add(extract_targets(teacher, resize, images, amp, extras), ints)
                done += len(index)
                advance(len(index), info=f"{split} shard {k}/{len(group)}")
            write_shard(spec.path(cache_dir, FEATURES), buf.arrays(), attrs_for(spec, FEATURES))
        for _ in batches:  # let the loader finish its epoch cleanly
            pass
    return done


def _batches(
    data_dir: str | os.PathLike,
    split: str,
    group: Sequence[ShardSpec],
    batch_size: int,
    device: torch.device,
    workers: int,
    with_source: bool = False,
) -> Iterator[Sequence[torch.Tensor]]:
    from cdeit.common.dataset import beton_path, make_loader

    indices = np.concatenate([np.arange(s.start, s.stop) for s in group])
    fields = (*LOADER_FIELDS, "source") if with_source else LOADER_FIELDS
    loader = make_loader(
        beton_path(data_dir, split), batch_size, "sequential", str(device), fields=fields, drop_last=False,
        workers=workers, indices=indices,
    )  # fmt: skip
    return iter(loader)
