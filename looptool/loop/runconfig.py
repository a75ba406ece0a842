"""What a run is asked to do: the body of ``run.requested``, read from a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from looptool.kernel.errors import LoopToolError
from looptool.kernel.events import ArtifactRef
from looptool.kernel.names import check_token
from looptool.kernel.settings import read_toml


class PplCut(msgspec.Struct, frozen=True):
    """Which mastered samples stay: ``percentile`` p keeps those at or above the p-th percentile
    of the round's mastered perplexities; ``threshold`` t keeps those with ppl >= t."""

    mode: Literal["percentile", "threshold"] = "percentile"
    value: float = 50.0


class RunConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    run: str
    seed_path: str = ""  # the seed dataset on the machine that runs `looptool run`
    # Instead of seed data: a tool source `looptool run` synthesizes it from first (with the
    # generator and judge endpoints and [synthesis]): "mcp:<command or URL>",
    # "openapi:<file>[@<base URL>]" or "tools:<file>" (looptool.app.seeding).
    tool_source: str = ""
    seed_format: str = "samples"  # "samples" (LoopTool JSONL) or an import format (xlam, openai, ...)
    seed_answers: str | None = None  # BFCL possible answers, for seed_format = "bfcl"
    seed_data: ArtifactRef | None = None  # filled in by `looptool run` after uploading the seed data
    rounds: int = 4  # training rounds; the run finishes after the last one is probed
    initial_size: int = 0  # samples in round 0 (0: the whole seed pool)
    round_size: int = 0  # later rounds are topped up with unused seed data to this size (0: no top-up)
    ppl_cut: PplCut = msgspec.field(default_factory=PplCut)
    patience: int = 0  # stop after this many rounds without a gain in eval overall (0: off)
    wait_for_eval: bool = False  # close a round only after its evaluation (implied by patience)
    # Regression gate: stop when a category's accuracy falls more than this below its best so far,
    # the base model's included (0: off; implies waiting for each round's evaluation).
    regression_margin: float = 0.0
    # Ablations, the paper's rows "w/o JGLV", "w/o EDDE", "w/o high-PPL samples": failed samples
    # carried with their labels unverified ("jglv"), no expansions ("edde"), no mastered samples
    # ("high_ppl"). With round_size the parts left share the left-out part's place
    # (`curation.shares`); fresh seed data fills what they cannot, above its floor.
    ablate: list[Literal["jglv", "edde", "high_ppl"]] = msgspec.field(default_factory=list)
    # With round_size: at least this share of each later round is fresh seed data (while the pool
    # lasts), Eq. 5's samples cut to fit (0: Eq. 5 alone fills the round, as in the paper). On
    # SmolLM2 a round 1 made almost only of failures and their expansions gave back what round 0
    # taught (bench/results/loop_vs_static.json).
    fresh_floor: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_token("run", self.run)
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")
        if not 0.0 <= self.fresh_floor <= 1.0:
            raise ValueError(f"fresh_floor must be between 0 and 1, got {self.fresh_floor}")


class RunConfigError(LoopToolError, ValueError):
    pass


def load_run_config(path: str | Path) -> RunConfig:
    raw = read_toml(path, "run config", RunConfigError)
    try:
        config = msgspec.convert(raw.get("run", raw), RunConfig)
    except (msgspec.ValidationError, ValueError) as exc:
        raise RunConfigError(f"{path}: {exc}") from None
    if config.seed_path and not Path(config.seed_path).is_absolute():
        config.seed_path = str((Path(path).parent / config.seed_path).resolve())
    return config
