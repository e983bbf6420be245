"""ContMix kernel application: one public function, a reference oracle, fast backends."""
from . import custom_op, depthwise  # registers the custom ops
from .backends import available_backends, check_backend_name, resolve_backend
from .contmix import contmix_apply
from .geometry import neighbour_indices, relative_position_bias, window_starts
from .reference import contmix_reference

__all__ = [
    "available_backends",
    "check_backend_name",
    "contmix_apply",
    "contmix_reference",
    "custom_op",
    "depthwise",
    "neighbour_indices",
    "relative_position_bias",
    "resolve_backend",
    "window_starts",
]
