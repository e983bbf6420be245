"""overlock: the OverLoCK vision backbone (Lou & Yu, CVPR 2025) for timm, without NATTEN.

Importing this package registers ``overlock_xt``, ``overlock_t``, ``overlock_s``, ``overlock_b``,
their ``_reparam`` deploy forms and ``test_overlock`` in timm's model registry.
"""
from . import models
from .layers import ContMixBlock
from .models import CheckpointMismatchError, OverLoCK, optimize_for_inference
from .ops import contmix_apply

__version__ = "0.1.0"

__all__ = ["CheckpointMismatchError", "ContMixBlock", "OverLoCK", "contmix_apply", "models", "optimize_for_inference"]
