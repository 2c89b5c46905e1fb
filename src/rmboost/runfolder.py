"""The layout of an experiment's RUN_DIR: what `rmboost experiment` writes and analysis reads.

    config.yaml  log.jsonl  results.json  analysis.json  figures/  report.html
    data/        prompts.jsonl, real_train.jsonl, test.jsonl (and NOTICE.md for QA-Feedback)
    gen/<variant>/  pairs.jsonl (+ generate's sidecars), stage.json, accounting.json, beta.jsonl
    rm/<variant>__<setting>__s<seed>/  stage.json, eval.json, model/ (when kept)

Both sides name every file through this module, so the writer and the readers cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmboost.data.pairs import read_jsonl_tolerant

REAL = "real"  # the variant name of the real-only row, and the `real` setting
PROMPTS_FILE = "data/prompts.jsonl"  # paths relative to the run folder, as results.json records them
REAL_TRAIN_FILE = "data/real_train.jsonl"
TEST_FILE = "data/test.jsonl"
BETA_FILE = "beta.jsonl"  # in a variant's generation folder: the log-probability terms of beta


@dataclass(frozen=True)
class Variant:
    """One row of the grid: a method (`rmboost`, `rlcd`, ...) or an ablation of rmboost.

    Read back from an older or partial results.json, only the name may be known.
    """

    name: str  # folder name and table row: "rmboost", "rmboost-no-aspect", ...
    method: str | None = None
    ablation: str | None = None
    pairs_file: str | None = None  # relative to the run folder, as results.json records it


def gen_rel(variant: str) -> str:
    """A variant's generation folder, relative to the run folder (as results.json records it)."""
    return f"gen/{variant}"


def pairs_rel(variant: str) -> str:
    return f"{gen_rel(variant)}/pairs.jsonl"


def cell_rel(variant: str, setting: str, seed: int) -> str:
    """One reward model's folder, relative to the run folder."""
    return f"rm/{variant}__{setting.replace('+', '-')}__s{seed}"


@dataclass(frozen=True)
class RunFolder:
    """Every path of one RUN_DIR."""

    dir: Path

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def prompts(self) -> Path:
        return self.dir / PROMPTS_FILE

    @property
    def real_train(self) -> Path:
        return self.dir / REAL_TRAIN_FILE

    @property
    def test(self) -> Path:
        return self.dir / TEST_FILE

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def log(self) -> Path:
        return self.dir / "log.jsonl"

    @property
    def results(self) -> Path:
        return self.dir / "results.json"

    @property
    def analysis(self) -> Path:
        return self.dir / "analysis.json"

    @property
    def figures(self) -> Path:
        return self.dir / "figures"

    @property
    def report(self) -> Path:
        return self.dir / "report.html"

    @property
    def gen(self) -> Path:
        """One folder per variant."""
        return self.dir / "gen"

    @property
    def written(self) -> list[Path]:
        """Everything a run writes at the top of its folder (the folders hold the rest), besides the
        temporary files a kill may leave (`<name>...tmp`, written and renamed over `<name>`)."""
        return [self.config, self.log, self.results, self.analysis, self.figures, self.report, self.data, self.gen,
                self.dir / "rm"]

    def gen_dir(self, variant: str) -> Path:
        return self.dir / gen_rel(variant)

    def pairs(self, v: Variant) -> Path:
        return self.dir / (v.pairs_file or pairs_rel(v.name))

    def beta(self, variant: str) -> Path:
        return self.gen_dir(variant) / BETA_FILE

    def cell_dir(self, variant: str, setting: str, seed: int) -> Path:
        return self.dir / cell_rel(variant, setting, seed)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a run's JSONL file; a torn last line (a job still writing) is ignored, a missing file is []."""
    if not path.is_file():
        return []
    return read_jsonl_tolerant(path)[0]


def count_rows(path: Path) -> int:
    return len(read_jsonl(path))
