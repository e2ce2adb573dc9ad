"""The serving commands: ``serve`` (the KServe v2 / Triton HTTP server) and ``triton-repo``."""
from __future__ import annotations
