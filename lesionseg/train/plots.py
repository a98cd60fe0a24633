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


def froc_lines(
    path: Path,
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    rates: Sequence[float],
    operating_point: tuple[float, float] | None,
    title: str,
    dpi: int,
) -> None:
    """Write a PNG of FROC step curves: sensitivity against false masks per slice.

    Args:
        curves: name -> (false masks per slice, sensitivity), points in threshold-descending
            order; the last name ("overall") is drawn thick, the others thin.
        rates: false masks per slice marked by dotted vertical lines.
        operating_point: (false masks per slice, sensitivity) of the last curve at the bundle's
            threshold, marked with a dot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(curves)
    x_max = max([*rates, *(max(x, default=0.0) for x, _ in curves.values())]) * 1.05
    for i, name in enumerate(names):
        x, y = curves[name]
        last = i == len(names) - 1
        ax.step(
            [0.0, *x],
            [0.0, *y],
            where="post",
            lw=2.5 if last else 1.0,
            color="black" if last else None,
            alpha=1.0 if last else 0.7,
            label=name if last or len(names) <= 11 else None,
        )
    for rate in rates:
        ax.axvline(rate, color="grey", ls=":", lw=0.8)
    if operating_point is not None:
        ax.plot(*operating_point, "o", color="red", label="bundle's threshold (overall)")
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false masks per slice")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
