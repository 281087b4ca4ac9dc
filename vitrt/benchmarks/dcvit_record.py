"""Recording a DC-ViT benchmark: OUT.json (the result and its command), OUT.md (title, command, table) and OUT.png."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable


def sibling(out: Path, suffix: str) -> Path:
    """OUT with ``suffix``: OUT.md / OUT.json / OUT.png replace such a suffix, anything else is kept
    (``-o results/dcvit_0.7`` writes dcvit_0.7.md, not dcvit_0.md)."""
    out = Path(out)
    if out.suffix in (".md", ".json", ".png"):
        out = out.with_suffix("")
    return out.with_name(out.name + suffix)


def record(out: Path, module: str, title: str, result: dict, table: str, plot: Callable[[dict, Path], None] | None = None,
           notes: str = "") -> None:
    """Write ``out`` with the suffixes .json, .md (and .png when ``plot``); the command is this process's."""
    from vitrt.benchmarks.harness import write_json
    from vitrt.compiler.options import command_line

    out = Path(out)
    command = command_line(f"python -m {module}")
    write_json(sibling(out, ".json"), {**result, "command": command})
    figure = ""
    if plot is not None:
        plot(result, sibling(out, ".png"))
        figure = f"\n\n![{title}]({sibling(out, '.png').name})"
    sibling(out, ".md").write_text(f"# {title}\n\nCommand:\n\n```bash\n{command}\n```\n\n{table}{figure}\n\n{notes}\n")


@contextlib.contextmanager
def axes(path: Path, xlabel: str, ylabel: str, title: str, size=(6.4, 4.4)):
    """One matplotlib axes, saved to ``path`` (with a light grid) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    yield ax
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
