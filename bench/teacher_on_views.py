"""How good and how sure the teacher is on the targets each way of teaching gives (docs/consistent-views.md).

For the train split of a K-view cache (`precompute-teacher --views K`): the teacher on each clean sample (its
plain logits), on each stored view split by kind (unmixed with erasing, Mixup, CutMix), and the blended target the
default trainer makes from clean logits under Mixup (train/core/mixing.py), scored against the view's dominant label
(its own label when its weight >= 0.5, else the partner's). Soft targets at --tau. Reads the cache only.

    python bench/teacher_on_views.py --cache CACHE --data DATA [--tau 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cdeit.common.cache import load_augmented_views, load_teacher_logits  # noqa: E402
from cdeit.common.views import MODE_CUTMIX, MODE_MIXUP, split_tensors  # noqa: E402


def summarise(probs: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy against `label`, mean top-1 probability, and the number of targets."""
    return {
        "n": float(len(label)),
        "accuracy": float((probs.argmax(-1) == label).float().mean()),
        "confidence": float(probs.max(-1).values.mean()),
    }


def measure(cache: str, data: str, tau: float) -> dict[str, dict[str, float]]:
    views = load_augmented_views(cache, data)
    label = split_tensors(data, "train", "cpu", ("label",))["label"]
    clean = load_teacher_logits(cache, data, "train")  # (N, C): the plain cache's logits
    n, k = views.logits.shape[:2]
    index = torch.arange(n)[:, None].expand(n, k)
    p = views.params
    partner, mode, weight = p.partner, p.mode.long(), p.weight.float()
    dominant = torch.where(weight >= 0.5, label[index], label[partner])
    soft = F.softmax(views.logits.float() / tau, -1)
    out = {"clean sample (plain cache)": summarise(F.softmax(clean / tau, -1), label)}
    for name, mask in (
        ("view, unmixed (erasing only or none)", (mode != MODE_MIXUP) & (mode != MODE_CUTMIX)),
        ("view, Mixup: teacher on the mixed image", mode == MODE_MIXUP),
        ("view, CutMix: teacher on the pasted image", mode == MODE_CUTMIX),
    ):
        if bool(mask.any()):
            out[name] = summarise(soft[mask], dominant[mask])
    mixup = mode == MODE_MIXUP
    if bool(mixup.any()):  # what the default trainer makes of the same pairs: clean targets blended by the weight
        w = weight[mixup][:, None]
        blended = w * F.softmax(clean[index[mixup]] / tau, -1) + (1 - w) * F.softmax(clean[partner[mixup]] / tau, -1)
        out["Mixup pairs, blended clean targets (default trainer)"] = summarise(blended, dominant[mixup])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="a K-view cache")
    ap.add_argument("--data", required=True, help="its dataset directory")
    ap.add_argument("--tau", type=float, default=3.0, help="temperature of the soft targets (TrainConfig's default)")
    args = ap.parse_args()
    print(f"teacher targets of {args.cache} (train split, soft at tau {args.tau:g}), against the dominant label")
    print(f"{'target':55s} {'n':>8s} {'top-1':>7s} {'mean max p':>10s}")
    for name, r in measure(args.cache, args.data, args.tau).items():
        print(f"{name:55s} {r['n']:8,.0f} {r['accuracy']:7.2%} {r['confidence']:10.3f}")


if __name__ == "__main__":
    main()
