"""Recording a DC-ViT benchmark: OUT.json (the result and its command), OUT.md (title, command, table) and OUT.png."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable


def record(out: Path, module: str, title: str, result: dict, table: str, plot: Callable[[dict, Path], None] | None = None,
           notes: str = "", command: str | None = None) -> None:
    """Write ``out`` with the suffixes .json, .md (and .png when ``plot``); the command recorded is ``command``, by
    default this process's as ``python -m module``."""
    from vitrt.benchmarks.harness import write_json
    from vitrt.compiler.options import command_line
    from vitrt.compiler.output import result_file

    out = Path(out)
    command = command or command_line(f"python -m {module}")
    write_json(result_file(out, ".json"), {**result, "command": command})
    figure = ""
    if plot is not None:
        plot(result, result_file(out, ".png"))
        figure = f"\n\n![{title}]({result_file(out, '.png').name})"
    result_file(out, ".md").write_text(f"# {title}\n\nCommand:\n\n```bash\n{command}\n```\n\n{table}{figure}\n\n{notes}\n")


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
