"""``vitrt compare``: where a compiled graph departs from its reference, point by point along the depth.

    vitrt compare OUT              the graph (every probe point an output) against the twin the compile verified
                                   against, rebuilt from OUT/twin (compile with --keep-twin); --against float
                                   compares with the twin before quantization / precision typing instead
    vitrt compare A B              graph B against graph A on the points both have, each run by its own backend

Both write ``compare.md`` / ``compare.json`` (per point: max |Δ|, mean |Δ|, relative L2 error, cosine, tolerance;
per block: error in / out and growth; top-1 agreement, and top-1 with labelled data) and ``error_growth.png`` into
the report directory (default ``OUT/compare``, or ``B/compare``), and print the table, the first point over its
tolerance and the block that adds the most error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.onnx_file import read_onnx
from vitrt.compiler.spec import ViTSpec
from vitrt.compiler.verify import decision_modules, pinned
from vitrt.debug.config import PROBE_BACKENDS, CompareConfig, check_out
from vitrt.debug.metrics import Comparison, compare_probes, dtype_tolerance
from vitrt.debug.points import Point, graph_points, layer_input_point
from vitrt.debug.probes import graph_probe, twin_probe

PRECISION_STAGES = ("quant", "precision")  # what --against float leaves out of the twin
DATA_BATCH = 64  # images compared at a time (both sides hold every point of one batch)


@dataclass
class Artifact:
    """A compiled OUT as compare reads it: the graph, its spec, its manifest and the precision it was built at."""

    path: Path
    model: onnx.ModelProto
    spec: ViTSpec
    manifest: dict

    @property
    def precision(self) -> str:
        return artifact_precision(self.manifest)

    @property
    def tolerance(self) -> float:
        """The logits tolerance the compile verified this graph at: the loosest of what it quantized and typed
        (int4w weights on fp16 activations: fp16's, as the pass manager keeps the passes' largest)."""
        return max(dtype_tolerance(self.precision), dtype_tolerance(activation_precision(self.manifest) or "fp32"))

    def probe_backend(self, chosen: str | None) -> str:
        """``chosen``, else the backend it was compiled for where that can probe (a TensorRT plan: ONNX Runtime, or
        torch for a bf16 graph: ONNX Runtime has no bf16 kernels on CPU)."""
        compiled = self.manifest.get("backend", "ort")
        if chosen or compiled in PROBE_BACKENDS:
            return chosen or compiled
        return "torch" if activation_precision(self.manifest) == "bf16" else "ort"


def artifact_precision(manifest: dict) -> str:
    """The precision a compile built: its quantization section's, fp16 when typed, else fp32."""
    if "quantization" in manifest:
        return manifest["quantization"]["precision"]
    return activation_precision(manifest) or "fp32"


def activation_precision(manifest: dict) -> str | None:
    """The type precision typing gave the activations (fp16 / bf16); None where the compile typed nothing."""
    return manifest["precision"].get("activations", "fp16") if "precision" in manifest else None


def load_artifact(path: Path) -> Artifact:
    from vitrt.compiler.jsonfile import read_json

    check_out(path)
    manifest = read_json(Path(path) / "manifest.json", "manifest")
    model = read_onnx(Path(path) / "model.onnx")
    return Artifact(Path(path), model, ViTSpec.from_onnx(model), manifest)


def image_batches(source: str, spec: ViTSpec, count: int, seed: int = 0):
    """(how many, batches): up to ``count`` images of ``source`` at the model's size — fewer where the source has
    fewer (digits' test split: 450) — as (images [B, C, H, W] float32, labels or None)."""
    from vitrt.calib.data import load_data

    data = load_data(source, spec.img, split="test", limit=count, seed=seed)

    def batches():
        for images, labels in data.batches(DATA_BATCH):
            yield images.numpy(), (labels.numpy() if labels is not None else None)
    return len(data), batches()


