"""Pass 1: the teacher's pre-logit features of every image, written shard by shard to CACHE/features/.

This is the expensive part (a forward at the teacher's resolution per image). Batches never straddle shards
(the shard size is a multiple of the batch size), so a shard's features do not depend on which other shards a
run computes, and a resumed run gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from common.cache import FEATURES, ShardSpec, write_shard
from common.errors import CdeitError

if TYPE_CHECKING:
    import torch

    from precompute.preprocess import DeviceResize
    from precompute.teacher import Teacher

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


class ShardBuffer:
    """Collects one shard's features, labels, corruption types and indices on the device."""

    def __init__(self, spec: ShardSpec, dim: int, device: torch.device):
        import torch

        self.spec, self.filled = spec, 0
        self.features = torch.empty(spec.count, dim, dtype=torch.float16, device=device)
        self.ints = {
            k: torch.empty(spec.count, dtype=torch.int64, device=device) for k in ("label", "corruption", "index")
        }

    @property
    def full(self) -> bool:
        return self.filled == self.spec.count

    def add(self, features: torch.Tensor, ints: Mapping[str, torch.Tensor]) -> None:
        n = len(features)
        if self.filled + n > self.spec.count:
            raise RuntimeError(
                f"a batch straddles the end of shard {self.spec.name}; shard size must be a multiple of batch size"
            )
        self.features[self.filled : self.filled + n] = features
        for k, v in ints.items():
            self.ints[k][self.filled : self.filled + n] = v  # copies: the loader reuses its buffers
        self.filled += n

    def arrays(self) -> dict[str, np.ndarray]:
        import torch

        if not torch.isfinite(self.features).all():
            raise CdeitError(
                f"the teacher's features of shard {self.spec.name} overflow float16 (values beyond 65504); "
                "this teacher cannot be cached in cdeit's float16 feature format."
            )
        arrays = {
            "index": self.ints["index"],
            "features": self.features,
            **{k: self.ints[k] for k in ("label", "corruption")},
        }
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
) -> int:
    """Compute and write the feature shard of every spec (one loader per split); returns the images processed."""
    done = 0
    amp = device.type == "cuda"
    for split, group in itertools.groupby(specs, key=lambda s: s.split):
        group = list(group)
        batches = _batches(data_dir, split, group, batch_size, device, workers)
        for k, spec in enumerate(group, 1):
            buf = ShardBuffer(spec, teacher.num_features, device)
            while not buf.full:
                images, label, corruption, index = next(batches)
                buf.add(
                    extract_features(teacher, resize, images, amp),
                    {"label": label, "corruption": corruption, "index": index},
                )
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
) -> Iterator[Sequence[torch.Tensor]]:
    from common.dataset import beton_path, make_loader

    indices = np.concatenate([np.arange(s.start, s.stop) for s in group])
    loader = make_loader(
        beton_path(data_dir, split), batch_size, "sequential", str(device), fields=LOADER_FIELDS, drop_last=False,
        workers=workers, indices=indices,
    )  # fmt: skip
    return iter(loader)
