"""``vitrt lut plot``: latency curves a person can read, one panel per table axis that matters."""

from __future__ import annotations

from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lut import LatencyTable, table_key


def plot_table(table: LatencyTable, out, *, precision: str = "fp32", sparsity: str = "dense") -> None:
    """Four panels at the table's largest token count: attention vs heads (per emb, qk = v = max), attention vs
    qk and v, MLP vs hidden width (per emb), and both halves vs tokens for the largest configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table.check(precision=precision, sparsity=sparsity)
    parts = table.tables[table_key(precision, sparsity)]
    attn, mlp = parts["attn"], parts["mlp"]
    if not all(part.complete for part in parts.values()):
        raise VitrtError(f"the table's {precision}/{sparsity} entries are incomplete (an interrupted build): resume it "
                         "with the same vitrt lut build command, then plot")
    ax_a, ax_m = attn.axes, mlp.axes
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    t = len(ax_a["tokens"]) - 1
    for e, emb in enumerate(ax_a["emb"]):
        axes[0, 0].plot(ax_a["heads"], attn.ms[e, :, -1, -1, t], marker="o", label=f"emb {emb}")
    axes[0, 0].set(title=f"attention half, qk = v = {ax_a['qk'][-1]}, tokens {ax_a['tokens'][t]}", xlabel="heads",
                   ylabel="ms per batch")
    e, h = len(ax_a["emb"]) - 1, len(ax_a["heads"]) - 1
    for j, v in enumerate(ax_a["v"]):
        axes[0, 1].plot(ax_a["qk"], attn.ms[e, h, :, j, t], marker="o", label=f"v {v}")
    axes[0, 1].set(title=f"attention half, emb {ax_a['emb'][e]}, heads {ax_a['heads'][h]}", xlabel="qk per head",
                   ylabel="ms per batch")
    tm = len(ax_m["tokens"]) - 1
    for e, emb in enumerate(ax_m["emb"]):
        axes[1, 0].plot(ax_m["mlp"], mlp.ms[e, :, tm], marker="o", label=f"emb {emb}")
    axes[1, 0].set(title=f"MLP half, tokens {ax_m['tokens'][tm]}", xlabel="MLP hidden", ylabel="ms per batch")
    for e, emb in enumerate(ax_a["emb"]):
        axes[1, 1].plot(ax_a["tokens"], attn.ms[e, -1, -1, -1, :], marker="o", label=f"attn, emb {emb}")
    for e, emb in enumerate(ax_m["emb"]):
        axes[1, 1].plot(ax_m["tokens"], mlp.ms[e, -1, :], marker="s", linestyle="--", label=f"MLP {ax_m['mlp'][-1]}, emb {emb}")
    axes[1, 1].set(title="both halves vs tokens (largest dims)", xlabel="tokens", ylabel="ms per batch")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{table.backend} on {table.device}, batch {table.batch}, {precision}/{sparsity}, {table.clock} "
                 f"clock, threads: {table.threads}")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix or '.png'}")
    fig.savefig(tmp, dpi=100)  # the format follows the name's suffix (.png, .pdf, .svg)
    plt.close(fig)
    tmp.replace(out)
