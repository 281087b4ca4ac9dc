"""`vitrt export triton`: every config.pbtxt parses into tritonclient's ModelConfig and matches the engine's I/O
exactly (read back independently: ONNX Runtime's session for ort artifacts, TensorRT's engine for trt plans);
batching follows the engine; bad options are one line, exit 2, and write nothing. No server is started here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import tiny_vit

pytest.importorskip("tritonclient.grpc")

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """Tiny ViT compiled for ort with a static batch of 2 and with a dynamic batch."""
    import vitrt

    root = tmp_path_factory.mktemp("export")
    model = tiny_vit()
    vitrt.compile(model, root / "static", name="tiny vit", batch=2, quiet=True)
    vitrt.compile(model, root / "dynamic", name="tiny vit", dynamic_batch=True, quiet=True)
    vitrt.compile(model, root / "single", name="tiny vit", quiet=True)  # the compile default: static batch 1
    return root


def export(out, repo, *args):
    from vitrt.cli import main

    return main(["export", "triton", str(out), "-o", str(repo), *args])


def read_config(path):
    from vitrt.serving.repository import parse_config

    return parse_config(path.read_text())


def ort_io(artifact):
    """(name, data type, shape) of the session's inputs and outputs, as ONNX Runtime itself reports them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    shape = lambda s: [d if isinstance(d, int) else -1 for d in s]  # noqa: E731
    return ([(t.name, ORT_TYPES[t.type], shape(t.shape)) for t in session.get_inputs()],
            [(t.name, ORT_TYPES[t.type], shape(t.shape)) for t in session.get_outputs()])


def config_io(config, batched: bool):
    from tritonclient.grpc import model_config_pb2 as mc

    full = (lambda t: [-1, *t.dims]) if batched else (lambda t: list(t.dims))
    return ([(t.name, mc.DataType.Name(t.data_type), full(t)) for t in config.input],
            [(t.name, mc.DataType.Name(t.data_type), full(t)) for t in config.output])


def check_triton_rules(config):
    """What Triton checks when it loads a configuration (model_config_utils), restated for the fields we write."""
    assert config.max_batch_size >= 0
    if config.HasField("dynamic_batching"):
        assert config.max_batch_size > 0, "dynamic batching needs max_batch_size > 0"
        assert all(0 < b <= config.max_batch_size for b in config.dynamic_batching.preferred_batch_size)
    for tensor in list(config.input) + list(config.output):
        assert tensor.dims and all(d > 0 or d == -1 for d in tensor.dims)
    for warmup in config.model_warmup:
        assert warmup.batch_size >= 1 and set(warmup.inputs) == {t.name for t in config.input}
        for tensor in config.input:
            assert list(warmup.inputs[tensor.name].dims) == list(tensor.dims)
            assert warmup.inputs[tensor.name].data_type == tensor.data_type


