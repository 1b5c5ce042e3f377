"""Each model's share across the blocks of each component, drawn with matplotlib (the optional
extra ``mecha-core[plot]``): one panel per component, blocks in network order on the x axis, one
line per model, so which model owns which blocks is seen at a glance."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import MechaError
from .explain import Explanation
from .output_file import write_bytes_atomically

FORMATS = (".png", ".svg")
DPI = 100


def parse_size(text: str) -> tuple[int, int]:
    """``1200x800`` -> (1200, 800) pixels."""
    width, _, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT in pixels, e.g. 1200x800, got {text!r}") from None
    if not all(16 <= side <= 20000 for side in size):
        raise ValueError(f"each side is 16 to 20000 pixels, got {text!r}")
    return size


def default_size(explanation: Explanation) -> tuple[int, int]:
    panels = max(1, len(explanation.block_series()))
    return 1000, 80 + 300 * panels


def plot_shares(explanation: Explanation, path: str | os.PathLike[str], size: tuple[int, int] | None = None, *,
                inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Draw the shares into `path` (.png or .svg) at `size` pixels (width, height), never over the
    models or `inputs` (the recipe file)."""
    target = Path(path)
    if target.suffix.lower() not in FORMATS:
        raise MechaError(f"{target}: the plot is written as .png or .svg, not {target.suffix or 'a file without suffix'}")
    try:  # a Figure without pyplot: no backend is chosen, nothing global changes for the caller
        from matplotlib.figure import Figure
    except ImportError:
        raise MechaError("--plot needs matplotlib: pip install 'mecha-core[plot]'") from None

    series = explanation.block_series()
    if not series:
        raise MechaError("nothing to plot: no merged component has blocks")
    width, height = size or default_size(explanation)
    files = {m.label: Path(m.file).name for m in explanation.models}
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(series), 1, squeeze=False)[:, 0]
    for ax, (component, (blocks, values)) in zip(axes, series.items()):
        positions = list(range(len(blocks)))
        ax.set_title(f"{explanation.architecture} {component}: each model's share per block")
        for term, shares in values.items():
            color = f"C{explanation.terms.index(term) % 10}"  # a model keeps its colour in every panel
            label = f"{term}  {files[term]}" if term in files else term
            ax.plot(positions, shares, marker="o", markersize=3, color=color, label=label)
        ax.set_xticks(positions, blocks, rotation=90 if len(blocks) > 12 else 0, fontsize=8)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_ylabel("coefficient")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the lines, never over them
    buffer = io.BytesIO()
    figure.savefig(buffer, format=target.suffix.lower()[1:], dpi=DPI)
    return write_bytes_atomically(target, buffer.getvalue(), inputs=[*inputs, *(m.file for m in explanation.models)])

