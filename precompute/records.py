"""What a precompute measures about its own teacher and records in the manifest: each pass's throughput (the figure
`cdeit compare` prices an online teacher with) and the temperature that calibrates its val logits (Guo et al. 2017).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cdeit.common.console import out

if TYPE_CHECKING:
    import torch

    from cdeit.precompute.job import PrecomputeJob


def device_name(device: torch.device) -> str:
    """The accelerator's or the processor's name, for the figures a throughput belongs to."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = torch.get_num_threads()
    return f"{platform.processor() or platform.machine() or 'cpu'} ({cores} thread{'s' if cores != 1 else ''})"


def throughput(job: PrecomputeJob, passes: dict[str, tuple[int, float]]) -> dict[str, Any]:
    """{pass: images, seconds, images/s, device} for each pass that computed something in this run."""
    record = {"device": str(job.device), "device_name": device_name(job.device), "batch_size": job.batch_size}
    record["compute_dtype"] = job.compute_dtype
    return {
        name: {"images": images, "seconds": seconds, "images_per_s": images / seconds, **record}
        for name, (images, seconds) in passes.items()
        if images and seconds > 0
    }


def calibration(job: PrecomputeJob, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Temperature scaling fitted on the val split's cached logits, or None when the cache has no complete val split
    or already records a calibration of its head."""
    import numpy as np

    from cdeit.common.cache import load_teacher_logits
    from cdeit.common.calibration import at_search_bound, calibrate
    from cdeit.common.dataset import beton_path, read_split

    head = manifest.get("head") or {}
    found = manifest.get("calibration")
    if found and found.get("head_hash") == head.get("hash"):
        return None
    ready = manifest["complete"] if job.clean else (manifest["splits"].get("val") or {}).get("complete")
    if not ready or not (job.data["splits"].get("val") or {}).get("count"):
        return None
    logits = load_teacher_logits(job.cfg.out, job.cfg.data, "val", "cpu", checksums=False).numpy()
    labels = read_split(beton_path(job.cfg.data, "val"), fields=("label",))["label"].astype(np.int64)
    result = calibrate(logits, labels) | {"split": "val", "head_hash": head.get("hash")}
    if at_search_bound(result["temperature"]):
        out.print(
            f"calibration on val ({len(labels):,} images) found no temperature: the NLL keeps falling to the end of "
            f"the search at T = {result['temperature']:.3g}, so none is recorded and soft targets use the raw logits "
            "(--teacher-temperature auto is 1): the teacher is right on every val image, or its logits are far "
            "too flat or too sharp to fit."
        )
        return None
    out.print(
        f"calibration on val ({len(labels):,} images): temperature {result['temperature']:.3f}, "
        f"ECE {result['ece_before']:.4f} -> {result['ece_after']:.4f}, NLL {result['nll_before']:.4f} -> "
        f"{result['nll_after']:.4f}"
    )
    return result