def test_ort_static_batch(outs, tmp_path):
    assert export(outs / "static", tmp_path / "repo", "--name", "tiny") == 0
    entry = tmp_path / "repo" / "tiny"
    config = read_config(entry / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.name == "tiny"
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")  # Triton cannot batch it
    assert config_io(config, batched=False) == ort_io(entry / "1" / "model.onnx")
    assert [tuple(t.dims) for t in config.input] == [(2, 3, 32, 32)]
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    assert (entry / "1" / "model.onnx").read_bytes() == (outs / "static" / "model.ort.onnx").read_bytes()
    assert (entry / "labels.txt").read_text().splitlines() == [f"class_{i}" for i in range(10)]
    # a static batch of 2 answers [2, 10] per request: Triton's classification would flatten class indices across
    # the images, so the label file is written but not attached
    assert config.output[0].label_filename == ""
    check_triton_rules(config)


def test_ort_dynamic_batch_and_options(outs, tmp_path):
    assert export(outs / "dynamic", tmp_path / "repo", "--max-batch", "8", "--preferred-batch", "4,8",
                  "--queue-delay-us", "500", "--instances", "2") == 0
    entry = tmp_path / "repo" / "tiny_vit"  # the manifest's name, made valid for Triton
    config = read_config(entry / "config.pbtxt")
    assert config.max_batch_size == 8
    assert config_io(config, batched=True) == ort_io(entry / "1" / "model.onnx")
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2
    provenance = json.loads((entry / "vitrt.json").read_text())
    assert provenance["io_source"] == "model.ort.onnx" and provenance["batching"]["max_batch_size"] == 8
    check_triton_rules(config)


def test_ort_dynamic_defaults(outs, tmp_path):
    assert export(outs / "dynamic", tmp_path / "repo") == 0
    config = read_config(tmp_path / "repo" / "tiny_vit" / "config.pbtxt")
    assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(config.model_warmup[0].inputs["images"].dims) == [3, 32, 32]
    assert config.output[0].label_filename == "labels.txt"  # one image's output per request: labels attach


def test_a_static_batch_of_one_attaches_its_labels(outs, tmp_path):
    """Batch 1, static (the compile default): a request's output holds one image's classes, so Triton's
    classification can read the label file along it."""
    assert export(outs / "single", tmp_path / "repo") == 0
    config = read_config(tmp_path / "repo" / "tiny_vit" / "config.pbtxt")
    assert config.max_batch_size == 0 and config.output[0].label_filename == "labels.txt"
    assert (tmp_path / "repo" / "tiny_vit" / "labels.txt").read_text().splitlines()[0] == "class_0"


TRT_PROFILE = [1, 8, 64]  # the (min, opt, max) batch a dynamic plan records in its manifest


def trt_out(source, target):
    """An OUT as `compile --backend trt` lays it out: the same model.onnx, model.plan, a trt manifest.

    TensorRT is not installed here, so model.plan holds placeholder bytes that the exporter must only copy: the
    I/O comes from model.onnx, the network TensorRT's ONNX parser builds the plan from (test_export_real_trt_plan
    reads a real engine where TensorRT and a GPU are available)."""
    target.mkdir()
    shutil.copy(source / "model.onnx", target / "model.onnx")
    (target / "model.plan").write_bytes(b"placeholder: not a TensorRT engine")
    manifest = json.loads((source / "manifest.json").read_text())
    profile = TRT_PROFILE if manifest["input_shape"][0] == "batch" else None  # --dynamic-batch --max-batch 64
    (target / "manifest.json").write_text(json.dumps({**manifest, "backend": "trt", "artifact": "model.plan",
                                                      "batch_profile": profile}))
    return target


def onnx_io_via_ort(path):
    return ort_io(path)


def real_tensorrt():
    """TensorRT's bindings, or None (type stubs leave an importable namespace package without them)."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt if hasattr(tensorrt, "Runtime") else None


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_trt_artifact_without_tensorrt(outs, tmp_path, kind):
    if real_tensorrt() is not None:
        pytest.skip("TensorRT is installed: test_export_real_trt_plan covers real plans")
    out = trt_out(outs / kind, tmp_path / f"trt_{kind}")
    assert export(out, tmp_path / "repo", "--name", "m") == 0
    entry = tmp_path / "repo" / "m"
    config = read_config(entry / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert (entry / "1" / "model.plan").read_bytes() == (out / "model.plan").read_bytes()
    assert config_io(config, batched=kind == "dynamic") == onnx_io_via_ort(out / "model.onnx")
    assert config.max_batch_size == (TRT_PROFILE[2] if kind == "dynamic" else 0)
    assert "model.onnx" in json.loads((entry / "vitrt.json").read_text())["io_source"]
    check_triton_rules(config)
    if kind == "dynamic":
        shutil.rmtree(tmp_path / "repo")
        assert export(out, tmp_path / "repo", "--max-batch", str(TRT_PROFILE[2] + 1)) == 2
        assert not (tmp_path / "repo").exists()


def test_an_engine_built_for_a_minimum_batch_is_refused_for_serving(outs, tmp_path, capsys):
    """--min-batch 4 (profile 4..64): Triton has no minimum batch (warm-up and lone requests are batch 1), so export
    and serve refuse it in one line and write nothing; the bounds come from the recorded profile."""
    from vitrt.compiler.errors import VitrtError
    from vitrt.serving.artifact import open_artifact
    from vitrt.serving.repository import BatchingOptions, batching_for

    if real_tensorrt() is not None:
        pytest.skip("TensorRT is installed: the placeholder plan would be read as an engine")
    out = trt_out(outs / "dynamic", tmp_path / "trt_min4")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "batch_profile": [4, 8, 64]}))
    artifact = open_artifact(out)
    assert (artifact.batch_min, artifact.batch_limit) == (4, 64)
    assert export(out, tmp_path / "repo") == 2
    err = capsys.readouterr().err
    assert "at least 4 (--min-batch 4)" in err and "--min-batch 1" in err and err.count("\n") == 1
    assert not (tmp_path / "repo").exists()
    with pytest.raises(VitrtError, match="built for batches of at least 4"):
        batching_for(artifact, BatchingOptions())
    assert open_artifact(trt_out(outs / "dynamic", tmp_path / "trt_min1")).batch_min == 1


@pytest.mark.gpu
def test_export_real_trt_plan(tmp_path):
    """A real TensorRT engine: the config's I/O equals the engine's tensors and its profile's max batch."""
    import torch

    trt = real_tensorrt()
    if trt is None or not torch.cuda.is_available():
        pytest.skip("needs TensorRT's Python bindings and a CUDA device")
    import vitrt

    vitrt.compile(tiny_vit(), tmp_path / "out", name="tiny", backend="trt", dynamic_batch=True, quiet=True)
    assert export(tmp_path / "out", tmp_path / "repo") == 0
    config = read_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        (tmp_path / "out" / "model.plan").read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    assert [t.name for t in config.input] == inputs
    assert [list(t.dims) for t in config.input] == [list(engine.get_tensor_shape(n))[1:] for n in inputs]
    assert config.max_batch_size == engine.get_tensor_profile_shape(inputs[0], 0)[2][0]
    assert np.dtype(trt.nptype(engine.get_tensor_dtype(inputs[0]))) == np.float32


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "4"], "--max-batch needs a dynamic-batch engine"),
    (["--queue-delay-us", "10"], "--queue-delay-us needs a dynamic-batch engine"),
])
def test_batching_options_on_a_static_engine_are_refused(outs, tmp_path, capsys, args, message):
    assert export(outs / "static", tmp_path / "repo", *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "--dynamic-batch" in lines[0]
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--preferred-batch", "8,4"], "ascending"),
    (["--preferred-batch", "4,64"], "must lie in 1..32"),
    (["--preferred-batch", "32,33"], "must lie in 1..32"),  # the edge: --max-batch itself is allowed, one more not
    (["--preferred-batch", "a,b"], "comma-separated integers"),
    (["--queue-delay-us", "-1"], "--queue-delay-us must be >= 0"),
    (["--instances", "0"], "--instances must be >= 1"),
    (["--name", "my model/v2"], "not valid for Triton"),
    (["--name", "."], "not valid for Triton"),  # '.' would be the repository itself (--force would wipe it)
    (["--name", ".."], "not valid for Triton"),
    (["--name", "digits\n"], "not valid for Triton"),  # a directory name ending in a newline
    (["--name", ""], "not valid for Triton"),  # not the default name in silence
])
def test_bad_options_are_one_line_and_write_nothing(outs, tmp_path, capsys, args, message):
    assert export(outs / "dynamic", tmp_path / "repo", *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "repo").exists()


