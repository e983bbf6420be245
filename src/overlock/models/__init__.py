"""OverLoCK models, registered in timm's registry on import."""
from .ablations import ABLATIONS, AblationRow, builds_overlock, resolve_model_name, row_for_model
from .optimize import PASSES, optimize_for_inference
from .overlock import (
    MODEL_ARGS,
    CheckpointMismatchError,
    OverLoCK,
    checkpoint_filter_fn,
    unwrap_state_dict,
)
from .swin_like import TABLE7, SwinLike

__all__ = [
    "ABLATIONS",
    "AblationRow",
    "builds_overlock",
    "resolve_model_name",
    "row_for_model",
    "PASSES",
    "optimize_for_inference",
    "MODEL_ARGS",
    "CheckpointMismatchError",
    "OverLoCK",
    "checkpoint_filter_fn",
    "unwrap_state_dict",
    "TABLE7",
    "SwinLike",
]
