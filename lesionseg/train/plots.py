"""Figures of accuracy tables (matplotlib comes with the ``train`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def paired_bars(
    path: Path,
    labels: Sequence[str],
    first: tuple[str, Sequence[float]],
    second: tuple[str, Sequence[float]],
    *,
    title: str,
    dpi: int,
) -> None:
    """Write a PNG of two horizontal bars per row, the first row on top, scores on [0, 1].

    Args:
        labels: one y-axis label per row.
        first, second: (legend label, one score per row); the first bar sits above the second.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (first_label, first_values), (second_label, second_values) = first, second
    if not len(labels) == len(first_values) == len(second_values):
        raise ValueError(
            f"paired_bars: {len(labels)} labels but {len(first_values)} and "
            f"{len(second_values)} values; give one value of each per label"
        )
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    ax.barh(y - 0.2, first_values, 0.4, label=first_label)
    ax.barh(y + 0.2, second_values, 0.4, label=second_label)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