def test_torch_backend_out_is_refused_naming_vitrt_serve(tmp_path, capsys):
    """Triton has no native backend for vitrt's torch runner: one line naming vitrt serve, exit 2, nothing written."""
    import vitrt

    vitrt.compile(tiny_vit(), tmp_path / "torch_out", backend="torch", dynamic_batch=True, quiet=True)
    code = export(tmp_path / "torch_out", tmp_path / "repo")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--backend torch" in err and f"vitrt serve {tmp_path / 'torch_out'}" in err and "--backend ort or trt" in err
    assert not (tmp_path / "repo").exists()


def test_not_a_vitrt_output_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "manifest.json").write_text(json.dumps({"model": "x"}))
    for out, message in ((tmp_path / "missing", "not a directory"), (tmp_path / "empty", "no manifest.json"),
                         (tmp_path / "wrong", "lacks 'backend'")):
        assert export(out, tmp_path / "repo") == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and message in line and "vitrt compile" in line
    assert not (tmp_path / "repo").exists()


def test_existing_entry_needs_force_and_other_models_are_kept(outs, tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "other_model").mkdir(parents=True)
    assert export(outs / "dynamic", repo, "--name", "m") == 0
    before = (repo / "m" / "config.pbtxt").read_text()
    assert export(outs / "dynamic", repo, "--name", "m", "--max-batch", "4") == 2
    assert "--force" in capsys.readouterr().err
    assert (repo / "m" / "config.pbtxt").read_text() == before
    assert export(outs / "dynamic", repo, "--name", "m", "--max-batch", "4", "--force") == 0
    assert read_config(repo / "m" / "config.pbtxt").max_batch_size == 4
    assert (repo / "other_model").is_dir()


