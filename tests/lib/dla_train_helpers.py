"""TEST helpers for training runs (never used by the pack itself)."""

from __future__ import annotations

import csv
from pathlib import Path


def read_loss_csv(path: str | Path) -> list[tuple[int, int, float]]:
    """(step, stage, loss) rows of a run's ``loss.csv`` (written by ``dla_core.train.trainer``)."""
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    return [(int(r["step"]), int(r["stage"]), float(r["loss"])) for r in rows]
