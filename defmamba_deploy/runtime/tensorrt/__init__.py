"""TensorRT: engine builds (:mod:`.build`), the float32 layer constraints (:mod:`.float32`), the INT8
calibrator (:mod:`.calibrator`), the runner and its registry entry (:mod:`.runner`), and what they
need from the machine (:mod:`.env`). Importing any of them does not import ``tensorrt``."""
from .build import (EngineInfo, ShapeProfile, build_engine, build_engine_for_cli, check_engine_compatible,
                    compute_profile, engine_sidecar_path, parse_shape, read_engine_sidecar)
from .env import TRT_INSTALL_HINT, require_tensorrt, tensorrt_version

__all__ = ["EngineInfo", "ShapeProfile", "build_engine", "build_engine_for_cli", "check_engine_compatible",
           "compute_profile", "engine_sidecar_path", "parse_shape", "read_engine_sidecar", "TRT_INSTALL_HINT",
           "require_tensorrt", "tensorrt_version"]