def test_digits_labels():
    from vitrt.serving.artifact import class_labels

    assert class_labels("digits_vit", 10) == [str(i) for i in range(10)]
    assert class_labels("deit_small_patch16_224", 1000)[0].startswith("tench")


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "grpc://192.168.1.5:8001", "8.8.8.8:8000",
                                 "http://example.invalid:8000"])
def test_clients_refuse_anything_but_loopback(url, capsys):
    from vitrt.cli import main

    assert main(["loadtest", url, "--model", "m", "--duration", "1"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and ("loopback" in line or "this machine" in line)


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "0"], "--concurrency"), (["--concurrency", "1,x"], "--concurrency"),
    (["--duration", "0"], "--duration"), (["--duration", "99999"], "--duration"),
    (["--max-requests", "0"], "--max-requests"), ([], "--model"),
    (["--timeout", "nan"], "--timeout"), (["--timeout", "inf"], "--timeout"), (["--versus-seconds", "-1"],
                                                                                "--versus-seconds"),
    (["--json", "/nonexistent/dir/x.json"], "its directory '/nonexistent/dir' does not exist"),
    (["--versus-batch", "0"], "--versus-batch must be >= 1"), (["--concurrency", "1,257"], "--concurrency"),
    (["--versus-batch", "4"], "--versus-batch is the batch of the --versus runs"),
])
def test_loadtest_bounds_are_checked(args, message, capsys):
    from vitrt.cli import main

    model = [] if args == [] else ["--model", "m"]
    assert main(["loadtest", "http://127.0.0.1:9", *model, *args]) == 2
    assert message in capsys.readouterr().err


def test_a_load_test_that_mostly_failed_is_not_a_measurement():
    """Figures from a level where most requests failed do not measure the model: the first such level is named
    (``vitrt loadtest`` prints it and exits 1; against a healthy server it exits 0, tests/test_serving.py)."""
    from vitrt.serving.loadtest import failure_line

    healthy = {"concurrency": 1, "requests": 10, "ok": 9, "errors": 1, "lost": 0, "first_error": "x"}
    refused = {"concurrency": 4, "requests": 500, "ok": 20, "errors": 470, "lost": 10, "first_error": "refused"}
    assert failure_line({"levels": [healthy, refused]}) == ("at concurrency 4 480 of 500 requests failed (first: "
                                                           "refused); the figures above do not measure the model")
    assert failure_line({"levels": [healthy]}) is None
    half = {**healthy, "ok": 5, "errors": 3, "lost": 2}  # as many failed as answered: still a measurement
    assert failure_line({"levels": [half]}) is None
    assert failure_line({"levels": [{**half, "lost": 3}]}) is not None


def test_metrics_are_read_beside_default_ports_only():
    """Port 8002 is Triton's metrics port only beside its default http/grpc ports; elsewhere no guess is made
    (another server's counters would be read as this one's)."""
    from vitrt.serving.loadtest import LoadtestConfig, metrics_url_for

    assert metrics_url_for(LoadtestConfig("http://127.0.0.1:8000", "m")) == "http://127.0.0.1:8002/metrics"
    assert metrics_url_for(LoadtestConfig("grpc://127.0.0.1:8001", "m")) == "http://127.0.0.1:8002/metrics"
    assert metrics_url_for(LoadtestConfig("http://127.0.0.1:9100", "m")) is None
    assert metrics_url_for(LoadtestConfig("http://127.0.0.1:9100", "m", metrics_url="http://127.0.0.1:9102/metrics")) \
        == "http://127.0.0.1:9102/metrics"


def test_a_level_counts_lost_requests_apart_from_errors_and_reports_images_per_second():
    """lost = sent - answered - answered with an error; throughput counts images (a request carries a batch), and the
    percentiles are numpy's over the latencies."""
    from vitrt.serving.loadtest import LevelResult

    level = LevelResult(concurrency=2, seconds=2.0, sent=10, ok=6, errors=3, images=24,
                        latencies_ms=[float(v) for v in range(1, 101)])
    summary = level.summary(batch=4)
    assert (summary["requests"], summary["ok"], summary["errors"], summary["lost"]) == (10, 6, 3, 1)
    assert summary["images_per_s"] == 12.0 and summary["request_batch"] == 4
    assert (summary["p50_ms"], summary["p90_ms"], summary["p99_ms"]) == (50.5, 90.1, 99.01)


def test_concurrency_levels_go_up_to_256():
    from vitrt.serving.loadtest import MAX_CONCURRENCY, parse_levels

    assert parse_levels("256") == [MAX_CONCURRENCY] and parse_levels("1,4") == [1, 4]


