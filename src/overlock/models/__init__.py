"""OverLoCK models, registered in timm's registry on import."""
from .overlock import (
    MODEL_ARGS,
    CheckpointMismatchError,
    OverLoCK,
    OverLoCKOutput,
    checkpoint_filter_fn,
    unwrap_state_dict,
)

__all__ = [
    "MODEL_ARGS",
    "CheckpointMismatchError",
    "OverLoCK",
    "OverLoCKOutput",
    "checkpoint_filter_fn",
    "unwrap_state_dict",
]
