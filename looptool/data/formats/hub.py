"""``hf://datasets/<owner>/<name>[/<file>]``: a dataset from the local Hugging Face cache.

Resolved offline (``local_files_only``): the snapshot ``huggingface_hub`` downloaded before, in
``$HF_HOME`` / ``$HF_HUB_CACHE`` as usual. Without a file, the snapshot's one data file (JSON,
JSONL, Parquet, optionally gzipped) is taken; several are listed to choose from.
"""

from __future__ import annotations

from pathlib import Path

from looptool.kernel.errors import LoopToolError

PREFIX = "hf://datasets/"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".json.gz", ".jsonl.gz")


class HubDatasetError(LoopToolError, ValueError):
    pass


def resolve(source: str | Path) -> Path:
    """A local path for ``source``: itself, or the cached file an ``hf://datasets/`` id names."""
    if not str(source).startswith(PREFIX):
        return Path(source)
    parts = str(source).removeprefix(PREFIX).split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise HubDatasetError(f"{source}: expected hf://datasets/<owner>/<name>[/<file>]")
    repo, inside = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise HubDatasetError(
            f"{source}: reading the Hub's cache needs huggingface_hub (pip install huggingface_hub)"
        ) from None
    try:
        snapshot = Path(str(snapshot_download(repo, repo_type="dataset", local_files_only=True)))
    except LocalEntryNotFoundError:
        raise HubDatasetError(
            f"{source}: not in the local Hugging Face cache; download it where the Hub is reachable "
            f"(huggingface-cli download {repo} --repo-type dataset) or give a file"
        ) from None
    if inside:
        path = snapshot / inside
        if not path.exists():
            raise HubDatasetError(f"{source}: the cached snapshot has no {inside}")
        return path
    files = sorted(p for p in snapshot.rglob("*") if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES))
    if len(files) != 1:
        listed = ", ".join(f"{PREFIX}{repo}/{p.relative_to(snapshot)}" for p in files[:10]) or "none"
        raise HubDatasetError(f"{source}: {len(files)} data files in the cached snapshot; name one: {listed}")
    return files[0]
