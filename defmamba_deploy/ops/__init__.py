"""The three DefMamba custom ops as plain PyTorch functions.

These functions are the *semantic reference*: the ONNX ops of the ``defmamba`` domain, the ONNX
Runtime kernels and the TensorRT plugins in ``plugins/`` are all tested against them. The contracts
(shapes, dtypes, tie rules) are stated in each docstring and in ``plugins/README.md``.
"""
from .deform_gather import deform_gather
from .selective_scan import selective_scan
from .token_sort import apply_permutation, token_sort

__all__ = ["selective_scan", "deform_gather", "token_sort", "apply_permutation"]
