"""Typed configuration, defined once; the CLI flags are derived from the dataclass fields.

Each field's metadata carries its help text (and optionally ``flag``, ``positional``, ``choices``, ``type``);
:func:`add_arguments` turns a config dataclass into argparse arguments and :func:`from_args` builds the
config back from the parsed namespace. ``None`` always means "the default".
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path


def option(default, help: str, **meta):
    """A dataclass field with CLI metadata (``flag``, ``positional``, ``choices``, ``type``, ``metavar``)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class CompileConfig:
    model: str = option(None, "timm model name (e.g. deit_small_patch16_224)", positional=True)
    out: Path | None = option(None, "output directory (must not exist or be empty unless --force)", flag="-o/--out",
                              type=Path, metavar="OUT")
    backend: str = option("ort", "inference backend: ort (ONNX Runtime CPU, default) or trt (TensorRT)",
                          choices=("ort", "trt"))
    batch: int = option(1, "batch size fixed at compile time (static shapes)", type=int, metavar="N")
    dynamic_batch: bool = option(False, "make the batch dimension dynamic instead of fixed")
    img_size: int | None = option(None, "input image size (default: the model's)", type=int, metavar="N")
    checkpoint: Path | None = option(None, "state dict to load (read with torch.load(weights_only=True))",
                                     type=Path, metavar="PATH")
    pretrained: bool = option(False, "download timm's pretrained weights (needs a reachable model hub)")
    verify: bool = option(False, "check the ONNX against the torch twin after every pass and at the end")
    bench: bool = option(False, "benchmark the built artifact (median / p90 / p99 latency, per-block times)")
    force: bool = option(False, "replace a non-empty output directory")
    opset: int = option(17, "ONNX opset of the canonical graph", type=int, metavar="N")
    bench_iters: int = option(50, "timed iterations for --bench", type=int, metavar="N")
    bench_warmup: int = option(10, "warm-up iterations for --bench", type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads (default: ONNX Runtime's choice)", type=int,
                                 metavar="N")
    timing_cache: Path | None = option(None, "TensorRT timing cache file (read and updated)", type=Path, metavar="PATH")
    seed: int = option(0, "seed for verification inputs and data-driven passes", type=int, metavar="N")
    quiet: bool = option(False, "no progress output")
    # --- issue 3: latency lookup table (vitrt.compiler.lut) ---
    lut: Path | None = option(None, "latency table (vitrt lut build): add its prediction as latency.predicted_ms "
                              "(needs --bench); also steers --prune", type=Path, metavar="LUT")
    refine_lut: bool = option(False, "after a successful compile, fold the measured per-block latency into --lut")
    # --- 2:4 structured sparsity (issue 6; vitrt.transforms.sparsity.graph_pass, vitrt.transforms.sparsity.planner) ---
    sparsity: str | None = option(None, "prune every eligible weight to this structured pattern (2:4, along the axis "
                                  "TensorRT checks)", choices=("2:4",))
    permute: bool = option(False, "with --sparsity: permute MLP hidden and V channels first (exact) to keep more "
                                  "weight magnitude")
    sparse_finetune_epochs: int = option(0, "with --sparsity: epochs of sparse fine-tuning (masks fixed, GPUSQ-ViT "
                                            "distillation loss against the dense model)", type=int, metavar="N")
    sparse_data: str | None = option(None, "data for sparse fine-tuning: digits, synthetic or an ImageFolder PATH",
                                     metavar="digits|synthetic|PATH")
    sparse_include: str | None = option(None, "with --sparsity: only layers matching these comma-separated name "
                                              "patterns (fnmatch, e.g. 'blocks.*.mlp.*')", metavar="PATTERN")
    sparse_exclude: str | None = option(None, "with --sparsity: skip layers matching these comma-separated name "
                                              "patterns (e.g. 'blocks.0.*,head')", metavar="PATTERN")
    sparse_min_weights: int = option(4096, "with --sparsity: layers with fewer weights stay dense", type=int,
                                     metavar="N")
    export_sparse: bool = option(False, "with --sparsity: write the compressed 2:4 weights (FP16 values + "
                                        "CUTLASS-ordered metadata) to OUT/sparse_weights.npz + .json")

    # --- issue 5: static token merging (ToMe / DFE / LGTM); see vitrt.transforms.tome.schedule -------------
    tome: str | None = option(None, "merge R tokens per block (ToMe), or R,INFLECTION for ToMe's ramp", metavar="R")
    tome_schedule: str | None = option(None, "explicit r of every block, comma-separated (refused where a block "
                                             "cannot merge that many)", metavar="LIST")
    tome_flops: float | None = option(None, "pick the constant r that keeps at most this fraction of the FLOPs",
                                      type=float, metavar="F")
    tome_latency: float | None = option(None, "pick r from the latency table's token axis to keep at most this "
                                              "fraction of the predicted latency", type=float, metavar="F")
    tome_lut: Path | None = option(None, "latency table for --tome-latency (default: --lut)", type=Path, metavar="PATH")
    dfe_skip: int | None = option(None, "dense feature extractor: first S blocks merge nothing (default depth // 6)",
                                  type=int, metavar="S")
    lgtm_window: int | None = option(None, "local-global merging: window side W in patches (must divide the grid)",
                                     type=int, metavar="W")
    lgtm_transition: int | None = option(None, "local-global merging: local blocks after the skip (default: until the "
                                               "windows cover the grid)", type=int, metavar="T")
    # --- quantization and precision typing (issue 7) ---
    precision: str = option("fp32", "engine precision, carried by the graph: fp32, fp16 (typed, LayerNorm/Softmax "
                            "in fp32), int8 / fp8 (Q/DQ), int4w (INT4 weight-only, block-wise)",
                            choices=("fp32", "fp16", "int8", "fp8", "int4w"))
    calib_data: str | None = option(None, "calibration / QAT data: digits, synthetic or an ImageFolder PATH "
                                    "(default synthetic)", metavar="DATA")
    calib_method: str = option("max", "activation calibrator (weights always use max)",
                               choices=("max", "percentile", "entropy", "mse"))
    calib_images: int = option(512, "images used for calibration", type=int, metavar="N")
    qat_epochs: int = option(0, "epochs of sparse-distillation-aware QAT after calibration (GPUSQ-ViT)", type=int,
                             metavar="N")
    quantize_attention: bool = option(False, "also quantize the attention matmuls where fused attention allows it")
    scale_table: Path | None = option(None, "scale table JSON to use instead of calibrating (validated)", type=Path,
                                      metavar="FILE")
    # --- issue 4: latency-aware structural pruning (NViT) ---
    prune: float | None = option(None, "prune to this fraction of the dense model's LUT-predicted latency (e.g. 0.5)",
                                 type=float, metavar="FRACTION")
    prune_plan: Path | None = option(None, "apply this pruning plan JSON (from vitrt prune-plan) instead of searching",
                                     type=Path, metavar="PLAN")
    data: str = option("synthetic", "data for importance and fine-tuning: digits, synthetic or an ImageFolder PATH",
                       metavar="digits|PATH|synthetic")
    importance: str = option("hessian", "pruning importance: hessian (NViT eq. 6) or magnitude (baseline)",
                             choices=("hessian", "magnitude"))
    eta: float = option(0.05, "weight of the latency saving against importance in the search (NViT eq. 7)", type=float,
                        metavar="X")
    prune_samples: int = option(64, "images used to score importance (per re-scoring)", type=int, metavar="N")
    finetune_epochs: int = option(0, "fine-tune the pruned twin from the dense model for N epochs", type=int,
                                  metavar="N")
    revit: bool = option(False, "set per-block dims by NViT's ReViT rule (Table 6); importance picks the indices")

    def validate(self) -> "CompileConfig":
        from vitrt.compiler.errors import VitrtError

        if self.batch < 1:
            raise VitrtError(f"--batch must be >= 1, got {self.batch}")
        if self.img_size is not None and self.img_size < 1:
            raise VitrtError(f"--img-size must be positive, got {self.img_size}")
        if self.bench_iters < 1 or self.bench_warmup < 0:
            raise VitrtError("--bench-iters must be >= 1 and --bench-warmup >= 0")
        if not 17 <= self.opset <= 21:
            raise VitrtError(f"--opset {self.opset} is outside the supported range 17..21")
        if self.refine_lut and self.lut is None:
            raise VitrtError("--refine-lut needs --lut LUT (the table to update)")
        if self.lut is not None and not self.bench and self.prune is None:
            raise VitrtError("--lut needs --bench (or --prune): the prediction is recorded beside the measured latency")
        if self.prune is not None and not 0 < self.prune <= 1:
            raise VitrtError(f"--prune {self.prune} must be a latency fraction in (0, 1], e.g. 0.5")
        if sum([self.prune is not None, self.prune_plan is not None, self.revit]) > 1:
            raise VitrtError("--prune, --prune-plan and --revit are alternatives: pass one of them")
        if self.prune is not None and self.lut is None:
            raise VitrtError("--prune needs --lut LUT (build one with: vitrt lut build --backend ort --grid coarse "
                             "--batch N -o LUT)")
        if self.finetune_epochs < 0 or self.prune_samples < 1 or self.eta < 0:
            raise VitrtError("--finetune-epochs and --eta must be >= 0 and --prune-samples >= 1")
        if self.finetune_epochs and self.prune is None and self.prune_plan is None and not self.revit:
            raise VitrtError("--finetune-epochs fine-tunes a pruned model: add --prune, --prune-plan or --revit")
        self._validate_sparsity()
        self._validate_token_merge()
        from vitrt.transforms.quant.planner import check_quant_options  # issue 7

        check_quant_options(self)
        return self

    def _validate_sparsity(self) -> None:
        from vitrt.compiler.errors import VitrtError

        if self.sparsity is None:
            given = [flag for flag, on in (("--permute", self.permute), ("--sparse-finetune-epochs", self.sparse_finetune_epochs),
                                           ("--sparse-include", self.sparse_include), ("--sparse-exclude", self.sparse_exclude),
                                           ("--export-sparse", self.export_sparse)) if on]
            if given:
                raise VitrtError(f"{given[0]} needs --sparsity 2:4")
            return
        if self.sparse_finetune_epochs < 0:
            raise VitrtError(f"--sparse-finetune-epochs must be >= 0, got {self.sparse_finetune_epochs}")
        if self.sparse_finetune_epochs and not self.sparse_data:
            raise VitrtError("--sparse-finetune-epochs needs data: pass --sparse-data digits|synthetic|PATH")
        if self.sparse_min_weights < 0:
            raise VitrtError(f"--sparse-min-weights must be >= 0, got {self.sparse_min_weights}")

    def _validate_token_merge(self) -> None:  # issue 5
        from vitrt.compiler.errors import VitrtError

        chosen = [f for f in ("tome", "tome_schedule", "tome_flops", "tome_latency") if getattr(self, f) is not None]
        if len(chosen) > 1:
            raise VitrtError("give at most one of --tome, --tome-schedule, --tome-flops, --tome-latency")
        if not chosen and any(v is not None for v in (self.dfe_skip, self.lgtm_window, self.lgtm_transition)):
            raise VitrtError("--dfe-skip / --lgtm-window / --lgtm-transition need --tome, --tome-schedule, "
                             "--tome-flops or --tome-latency")
        if chosen:
            from vitrt.transforms.tome.schedule import parse_per_block, parse_r

            if self.tome is not None:
                parse_r(self.tome)
            if self.tome_schedule is not None:
                parse_per_block(self.tome_schedule)

    def replace(self, **changes) -> "CompileConfig":
        return dataclasses.replace(self, **changes)


def _flag_names(f: dataclasses.Field) -> list[str]:
    flag = f.metadata.get("flag")
    return flag.split("/") if flag else ["--" + f.name.replace("_", "-")]


def add_arguments(parser: argparse.ArgumentParser, config_cls, skip=()) -> None:
    """Add one argparse argument per field of ``config_cls`` (booleans become store_true flags)."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        meta = f.metadata
        kwargs = {"help": meta["help"]}
        if hints[f.name] is bool:
            parser.add_argument(*_flag_names(f), dest=f.name, action="store_true", **kwargs)
            continue
        for key in ("choices", "type", "metavar"):
            if key in meta:
                kwargs[key] = meta[key]
        if meta.get("positional"):
            parser.add_argument(f.name, **kwargs)
        else:
            parser.add_argument(*_flag_names(f), dest=f.name, default=None, **kwargs)


def from_args(config_cls, args: argparse.Namespace, **overrides):
    """Build ``config_cls`` from parsed args; options left unset (None) keep the dataclass defaults."""
    values = {}
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    values.update(overrides)
    return config_cls(**values)