def compare_with_twin(config: CompareConfig, progress) -> tuple[Comparison, dict]:
    """One OUT against the twin its compile verified against (or the float twin), on ``config.data``."""
    from vitrt.pipeline.replay import load_record

    artifact = load_artifact(config.a)
    with progress.step("rebuilding the twin from OUT/twin"):
        record = load_record(config.a)
        skip = PRECISION_STAGES if config.against == "float" else ()
        twin = record.twin_after(skip=skip)
    points = graph_points(artifact.model, artifact.spec)
    deciders = decision_modules(twin)
    # the merge decisions as extra outputs of the candidate (taken out again before the comparison)
    decided = [Point(f"decision:{n}", "head", None, n, ()) for m in deciders for n in m.decision_tensors]
    candidate = graph_probe(artifact.model, points + decided, artifact.probe_backend(config.backend), config.threads)
    reference = twin_probe(twin, points)
    flips: list[int] = []
    if deciders:  # the twin merges as the candidate graph decided (see vitrt.compiler.verify): near ties set apart
        candidate, reference = pinned_probes(candidate, reference, deciders, flips)
    count, batches = image_batches(config.data, artifact.spec, config.images, config.seed)
    with progress.step(f"comparing {len(points)} points on {count} {config.data} images"):
        comparison = compare_probes(candidate, reference, points, batches, artifact.tolerance)
    reference_name = "float twin (no quantization / precision typing)" if config.against == "float" else "twin"
    if deciders:
        reference_name += (f", merging as the graph decided ({sum(flips)} of {count} images would merge "
                           "otherwise)")
    return comparison, {"candidate": f"{config.a} ({artifact.probe_backend(config.backend)})", "reference": reference_name,
                        "precision": artifact.precision}


def pinned_probes(candidate, reference, deciders, flips: list[int]):
    """(candidate, reference) probes where the reference twin merges tokens as the candidate graph just decided on
    the same images (:func:`~vitrt.debug.metrics.compare_probes` runs the candidate, then the reference, per
    batch). The candidate's ``decision:<tensor>`` values are taken out of its result; ``flips`` gets, per batch,
    the images the twin would have merged otherwise."""
    last: dict[str, np.ndarray] = {}

    def run_candidate(images):
        values = candidate(images)
        last.clear()
        last.update({name[len("decision:"):]: values.pop(name).astype(np.int64)
                     for name in [n for n in values if n.startswith("decision:")]})
        return values

    def run_reference(images):
        with pinned(deciders, last, len(images)) as flipped:
            values = reference(images)
        flips.append(flipped())
        return values
    return run_candidate, run_reference


def compare_artifacts(config: CompareConfig, progress) -> tuple[Comparison, dict]:
    """Graph B against graph A (the reference) on the probe points both hold."""
    a, b = load_artifact(config.a), load_artifact(config.b)
    if (a.spec.img, a.spec.in_chans) != (b.spec.img, b.spec.in_chans):
        raise VitrtError(f"'{config.a}' takes {a.spec.in_chans}x{a.spec.img}x{a.spec.img} images, '{config.b}' "
                         f"{b.spec.in_chans}x{b.spec.img}x{b.spec.img}: they cannot see the same images")
    # what no vitrt stage changes (pruning narrows widths, DC-ViT empties blocks, merging drops tokens)
    fixed = ("patch", "depth", "num_classes", "distilled")
    differ = [f"{k} {getattr(a.spec, k)} vs {getattr(b.spec, k)}" for k in fixed
              if getattr(a.spec, k) != getattr(b.spec, k)]
    if differ:
        raise VitrtError(f"'{config.a}' and '{config.b}' are compiles of different models ({', '.join(differ)}): "
                         "compare two compiles of one model")
    points_a, points_b = shared_points(a.model, b.model)
    backend_a, backend_b = a.probe_backend(config.backend), b.probe_backend(config.backend_b)
    reference = graph_probe(a.model, points_a, backend_a, config.threads)
    candidate = graph_probe(b.model, points_b, backend_b, config.threads)
    tolerance = max(a.tolerance, b.tolerance)
    count, batches = image_batches(config.data, a.spec, config.images, config.seed)
    with progress.step(f"comparing {len(points_b)} shared points on {count} {config.data} images"):
        comparison = compare_probes(candidate, reference, points_b, batches, tolerance)
    every = {p.name for p in graph_points(a.model, a.spec)} | {p.name for p in graph_points(b.model, b.spec)}
    comparison.missing.update({name: "in one graph only" for name in sorted(every - {p.name for p in points_b})})
    return comparison, {"candidate": f"{config.b} ({backend_b}, {b.precision})",
                        "reference": f"{config.a} ({backend_a}, {a.precision})",
                        "precision": f"{a.precision} vs {b.precision}"}