def test_each_level_is_set_against_the_mean_of_the_in_process_windows_around_it():
    """Windows are timed before every level and after the last: level i is divided by the mean of windows i, i + 1."""
    from vitrt.serving.loadtest import versus_ratios

    assert versus_ratios([20.0], [10.0, 30.0]) == [1.0]
    assert versus_ratios([20.0, 60.0], [10.0, 30.0, 90.0]) == [1.0, 1.0]
    assert versus_ratios([10.0], [10.0, 30.0]) == [0.5]


def test_the_request_batch_follows_the_served_model():
    """A static-shape engine takes its own batch only; a dynamic one any batch up to its max_batch_size (default 1)."""
    from types import SimpleNamespace

    from vitrt.compiler.errors import VitrtError
    from vitrt.serving.loadtest import LoadtestConfig, _request_batch

    static = SimpleNamespace(request_batch=8, max_batch_size=8)
    dynamic = SimpleNamespace(request_batch=None, max_batch_size=4)
    for batch in (None, 8):
        assert _request_batch(LoadtestConfig("http://127.0.0.1:8000", "m", batch=batch), static) == 8
    with pytest.raises(VitrtError, match="takes requests of exactly batch 8 .* pass --batch 8"):
        _request_batch(LoadtestConfig("http://127.0.0.1:8000", "m", batch=4), static)
    assert [_request_batch(LoadtestConfig("http://127.0.0.1:8000", "m", batch=b), dynamic) for b in (None, 4)] == [1, 4]
    with pytest.raises(VitrtError, match="--batch 5 exceeds the model's max_batch_size 4"):
        _request_batch(LoadtestConfig("http://127.0.0.1:8000", "m", batch=5), dynamic)


def test_versus_runs_at_the_batch_the_out_was_compiled_for(monkeypatch):
    """--versus OUT with a static batch needs --versus-batch equal to it; a dynamic OUT runs at any batch."""
    from types import SimpleNamespace

    import vitrt.compiler.backends
    import vitrt.serving.artifact
    from vitrt.compiler.errors import VitrtError
    from vitrt.serving.loadtest import LoadtestConfig, _versus

    artifact = SimpleNamespace(static_batch=8, backend="ort", path="OUT/model.ort.onnx")
    monkeypatch.setattr(vitrt.serving.artifact, "open_artifact", lambda out: artifact)
    shapes = []
    runner = SimpleNamespace(timed_call=lambda images: shapes.append(images.shape) or (lambda: None),
                             synchronize=lambda: None)
    monkeypatch.setattr(vitrt.compiler.backends, "get_backend", lambda name: SimpleNamespace(load=lambda *_: runner))
    images = np.zeros((3, 3, 8, 8), np.float32)
    config = LoadtestConfig("http://127.0.0.1:8000", "m", versus="OUT", versus_batch=4, duration=2.0)
    with pytest.raises(VitrtError, match="compiled for batch 8; pass --versus-batch 8"):
        _versus(config, images)
    for artifact.static_batch in (None, 4):
        versus = _versus(config, images)
        assert versus["seconds"] == 2.0 and versus["backend"] == "ort" and shapes[-1] == (4, 3, 8, 8)


def test_server_counts_are_the_named_models_only(monkeypatch):
    """Triton's metrics list every model it serves: only the lines of model="m" are summed (over its versions)."""
    import io
    import urllib.request

    from vitrt.serving.loadtest import read_metrics

    text = "\n".join([
        "# HELP nv_inference_request_success Number of successful inference requests",
        'nv_inference_request_success{model="m",version="1"} 10',
        'nv_inference_request_success{model="m",version="2"} 5',
        'nv_inference_request_success{model="m2",version="1"} 100',
        'nv_inference_count{model="other",version="1"} 1000',
        'nv_inference_count{model="m",version="1"} 30',
        'nv_inference_exec_count{model="m",version="1"} 6',
        'nv_gpu_utilization{gpu_uuid="GPU-0"} 0.5'])
    urls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: urls.append(url) or io.BytesIO(text.encode()))
    assert read_metrics("http://127.0.0.1:8002/metrics", "m") == {
        "nv_inference_request_success": 15.0, "nv_inference_count": 30.0, "nv_inference_exec_count": 6.0}
    assert read_metrics(None, "m") is None and urls == ["http://127.0.0.1:8002/metrics"]
