"""The paper's grids as study files: Tables 2, 3 and 4 and Fig. 5, with Table 1 defaults (TrainConfig's).

Each preset is a study spec (the dict a study.toml parses to) plus the paper's own numbers, which
`compare` prints beside the measured ones in the paper's layout.
"""

from __future__ import annotations

import json
from typing import Any

from cdeit.common.errors import CdeitError

PRESET_SEEDS = [0, 1, 2]  # the paper reports mean ± std without the number of seeds; three is the choice
VIT = {"name": "vit", "student": "vit", "distill": "none"}  # the mCE baseline (Table 3, Fig. 5)

# The layout of each preset's table: (column title, TrainConfig key or None for the configuration name).
PRESETS: dict[str, dict[str, Any]] = {
    "table2": {
        "title": "Table 2: learning rate x weight decay, DeiT (hard distillation), accuracy (%)",
        "spec": {
            "shared": {"student": "deit", "distill": "hard"},
            "axes": {"lr_per_512": [5e-4, 3e-4], "weight_decay": [0.05, 0.01]},
        },  # fmt: skip
        "columns": [("LR", "lr_per_512"), ("Weight Decay", "weight_decay")],
        "metrics": ["accuracy"],
        "paper": {
            "lr_per_512-0.0005_weight_decay-0.05": {"accuracy": 96.7},
            "lr_per_512-0.0005_weight_decay-0.01": {"accuracy": 96.4},
            "lr_per_512-0.0003_weight_decay-0.05": {"accuracy": 96.2},
            "lr_per_512-0.0003_weight_decay-0.01": {"accuracy": 96.3},
        },  # fmt: skip
    },
    "table3": {
        "title": "Table 3: distillation type per model, accuracy and mCE (%)",
        "spec": {
            "study": {"baseline": "vit"},
            "configs": [VIT],
            "axes": {"student": ["deit", "cdeit"], "distill": ["hard", "soft"]},
        },  # fmt: skip
        "columns": [("Model", "student"), ("Distill. Type", "distill")],
        "metrics": ["accuracy", "mce"],
        "paper": {
            "deit_hard": {"accuracy": 96.7, "mce": 1.93},
            "deit_soft": {"accuracy": 97.0, "mce": 0.46},
            "cdeit_hard": {"accuracy": 97.5, "mce": 2.10},
            "cdeit_soft": {"accuracy": 96.7, "mce": 2.94},
            "vit": {"accuracy": 96.4},
        },  # fmt: skip  (ViT: "96.4% ± 0.1", Section 4)
    },
    "table4": {
        "title": "Table 4: augmentation and regularisation ablations, DeiT (hard distillation), accuracy (%)",
        # SGD: timm's (and DeiT's) --opt sgd, momentum 0.9 (paper 4.2); RandAugment: magnitude 9, 2 operations
        # (paper 3.1), fixed magnitude, through timm's rand_augment_transform. Every other setting is Table 1's.
        "spec": {
            "shared": {"student": "deit", "distill": "hard"},
            "configs": [
                {"name": "best"},
                {"name": "sgd", "opt": "sgd", "momentum": 0.9},
                {"name": "randaugment", "aa": "rand-m9-n2"},
                {"name": "no-mixup", "mixup_prob": 0.0},
                {"name": "mixup+cutmix", "cutmix_prob": 0.3},
                {"name": "cutmix-only", "mixup_prob": 0.0, "cutmix_prob": 0.3},
                {"name": "no-erasing", "erasing_prob": 0.0},
                {"name": "dropout", "dropout": 0.1},
                {"name": "no-stoch-depth", "drop_path": 0.0},
            ],
        },  # fmt: skip
        "columns": [
            ("Ablation", None),
            ("Optimizer", "opt"),
            ("RandAug", "aa"),
            ("Mixup", "mixup_prob"),
            ("CutMix", "cutmix_prob"),
            ("Erasing", "erasing_prob"),
            ("Dropout", "dropout"),
            ("Stoch. Depth", "drop_path"),
        ],  # fmt: skip
        "metrics": ["accuracy"],
        "paper": {
            "best": {"accuracy": 96.7},
            "sgd": {"accuracy": 23.0},
            "randaugment": {"accuracy": 96.7},
            "no-mixup": {"accuracy": 96.3},
            "mixup+cutmix": {"accuracy": 95.5},
            "cutmix-only": {"accuracy": 95.7},
            "no-erasing": {"accuracy": 95.2},
            "dropout": {"accuracy": 96.5},
            "no-stoch-depth": {"accuracy": 96.2},
        },  # fmt: skip
    },
    "fig5": {
        "title": "Fig. 5: CdeiT head strategies at inference (hard distillation), mCE and accuracy (%)",
        "spec": {
            "study": {"baseline": "vit"},
            "shared": {"student": "cdeit", "distill": "hard"},
            "configs": [VIT],
            "axes": {"head_strategy": ["none", "linear", "mlp"]},
        },  # fmt: skip
        "columns": [("Strategy", "head_strategy")],
        "metrics": ["mce", "accuracy"],
        "paper": {"linear": {"accuracy": 97.5}},  # Section 4.3: "97.5% ± 0.3"; the figure's bars have no numbers
    },
}


def preset_spec(name: str, data: str, teacher_cache: str, out: str) -> dict[str, Any]:
    """The study spec of a preset with the user's data, cache and folder; Table 1 defaults for the rest."""
    if name not in PRESETS:
        raise CdeitError(f"--preset {name!r} is unknown; choose {', '.join(PRESETS)}.")
    spec = json.loads(json.dumps(PRESETS[name]["spec"]))  # a deep copy
    spec["study"] = {"name": name, "preset": name, "out": out, "seeds": PRESET_SEEDS} | spec.get("study", {})
    spec["shared"] = {"data": data, "teacher_cache": teacher_cache} | spec.get("shared", {})
    return spec
