"""Variant registry: ``t|s|b`` (or ``tiny|small|base``, ``defmamba_t`` ...) -> config."""
from __future__ import annotations

from ..errors import UsageError
from .config import DefMambaConfig

_CONFIGS: dict[str, DefMambaConfig] = {
    "tiny": DefMambaConfig("tiny", embed_dim=48, depths=(2, 2, 5, 2), drop_path_rate=0.2, params=7_547_878),
    "small": DefMambaConfig("small", embed_dim=96, depths=(2, 2, 6, 2), drop_path_rate=0.2, params=30_201_340),
    "base": DefMambaConfig("base", embed_dim=96, depths=(2, 3, 16, 2), drop_path_rate=0.4, params=48_595_576),
}
_ALIASES = {"t": "tiny", "s": "small", "b": "base"}


def list_models() -> list[str]:
    """Canonical variant names."""
    return list(_CONFIGS)


def resolve_name(name: str) -> str:
    """Canonical name of a variant: 't', 'tiny', 'defmamba_t', 'DefMamba-T' all give 'tiny'."""
    key = name.strip().lower().replace("-", "_")
    for prefix in ("defmamba_", "defmamba"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    key = _ALIASES.get(key, key)
    if key not in _CONFIGS:
        raise UsageError(f"unknown model {name!r}: choose one of t, s, b (or tiny, small, base)")
    return key


def get_config(name: str) -> DefMambaConfig:
    return _CONFIGS[resolve_name(name)]


def short_name(name: str) -> str:
    """'small' -> 's' (used in default file names such as defmamba_s.onnx)."""
    return resolve_name(name)[0]