def shared_points(model_a: onnx.ModelProto, model_b: onnx.ModelProto) -> tuple[list, list]:
    """The points both graphs hold, in B's order, as (A's points, B's points) with the same names. A Q/DQ'd layer
    input that only one graph has is matched with the same layer's float input in the other."""
    listed_a = graph_points(model_a, ViTSpec.from_onnx(model_a))
    listed_b = graph_points(model_b, ViTSpec.from_onnx(model_b))
    points_a, points_b = {p.name: p for p in listed_a}, {p.name: p for p in listed_b}
    for mine, theirs, model in ((points_a, points_b, model_a), (points_b, points_a, model_b)):
        for name, point in theirs.items():
            if name not in mine and (found := layer_input_point(model, point)) is not None:
                mine[name] = found
    order = max(listed_a, listed_b, key=len)  # the graph with more points lists them in computation order
    names = list(dict.fromkeys(p.name for p in order + listed_a + listed_b if p.name in points_a and p.name in points_b))
    return [points_a[n] for n in names], [points_b[n] for n in names]


# --- the report ----------------------------------------------------------------------------------------------------

def _g(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def markdown_table(head: list[str], align: str, rows) -> str:
    """A markdown table: ``align`` one letter per column (l / r), ``rows`` lists of cells."""
    rule = "|" + "".join("---|" if a == "l" else "---:|" for a in align)
    return "\n".join(["| " + " | ".join(head) + " |", rule] + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def point_table(comparison: Comparison) -> str:
    return markdown_table(["point", "kind", "max abs", "mean abs", "rel L2", "cosine",
                           "allowed (rel L2; logits: max abs)", ""], "llrrrrrl",
                          ([row["point"], row["kind"], _g(row["max_abs"]), _g(row["mean_abs"]), _g(row["rel"]),
                            f"{row['cosine']:.6f}", _g(row["tolerance"]), "**over**" if row["exceeds"] else "ok"]
                           for row in comparison.rows()))


def block_table(comparison: Comparison) -> str:
    return markdown_table(["block", "rel L2 in", "rel L2 out", "growth", "max abs out", "cosine out",
                           "worst point inside (rel L2)"], "rrrrrrl",
                          ([row["block"], _g(row["rel_in"]), _g(row["rel_out"]), _g(row["growth"]),
                            _g(row["max_abs_out"]), f"{row['cosine_out']:.6f}",
                            f"{row['worst_point']} ({_g(row['worst_rel'])})"] for row in comparison.block_growth()))


def summary_lines(comparison: Comparison, meta: dict) -> list[str]:
    head = comparison.head.to_dict()
    first, top = comparison.first_exceeding(), comparison.largest_contributor()
    lines = [f"candidate: {meta['candidate']}", f"reference: {meta['reference']}",
             f"points compared: {len(comparison.stats)}; logits tolerance {comparison.tolerance:g} ({meta['precision']})",
             f"top-1 agreement: {head['top1_agreement']:.4f} on {head['images']} images"
             + (f"; top-1 candidate {head['top1_candidate']:.4f}, reference {head['top1_reference']:.4f}"
                if "top1_candidate" in head else "")]
    if first is None:
        lines.append("first point over its tolerance: none (every point within tolerance)")
    else:
        measure = ("max abs", first.max_abs) if first.point.name == "logits" else ("rel L2 error", first.rel)
        lines.append(f"first point over its tolerance: {first.point.name} ({measure[0]} {measure[1]:.3g} > "
                     f"{comparison.point_tolerance(first):.3g})")
    uncompared = sorted({int(n.split(".")[1]) for n in comparison.missing if n.endswith(".output")
                         and n.startswith("blocks.")})
    if top is not None:
        where = ("the stem (input quantization / patch embedding)" if top["block"] == "stem"
                 else f"blocks.{top['block']}")
        lines.append(f"largest contributor: {where} (stream rel L2 error {top['rel_in']:.3g} -> "
                     f"{top['rel_out']:.3g}; worst inside: {top['worst_point']})"
                     + (f" among the blocks compared; block output(s) {', '.join(map(str, uncompared))} could not "
                        "be compared (see below), so the error may grow there" if uncompared else ""))
    elif uncompared:
        lines.append(f"largest contributor: undetermined (block output(s) {', '.join(map(str, uncompared))} could "
                     "not be compared, see below)")
    return lines


def write_report(directory: Path, comparison: Comparison, meta: dict, command: str, extra: dict | None = None) -> None:
    """compare.md, compare.json and error_growth.png into ``directory`` (a staging directory)."""
    from vitrt.compiler.output import write_json
    from vitrt.debug.plots import plot_error_growth

    data = {"command": command, **meta, **comparison.to_dict(), **(extra or {})}
    write_json(directory / "compare.json", data)
    plot_error_growth(comparison, directory / "error_growth.png", title=f"{meta['candidate']} vs {meta['reference']}")
    missing = "".join(f"\n- {name}: {why}" for name, why in comparison.missing.items())
    text = (f"# vitrt compare\n\n```bash\n{command}\n```\n\n" + "\n".join(f"- {line}" for line in
                                                                       summary_lines(comparison, meta))
            + f"\n\n![error growth](error_growth.png)\n\n## Blocks\n\n{block_table(comparison)}\n\n## Points\n\n"
            + point_table(comparison) + "\n" + (f"\n## Not compared\n{missing}\n" if missing else ""))
    (directory / "compare.md").write_text(text)


def run(config: CompareConfig) -> int:
    from vitrt.compiler.options import command_line
    from vitrt.compiler.output import atomic_output_dir, check_output_dir
    from vitrt.compiler.progress import progress_for
    from vitrt.pipeline.config import check_outside_out  # a synth:SET too

    config = config.validate()
    report_dir = config.report_dir
    # -o A would delete A with --force, and an image folder inside the report with it
    for what, source in (("OUT", config.a), ("B", config.b), ("--data", config.data)):
        check_outside_out(what, source, report_dir)
    check_output_dir(report_dir, config.force)
    progress = progress_for(config)
    command = command_line()
    comparison, meta = (compare_artifacts if config.b is not None else compare_with_twin)(config, progress)
    extra = None
    if config.bisect:
        from vitrt.debug.bisect import bisect_out

        extra = {"bisect": bisect_out(config, progress)}
    with atomic_output_dir(report_dir, config.force) as staging:
        write_report(staging, comparison, meta, command, extra)
        if extra is not None:
            (staging / "exclude.txt").write_text(extra["bisect"]["flags"] + "\n")
    print(point_table(comparison))
    print()
    print(block_table(comparison))
    print()
    print("\n".join(summary_lines(comparison, meta)))
    if extra is not None:
        from vitrt.debug.bisect import bisect_lines

        print("\n".join(bisect_lines(extra["bisect"])))
    print(f"wrote {report_dir}")
    return 0


def read_report(directory: Path) -> dict:
    return json.loads((Path(directory) / "compare.json").read_text())


def logits_only(model: onnx.ModelProto, images: np.ndarray, backend: str = "ort", threads: int | None = None
                ) -> np.ndarray:
    """The graph's logits alone (no point marked), for accuracy checks."""
    points = [p for p in graph_points(model, ViTSpec.from_onnx(model)) if p.name == "logits"]
    return graph_probe(model, points, backend, threads)(images)["logits"]
