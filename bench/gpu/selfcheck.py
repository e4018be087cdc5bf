"""The GPU check's first stage, in parts: the device, the carried ffcv, the installed cdeit, a tiny .beton.

Each part raises `StageError` with one line that says what is wrong and what to do, so a broken carried
install stops the check in seconds instead of failing minutes later inside a long stage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


class StageError(Exception):
    """A stage of the GPU check could not do its work; the message is the one line the results show."""


PACKAGES = ("common", "data", "precompute", "train")  # repository folders installed as cdeit.<name>


def check_device(device: str, preset: str) -> dict[str, Any]:
    """The GPU torch sees (name, capability, memory), or the CPU where that was asked for."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch_cuda_build": torch.version.cuda}
    if device == "cpu" or (device == "auto" and preset != "full" and not torch.cuda.is_available()):
        return info | {"device": "cpu", "device_name": f"{platform.processor() or platform.machine()} CPU"}
    if not torch.cuda.is_available():
        raise StageError(
            f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device; the {preset} "
            "check needs one (pass --device cpu for a dry run)"
        )
    dev = torch.device(device if device.startswith("cuda") else "cuda")
    props = torch.cuda.get_device_properties(dev)
    return info | {
        "device": str(dev),
        "device_name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "bf16": torch.cuda.is_bf16_supported(),
    }


def ffcv_libraries() -> dict[str, Any]:
    """ldd of ffcv's extension: every library found, and which of them come from LD_LIBRARY_PATH (the carry)."""
    spec = importlib.util.find_spec("ffcv")
    if spec is None or not spec.submodule_search_locations:
        raise StageError("ffcv is not importable; install .carry/wheels/ffcv-*.whl (bench/gpu/device.sh does)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    so = next(folder.glob("_libffcv*.so"), None)
    if so is None:
        raise StageError(f"{folder} holds no compiled _libffcv*.so; rebuild the wheel with bench/gpu/prepare_carry.sh")
    ldd = shutil.which("ldd")  # without it, importing ffcv below is the only test of its libraries
    lines = (
        subprocess.run([ldd, str(so)], capture_output=True, text=True, check=False).stdout.splitlines() if ldd else []
    )
    missing = [ln.split()[0] for ln in lines if "not found" in ln]
    if missing:
        raise StageError(
            f"ffcv's {so.name} cannot find {', '.join(missing)}; put .carry/lib on LD_LIBRARY_PATH (device.sh does)"
        )
    try:
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401
    except Exception as exc:  # an ImportError, or an OSError from a library that will not load
        raise StageError(f"import ffcv failed: {type(exc).__name__}: {exc}") from None
    resolved = {p[0]: p[2] for p in (ln.split() for ln in lines) if len(p) >= 3 and p[1] == "=>"}
    carried = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    return {
        "extension": str(so),
        "ldd": bool(ldd),
        "from_ld_library_path": sorted(k for k, v in resolved.items() if any(v.startswith(d + "/") for d in carried)),
        "opencv_core": resolved.get(next((k for k in resolved if k.startswith("libopencv_core")), "")),
        "turbojpeg": resolved.get("libturbojpeg.so.0"),
    }


def _digest(folder: Path) -> str:
    """sha256 over the package's Python files, subpackages included: a module the install lacks changes it."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cdeit_install(repo: str) -> dict[str, Any]:
    """Where cdeit is imported from, its command entry points, and that it is this working tree's code."""
    from importlib.metadata import entry_points

    import cdeit.common

    location = Path(cdeit.common.__file__).resolve().parent.parent
    commands = sorted(ep.name for ep in entry_points(group="cdeit.commands"))
    if not {"data", "precompute", "train"} <= set(commands):
        raise StageError(
            f"cdeit's `cdeit.commands` entry points are missing (found {commands or 'none'}); install the "
            "project with pip (device.sh does `pip install --target`), not by copying folders"
        )
    stale = [p for p in PACKAGES if _digest(location / p) != _digest(Path(repo) / p)]
    if stale:
        raise StageError(
            f"the cdeit installed at {location} differs from the working tree {repo} in {', '.join(stale)}; "
            "reinstall it from this tree"
        )
    return {
        "cdeit": cdeit.common.__version__,
        "cdeit_location": str(location),
        "cdeit_commands": commands,
        "cdeit_script": shutil.which("cdeit"),
    }


def tiny_beton(folder: Path, device: str, n: int = 64) -> int:
    """Write `n` random images with cdeit's ffcv writer and read them back through its loader onto `device`."""
    import numpy as np

    from cdeit.common.dataset import INT_FIELDS, make_loader
    from cdeit.data.writer import write_beton

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)}
    arrays |= {f: np.arange(n, dtype=np.int64) % 10 for f in INT_FIELDS}
    arrays["index"] = np.arange(n, dtype=np.int64)
    path = folder / "tiny.beton"
    try:
        write_beton(path, arrays, workers=2)
        loader = make_loader(path, 16, "sequential", device, fields=("image", "label"), workers=2)
        images = [b[0].permute(0, 2, 3, 1).cpu().numpy().copy() for b in loader]
    except Exception as exc:
        raise StageError(f"ffcv could not write and read {path}: {type(exc).__name__}: {exc}") from None
    if not np.array_equal(np.concatenate(images), arrays["image"]):
        raise StageError(f"ffcv read back other pixels than it wrote to {path}")
    return n


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    """bf16 matrix-product rate on random data: the ceiling the other figures are read against."""
    import torch

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12
