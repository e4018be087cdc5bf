"""The teacher-logit cache contract: the one package that names, writes, reads, verifies and merges CACHE/.

CACHE/ holds one HDF5 shard per `shard_size` samples of each split (`train-00000.h5`, ...), each written under
a temporary name and renamed when complete; `head.safetensors`, the linear head that turned the teacher's
features into logits; `manifest.json`, always derived from the shards present, so that resume, slices and
merge share one code path; and, while a run is unfinished, `features/` with the backbone features the head is
fitted on. docs/cache-format.md describes the layout.

Modules: `format` (version, names, shard attributes, the provenance-agreement check), `store` (HDF5 shards,
checksums, manifest), `reader` (the trainer's `load_teacher_targets` -> `TeacherTargets`), `augmented` (the
K augmented views of a `--views K` cache: `load_augmented_views` -> `AugmentedViews`), `verify`, `merge`.
"""

from cdeit.common.cache.augmented import AugmentedViews, check_renders, load_augmented_views
from cdeit.common.cache.format import (
    AUGMENTED,
    AUGMENTED_DATASETS,
    AUGMENTED_DIR,
    CACHE_FORMAT,
    FEATURES,
    FEATURES_DIR,
    FLOAT_DATASETS,
    FORMAT_VERSION,
    HEAD_FILE,
    IDENTITY_KEYS,
    INFO_KEYS,
    LOGIT_IDENTITY_KEYS,
    LOGITS,
    MANIFEST,
    SOURCES_SPLIT,
    TARGET_DATASETS,
    TARGETS,
    TEST_PAUSE_ENV,
    VIEW_KEYS,
    VIEWS,
    ShardSpec,
    augmentation_of,
    cache_targets,
    cache_view,
    plan_shards,
    provenance,
    provenance_conflicts,
    shard_attrs,
    token_targets_of,
    views_of,
)
from cdeit.common.cache.merge import merge_caches
from cdeit.common.cache.reader import TeacherTargets, load_teacher_logits, load_teacher_targets
from cdeit.common.cache.store import (
    build_manifest,
    cache_info,
    read_arrays,
    read_attrs,
    read_cache_manifest,
    read_head_meta,
    sha256_file,
    shard_files,
    shard_problem,
    tensor_hash,
    write_manifest,
    write_shard,
)
from cdeit.common.cache.verify import verify_cache

__all__ = [
    "AUGMENTED",
    "AUGMENTED_DATASETS",
    "AUGMENTED_DIR",
    "CACHE_FORMAT",
    "FEATURES",
    "FEATURES_DIR",
    "FLOAT_DATASETS",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "IDENTITY_KEYS",
    "INFO_KEYS",
    "LOGITS",
    "LOGIT_IDENTITY_KEYS",
    "MANIFEST",
    "SOURCES_SPLIT",
    "TARGETS",
    "TARGET_DATASETS",
    "TEST_PAUSE_ENV",
    "VIEWS",
    "VIEW_KEYS",
    "AugmentedViews",
    "ShardSpec",
    "TeacherTargets",
    "augmentation_of",
    "build_manifest",
    "cache_info",
    "cache_targets",
    "cache_view",
    "check_renders",
    "load_augmented_views",
    "load_teacher_logits",
    "load_teacher_targets",
    "merge_caches",
    "plan_shards",
    "provenance",
    "provenance_conflicts",
    "read_arrays",
    "read_attrs",
    "read_cache_manifest",
    "read_head_meta",
    "sha256_file",
    "shard_attrs",
    "shard_files",
    "shard_problem",
    "tensor_hash",
    "token_targets_of",
    "verify_cache",
    "views_of",
    "write_manifest",
    "write_shard",
]
