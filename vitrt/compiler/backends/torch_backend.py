"""PyTorch backend: the compiled ONNX graph imported back into torch, run eagerly or through torch.compile, on
CPU or CUDA — the peer a user would otherwise pick, and vitrt's GPU path where TensorRT is not installed.

Build: the compiled graph is imported once on the target device (:mod:`torch_import`: every op supported,
kernels chosen — dense / 2:4 sparse / int8 GEMMs, fused attention) and written as ``model.torch.onnx``: the graph
itself with the build record in ``metadata_props['vitrt.torch']`` (device, torch.compile mode, CUDA graphs,
torch version, the kernel chosen for every weight MatMul and why a faster one was not). Nothing is pickled: a
later ``vitrt bench OUT`` imports the same graph again with the recorded settings.

Run: inputs go to the device once per timed call (:meth:`TorchRunner.timed_call` excludes the copy); on CUDA
the timing loop reads CUDA events (clock ``cuda``: GPU time between two events on the stream), with optional
CUDA-graph replay (``cuda_graph``: captured once per input shape; with torch.compile, mode
``reduce-overhead``). Per-layer times come from running the fx graph node by node, each node timed (on CUDA
after a synchronize), and are reported under the ONNX node names the canonical groups come from.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx

from vitrt.compiler.backends.base import Backend, BuildOptions, Runner
from vitrt.compiler.errors import BackendUnavailableError, VitrtError
from vitrt.compiler.onnx_file import read_onnx

RECORD_KEY = "vitrt.torch"
COMPILE_MODES = ("off", "default", "max-autotune")


def torch_device(name: str):
    """``cpu``, ``cuda``, ``cuda:N`` or ``cuda:local`` (this process's GPU under torchrun: ``cuda:$LOCAL_RANK``) as a
    torch.device; refused with one line when it is not there."""
    import os

    import torch

    if name == "cuda:local":
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VitrtError(f"unknown device '{name}': use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise VitrtError(f"the torch backend runs on cpu or cuda, not '{name}'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device '{name}' needs CUDA, but torch.cuda.is_available() is False on "
                                          "this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VitrtError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def device_label(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    from vitrt.compiler.backends.ort import cpu_name

    return f"{cpu_name()} (torch {torch.__version__})"


def check_options(options: BuildOptions) -> None:
    if options.torch_compile not in COMPILE_MODES:
        raise VitrtError(f"unknown torch.compile mode '{options.torch_compile}': choose one of {', '.join(COMPILE_MODES)}")
    if options.cuda_graph and not options.device.startswith("cuda"):
        raise VitrtError("--cuda-graph needs --device cuda")


class TorchBackend(Backend):
    name = "torch"
    artifact_name = "model.torch.onnx"

    def __init__(self, device: str = "cpu"):
        torch_device(device)  # fails fast: an unknown device or no CUDA is one line, before any work
        self.device = device

    def device_name(self) -> str:
        return device_label(torch_device(self.device))

    def build(self, onnx_path: Path, out_dir: Path, options: BuildOptions, log=None) -> Path:
        from vitrt.compiler.backends.torch_import import import_onnx

        check_options(options)
        device = torch_device(options.device)
        model = read_onnx(onnx_path, external_data=True)
        imported = import_onnx(model, device, sparse_weights=options.sparse_weights)
        record = {"device": options.device, "device_name": device_label(device), "torch_compile": options.torch_compile,
                  "cuda_graph": options.cuda_graph, "sparse_weights": options.sparse_weights,
                  "torch": _torch_version(), "kernels": imported.kernels,
                  "fused_attention": imported.fused_attention, "source": "the compiled graph (model.onnx), "
                  "imported back node for node"}
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            RECORD_KEY: json.dumps(record)})
        artifact = Path(out_dir) / self.artifact_name
        onnx.save(model, str(artifact))
        return artifact

    def load(self, artifact: Path, options: BuildOptions) -> "TorchRunner":
        model = read_onnx(artifact, external_data=True)
        props = {p.key: p.value for p in model.metadata_props}
        if RECORD_KEY not in props:
            raise VitrtError(f"'{artifact}' has no torch build record: it was not built by vitrt's torch backend")
        record = json.loads(props[RECORD_KEY])
        return TorchRunner(model, record, options)


def _torch_version() -> str:
    import torch

    return torch.__version__


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model: onnx.ModelProto, record: dict, options: BuildOptions):
        import torch

        from vitrt.compiler.backends.torch_import import import_onnx

        self.torch, self.record = torch, record
        if options.threads:  # process-wide in torch (ONNX Runtime's is per session)
            torch.set_num_threads(options.threads)
        self.dev = torch_device(record["device"])
        self.device = device_label(self.dev)
        self.clock = "cuda" if self.dev.type == "cuda" else "wall"
        self.timer = ("CUDA events around the call on the current stream (GPU time; the input copy excluded)"
                      if self.dev.type == "cuda" else "wall clock")
        imported = import_onnx(model, self.dev, sparse_weights=record["sparse_weights"])
        self.graph_module, self.kernels = imported.module.eval(), imported.kernels
        self._batch = imported.batch
        self.forward = self.graph_module
        mode = record["torch_compile"]
        if mode != "off":
            if record["cuda_graph"] and mode == "default":
                mode = "reduce-overhead"  # torch.compile's CUDA-graph mode
            self.forward = torch.compile(self.graph_module, mode=mode, dynamic=self._batch is None)
        self._graphs: dict[tuple, tuple] = {}

    @property
    def batch(self) -> int | None:
        return self._batch

    def _to_device(self, images: np.ndarray):
        """fp32 images; fp16 / bf16 activations (what a typed subgraph, a latency-table point, takes) as they are."""
        if images.dtype.name in ("float16", "bfloat16"):
            from vitrt.compiler.backends.torch_import import from_numpy

            return from_numpy(np.ascontiguousarray(images)).to(self.dev)
        return self.torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.dev)

    def run(self, x):
        """The compiled model on a device tensor (replaying a captured CUDA graph where configured)."""
        with self.torch.inference_mode():
            if self.record["cuda_graph"] and self.record["torch_compile"] == "off":
                return self._replay(x)
            return self.forward(x)

    def _replay(self, x):
        torch = self.torch
        key = tuple(x.shape)
        if key not in self._graphs:  # capture: warm up on a side stream, then record (torch.cuda.graph docs)
            static_in = x.clone()
            stream = torch.cuda.Stream(self.dev)
            stream.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.forward(static_in)
            torch.cuda.current_stream(self.dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def infer(self, images: np.ndarray) -> np.ndarray:
        out = self.run(self._to_device(images))
        return out.float().cpu().numpy()

    def timed_call(self, images: np.ndarray):
        x = self._to_device(images)  # the host-to-device copy stays outside the timed call
        return lambda: self.run(x)

    def latency_samples(self, images: np.ndarray, timing, progress=None) -> list[float]:
        """The shared timing loop; on CUDA with the runner's GPU current (the cuda clock's events go there)."""
        if self.dev.type != "cuda":
            return super().latency_samples(images, timing, progress)
        with self.torch.cuda.device(self.dev):
            return super().latency_samples(images, timing, progress)

    def synchronize(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def layer_times_ms(self, images: np.ndarray, iterations: int) -> dict[str, float]:
        """Every fx node timed as the eager graph runs it (synchronizing after each node on CUDA), by ONNX name."""
        torch = self.torch
        sync = self.synchronize
        samples: dict[str, list[float]] = {}

        class Timed(torch.fx.Interpreter):
            def run_node(self, node):
                sync()
                start = time.perf_counter()
                result = super().run_node(node)
                sync()
                name = node.meta.get("onnx_name")
                if name is not None:
                    totals[name] = totals.get(name, 0.0) + (time.perf_counter() - start) * 1000.0
                return result

        x = self._to_device(images)
        with torch.inference_mode():
            self.graph_module(x)  # warm-up
            for _ in range(iterations):
                totals: dict[str, float] = {}
                Timed(self.graph_module).run(x)
                for name, ms in totals.items():
                    samples.setdefault(name, []).append(ms)
        return {name: float(np.median(ms)) for name, ms in samples.items()}
