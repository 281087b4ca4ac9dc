"""What the engine is built for: backend and device, batch (static or dynamic), precision, opset, threads.

Every stage plans for the target (the pruning search's latency table must match its backend and batch, the
quantization stage reads its precision) and the backend builds for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option

BACKENDS = ("ort", "trt", "torch")
TORCH_COMPILE_MODES = ("off", "default", "max-autotune")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int4w")
# A dynamic batch without --max-batch goes up to this (or --batch, if larger): a profile that ended at --batch 1
# built a TensorRT engine that takes one image, which a server cannot batch.
DEFAULT_MAX_BATCH = 32
MIN_OPSET, MAX_OPSET = 17, 21


def check_precision_runs(precision: str, backend: str) -> None:
    """Refuse (one line) a precision ``backend`` has no kernels for (compile's target, lut build's key)."""
    if precision == "bf16" and backend == "ort":  # checked by tests/test_precision.py
        raise OptionError("--precision bf16 needs --backend trt or torch: ONNX Runtime's CPU provider has no "
                          "bfloat16 kernels for MatMul, Add, Erf or Softmax (use --precision fp16 with --backend ort)")


@dataclass(frozen=True)
class TargetConfig:
    backend: str = option("ort", "inference backend: ort (ONNX Runtime CPU, default), trt (TensorRT) or torch "
                          "(PyTorch on --device, the compiled graph imported back)", choices=BACKENDS)
    device: str | None = option(None, "device of --backend torch: cpu (default), cuda, cuda:N or cuda:local "
                                "(torchrun's LOCAL_RANK); ort runs on the CPU, trt on the current GPU", metavar="DEVICE")
    torch_compile: str = option("off", "--backend torch: run through torch.compile (default or max-autotune mode)",
                                choices=TORCH_COMPILE_MODES)
    batch: int = option(1, "batch size fixed at compile time (static shapes)", type=int, metavar="N")
    dynamic_batch: bool = option(False, "make the batch dimension dynamic instead of fixed")
    precision: str = option("fp32", "engine precision, carried by the graph: fp32, fp16 / bf16 (typed, "
                            "LayerNorm in fp32; bf16 for trt), int8 / fp8 (Q/DQ), int4w (INT4 weight-only, "
                            "block-wise; W4A16 for trt)", choices=PRECISIONS)
    opset: int = option(17, "ONNX opset of the canonical graph", type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads (default: ONNX Runtime's choice)", type=int,
                                 metavar="N")
    timing_cache: Path | None = option(None, "TensorRT timing cache file (read; rewritten after a successful build)",
                                       type=Path, metavar="PATH")
    min_batch: int | None = option(None, "with --dynamic-batch: smallest batch of the TensorRT optimisation profile "
                                   "(default 1)", type=int, metavar="N")
    max_batch: int | None = option(None, "with --dynamic-batch: largest batch of the TensorRT optimisation profile "
                                   "(default: the larger of --batch, the batch it is optimised for, and "
                                   f"{DEFAULT_MAX_BATCH})", type=int, metavar="N")
    cuda_graph: bool = option(False, "trt, or torch on --device cuda: capture each input shape's run into a CUDA "
                              "graph and replay it (torch with --torch-compile: torch.compile's reduce-overhead mode)")
    no_build: bool = option(False, "trt backend: write the TensorRT-ready OUT/model.onnx and the manifest without "
                            "building the engine (no TensorRT or GPU needed here); the manifest's engine_build names "
                            "the trtexec command that builds it on the GPU machine")

    @property
    def static_batch(self) -> int | None:
        """The batch baked into the graph, or None for a dynamic batch dimension."""
        return None if self.dynamic_batch else self.batch

    @property
    def activation_dtype(self) -> str:
        """The float type the graph's activations carry: fp16 / bf16 when typed, else fp32.

        Quantized graphs for TensorRT carry FP16 between the quantized layers (LayerNorm in FP32): a strongly
        typed engine runs each layer in its graph's type, so FP32 there would run LayerNorm's neighbours, GELU,
        Softmax and the residual Adds in FP32 (Model Optimizer's ``high_precision_dtype`` default is fp16). For
        INT4 weight-only that is W4A16, TensorRT's and Model Optimizer's scheme. ONNX Runtime's CPU provider keeps
        FP32 (for int4w it runs faster: benchmarks/results/quantization.md, "INT4 activations")."""
        if self.precision in ("fp16", "bf16"):
            return self.precision
        if self.precision in ("int4w", "int8", "fp8") and self.backend == "trt":
            return "fp16"
        return "fp32"

    @property
    def batch_profile(self) -> tuple[int, int, int] | None:
        """(min, opt, max) batch of a dynamic-batch engine's optimisation profile; None for a static batch."""
        if not self.dynamic_batch:
            return None
        return (1 if self.min_batch is None else self.min_batch, self.batch,
                max(self.batch, DEFAULT_MAX_BATCH) if self.max_batch is None else self.max_batch)

    def validate(self) -> "TargetConfig":
        if self.batch < 1:
            raise OptionError(f"--batch must be >= 1, got {self.batch}")
        if (self.min_batch is not None or self.max_batch is not None) and not self.dynamic_batch:
            raise OptionError("--min-batch / --max-batch set the dynamic batch range: add --dynamic-batch")
        if (self.min_batch is not None or self.max_batch is not None) and self.backend != "trt":
            raise OptionError(f"--min-batch / --max-batch set the TensorRT optimisation profile; --backend "
                              f"{self.backend} runs any batch of a --dynamic-batch graph: drop them")
        profile = self.batch_profile
        if profile is not None and not 1 <= profile[0] <= profile[1] <= profile[2]:
            raise OptionError(f"the batch profile needs 1 <= --min-batch <= --batch <= --max-batch, got "
                              f"{profile[0]} / {profile[1]} / {profile[2]}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise OptionError(f"--opset {self.opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET}")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads must be >= 1, got {self.threads}")
        if self.backend != "torch" and self.torch_compile != "off":
            raise OptionError("--torch-compile needs --backend torch")
        if self.cuda_graph and not (self.backend == "trt" or (self.device or "cpu").startswith("cuda")):
            raise OptionError("--cuda-graph needs a GPU: --backend trt, or --backend torch --device cuda")
        from vitrt.compiler.backends.base import FIXED_DEVICE

        fixed = FIXED_DEVICE.get(self.backend)
        if self.device is not None and fixed is not None and self.device.split(":")[0] != fixed:
            raise OptionError(f"--backend {self.backend} runs on {'the CPU' if fixed == 'cpu' else 'the current GPU'}; "
                              f"--device {self.device} needs --backend torch")
        if self.no_build and self.backend != "trt":
            raise OptionError("--no-build is for --backend trt (the engine is built later on a GPU machine); the "
                              f"{self.backend} artifact builds here: drop --no-build")
        check_precision_runs(self.precision, self.backend)
        return self

    def build_options(self, sparse_weights: bool = False):
        """The backend's BuildOptions for this target."""
        from vitrt.compiler.backends.base import BuildOptions

        return BuildOptions(threads=self.threads, timing_cache=self.timing_cache, sparse_weights=sparse_weights,
                            batch_profile=self.batch_profile, cuda_graph=self.cuda_graph, device=self.device or "cpu",
                            torch_compile=self.torch_compile)
