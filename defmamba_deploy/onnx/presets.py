"""Export presets (``export/presets/*.toml`` in a checkout, or a path to a .toml file)."""
from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import UsageError

PRESET_DIR = Path(__file__).resolve().parents[2] / "export" / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml")) if PRESET_DIR.is_dir() else []


def load_preset(name_or_path: str) -> dict:
    """Read a preset by name (``dynamic-batch-224``) or path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UsageError(f"unknown preset {name_or_path!r}: choose one of {', '.join(list_presets()) or '(none found)'} or give a .toml path")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"preset {path} is not valid TOML: {e}") from None
    unknown = set(data) - {"img_size", "batch", "dynamic", "opset", "profile"}
    if unknown:
        raise UsageError(f"preset {path} has unknown keys {sorted(unknown)}")
    return data


DEFAULTS = {"img_size": (224, 224), "batch": 1, "dynamic": "batch", "opset": 17}


def export_settings(preset: str | None = None, **given) -> dict:
    """export_onnx's img_size / batch / dynamic / opset: the given values (None = not given) over the
    preset's over the defaults."""
    cfg = {**DEFAULTS, **({k: v for k, v in load_preset(preset).items() if k in DEFAULTS} if preset else {})}
    cfg.update({k: v for k, v in given.items() if v is not None})
    cfg["img_size"] = tuple(cfg["img_size"])
    return cfg
