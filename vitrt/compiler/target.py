"""What the engine is built for: backend and device, batch (static or dynamic), precision, opset, threads.

Every stage plans for the target (the pruning search's latency table must match its backend and batch, the
quantization stage reads its precision) and the backend builds for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import option

BACKENDS = ("ort", "trt", "torch")
TORCH_COMPILE_MODES = ("off", "default", "max-autotune")
PRECISIONS = ("fp32", "fp16", "int8", "fp8", "int4w")
MIN_OPSET, MAX_OPSET = 17, 21


@dataclass(frozen=True)
class TargetConfig:
    backend: str = option("ort", "inference backend: ort (ONNX Runtime CPU, default), trt (TensorRT) or torch "
                          "(PyTorch on --device, the compiled graph imported back)", choices=BACKENDS)
    device: str | None = option(None, "device of --backend torch: cpu (default), cuda, cuda:N or cuda:local "
                                "(torchrun's LOCAL_RANK); ort runs on the CPU, trt on the current GPU", metavar="DEVICE")
    torch_compile: str = option("off", "--backend torch: run through torch.compile (default or max-autotune mode)",
                                choices=TORCH_COMPILE_MODES)
    cuda_graphs: bool = option(False, "--backend torch --device cuda: replay captured CUDA graphs (with "
                               "--torch-compile: torch.compile's reduce-overhead mode)")
    batch: int = option(1, "batch size fixed at compile time (static shapes)", type=int, metavar="N")
    dynamic_batch: bool = option(False, "make the batch dimension dynamic instead of fixed")
    precision: str = option("fp32", "engine precision, carried by the graph: fp32, fp16 (typed, LayerNorm/Softmax "
                            "in fp32), int8 / fp8 (Q/DQ), int4w (INT4 weight-only, block-wise)", choices=PRECISIONS)
    opset: int = option(17, "ONNX opset of the canonical graph", type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads (default: ONNX Runtime's choice)", type=int,
                                 metavar="N")
    timing_cache: Path | None = option(None, "TensorRT timing cache file (read and updated)", type=Path,
                                       metavar="PATH")

    @property
    def static_batch(self) -> int | None:
        """The batch baked into the graph, or None for a dynamic batch dimension."""
        return None if self.dynamic_batch else self.batch

    def validate(self) -> "TargetConfig":
        if self.batch < 1:
            raise VitrtError(f"--batch must be >= 1, got {self.batch}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise VitrtError(f"--opset {self.opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET}")
        if self.threads is not None and self.threads < 1:
            raise VitrtError(f"--threads must be >= 1, got {self.threads}")
        if self.backend != "torch" and (self.torch_compile != "off" or self.cuda_graphs):
            raise VitrtError("--torch-compile and --cuda-graphs need --backend torch")
        if self.cuda_graphs and not (self.device or "cpu").startswith("cuda"):
            raise VitrtError("--cuda-graphs needs --device cuda")
        if self.device is not None and self.backend == "ort" and self.device != "cpu":
            raise VitrtError(f"--backend ort runs on the CPU; --device {self.device} needs --backend torch")
        return self

    @property
    def bench_clock(self) -> str:
        """The clock ``--bench`` measures on: CUDA events for the torch backend on a GPU, else the wall clock."""
        return "cuda" if self.backend == "torch" and (self.device or "cpu").startswith("cuda") else "wall"

    def build_options(self, sparse_weights: bool = False):
        """The backend's BuildOptions for this target."""
        from vitrt.compiler.backends.base import BuildOptions

        return BuildOptions(threads=self.threads, timing_cache=self.timing_cache, sparse_weights=sparse_weights,
                            device=self.device or "cpu", torch_compile=self.torch_compile,
                            cuda_graphs=self.cuda_graphs)
