"""`cdeit precompute-teacher`: run the frozen teacher once over the dataset (or its clean sources) and cache it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.console import friendly_errors

DEFAULT_TEACHER = "deit3_small_patch16_224.fb_in22k_ft_in1k"  # precompute.teacher.DEFAULT_TEACHER, kept import-free


@friendly_errors
def precompute_teacher(
    data: Annotated[Path, typer.Option("--data", help="Dataset directory from `cdeit data prepare`.")],
    out: Annotated[Path, typer.Option("--out", help="Cache directory to create or resume.")],
    teacher: Annotated[str, typer.Option(help="Any timm model name.")] = DEFAULT_TEACHER,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Teacher weights: .safetensors, or .pth loaded with weights_only=True.")
    ] = None,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Untrained teacher (benchmarks, tests).")
    ] = False,
    head: Annotated[
        str | None,
        typer.Option(
            help="A fitted head.safetensors to reuse, or 'none' for the teacher's own head. "
            "Default: fit a linear head on the train features (paper 4.1)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per forward. Default: 1024 on CUDA, 64 on CPU.")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Samples per HDF5 shard (a multiple of the batch size).")] = 16384,
    store_features: Annotated[
        bool, typer.Option("--store-features", help="Also keep the float16 pre-logit features in the shards.")
    ] = False,
    shard_index: Annotated[int, typer.Option(help="Which slice of the shards this machine computes.")] = 0,
    num_shards: Annotated[int, typer.Option(help="Number of slices (machines) the shards are split over.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the head fit (and of --random-weights).")] = 0,
    workers: Annotated[int | None, typer.Option(help="Image decoding threads. Default: min(8, cores).")] = None,
    head_epochs: Annotated[int, typer.Option(help="Epochs of the head fit over the cached features.")] = 50,
    head_lr: Annotated[float, typer.Option(help="AdamW learning rate of the head fit (paper: 5e-5).")] = 5e-5,
    head_standardize: Annotated[
        bool, typer.Option(help="Fit the head on z-scored features (folded back into the head).")
    ] = False,
    splits: Annotated[str, typer.Option(help="Comma-separated splits to cache.")] = "train,val,test",
    view: Annotated[
        str,
        typer.Option(
            help="same: the teacher sees every sample (the paper); clean: it sees each sample's clean source image, "
            "once per source, and the cache is keyed by source id (needs DATA/sources.beton)."
        ),
    ] = "same",
    targets: Annotated[
        str,
        typer.Option(
            help="What to store, comma-separated: logits (always), embedding (pre-logit, = --store-features), "
            "patches (final patch tokens pooled to 8x8), attention (last block's class-token map, 8x8)."
        ),
    ] = "logits",
) -> None:
    """Cache the teacher's logits of every image: features, a fitted 10-way head, logits in HDF5 shards."""
    from precompute.run import PrecomputeConfig
    from precompute.run import precompute_teacher as run

    run(
        PrecomputeConfig(
            data=data, out=out, teacher=teacher, checkpoint=checkpoint, random_weights=random_weights, head=head,
            batch_size=batch_size, shard_size=shard_size, store_features=store_features, shard_index=shard_index,
            num_shards=num_shards, device=device, seed=seed, workers=workers, head_epochs=head_epochs, head_lr=head_lr,
            head_standardize=head_standardize,
            splits=tuple(s.strip() for s in splits.split(",") if s.strip()), view=view,
            targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
        )
    )  # fmt: skip
