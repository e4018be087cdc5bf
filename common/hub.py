"""The local Hugging Face cache: where a teacher's pretrained weights already are, so no network is needed.

timm downloads pretrained weights through huggingface_hub into its cache (`HF_HOME`/hub, or `HF_HUB_CACHE`).
On a compute node without internet a populated cache (copied from a login node, or shared) is the usual
source of weights; these lookups find a cached file without touching the network, so the precompute stage can
load it directly and the demo can prefer it to random weights. Used by precompute and by the demo (common).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_TEACHER = "deit3_small_patch16_224.fb_in22k_ft_in1k"  # the paper's teacher (timm name.tag)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repo, in its order
CONFIG_FILE = "config.json"


def hub_cache_dir() -> str:
    """The cache huggingface_hub reads (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE=1 forbids huggingface_hub any network access."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def split_revision(repo: str) -> tuple[str, str | None]:
    """`org/repo@rev` -> (`org/repo`, `rev`), the way timm spells a revision."""
    repo_id, _, revision = repo.partition("@")
    return repo_id, revision or None


def cached_file(repo: str, filename: str) -> Path | None:
    """`filename` of hub repo `repo` (`org/name[@rev]`) if the local cache holds it, else None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, revision = split_revision(repo)
    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
    return Path(found) if isinstance(found, str) else None  # None: unknown; a sentinel: known to be absent


def cached_weights(repo: str, filename: str | None = None) -> Path | None:
    """The cached weights file of a hub repo: `filename` if given, else the first of WEIGHT_FILES present."""
    for name in (filename,) if filename else WEIGHT_FILES:
        if (path := cached_file(repo, name)) is not None:
            return path
    return None


def cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder of an `hf-hub:` repo holding both config.json and weights (a timm local-dir)."""
    config = cached_file(repo, CONFIG_FILE)
    weights = cached_weights(repo)
    if config is None or weights is None or config.parent != weights.parent:
        return None
    return config.parent


def timm_weights_in_cache(name: str) -> Path | None:
    """For a timm `name[.tag]` or `hf-hub:org/repo`: its weights file in the local cache, or None.

    A local-dir: name or a name timm does not know has no hub weights, hence None.
    """
    import timm.models

    if name.startswith("hf-hub:"):
        snapshot = cached_snapshot(name.removeprefix("hf-hub:"))
        return cached_weights(name.removeprefix("hf-hub:")) if snapshot else None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    return cached_weights(cfg.hf_hub_id, cfg.hf_hub_filename)
