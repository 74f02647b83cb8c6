"""The typed run config: nested dataclasses, loaded from YAML, overridden by ``--set key=value``.

Precedence: dataclass defaults < YAML file < ``--set``. Unknown keys and wrong types are errors that
name the key; ranges are checked in ``__post_init__`` so a config object is valid once it exists.

``schema`` holds the sections and their checks (their defaults the recommended recipe), ``build``
turns a mapping into them, ``yaml_io`` reads and writes YAML and applies the command line, ``shipped``
knows the configs that ship in the package (``lora_ft/configs/*.yaml``). This layer sits below data, training, serving
and compare, which all read it, and loads no torch.
"""

from __future__ import annotations

from lora_ft.config.build import DATA_FINGERPRINT, TASK_RECORD, config_from_dict
from lora_ft.config.schema import (
    METHODS,
    TRACKERS,
    TRACKING_KEYS,
    DataConfig,
    LoRAConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from lora_ft.config.yaml_io import apply_overrides, command_line_trust, dump_config, load_config, read_yaml

__all__ = [
    "DATA_FINGERPRINT",
    "TASK_RECORD",
    "METHODS",
    "TRACKERS",
    "TRACKING_KEYS",
    "DataConfig",
    "LoRAConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "command_line_trust",
    "config_from_dict",
    "dump_config",
    "load_config",
    "read_yaml",
]
