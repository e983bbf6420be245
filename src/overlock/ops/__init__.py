"""ContMix kernel application: one public function, a reference oracle, fast backends."""
from .contmix import ENV_VAR, LowRankLogits, available_backends, contmix_apply, select_backend
from .reference import contmix_reference, neighbour_indices, relative_position_bias, window_starts

__all__ = [
    "ENV_VAR",
    "LowRankLogits",
    "available_backends",
    "contmix_apply",
    "contmix_reference",
    "neighbour_indices",
    "relative_position_bias",
    "select_backend",
    "window_starts",
]
