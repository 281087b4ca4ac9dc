"""Tests from a mutation audit of vitrt/serving and vitrt/cli/serving.py: each pins a behaviour that a mutation of
the serving code changed without any other test noticing. No Triton server is started here (tests/test_serving*.py
run real ones): these pin the configuration, the checks and the arithmetic around it; the load generator runs on a
virtual clock (no wall-clock assertions)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import tiny_vit
from serving_support import free_ports

pytest.importorskip("tritonclient.grpc")

from vitrt.compiler.errors import VitrtError  # noqa: E402
from vitrt.serving.artifact import CompiledArtifact, TensorIO  # noqa: E402
from vitrt.serving.repository import Batching, BatchingOptions  # noqa: E402

TWO_OUTPUTS = (TensorIO("logits", "float32", (-1, 10)), TensorIO("feats", "float32", (-1, 16)))


def artifact(static_batch=None, inputs=None, outputs=None, limit=None, backend="ort") -> CompiledArtifact:
    """A CompiledArtifact as open_artifact returns it, without compiling anything."""
    batch = static_batch or -1
    inputs = inputs or (TensorIO("images", "float32", (batch, 3, 32, 32)),)
    outputs = outputs or (TensorIO("logits", "float32", (batch, 10)),)
    return CompiledArtifact(Path("OUT"), "tiny", backend, Path("OUT/model.ort.onnx"), tuple(inputs), tuple(outputs),
                            static_batch, limit, "model.ort.onnx")


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """A tiny ViT compiled for ort with a dynamic batch and with a static batch of 2."""
    import vitrt

    root = tmp_path_factory.mktemp("mut")
    vitrt.compile(tiny_vit(), root / "dynamic", name="tiny", dynamic_batch=True, quiet=True)
    vitrt.compile(tiny_vit(), root / "static", name="tiny", batch=2, quiet=True)
    return root


# --- repository.py: batching and the ModelConfig ---------------------------------------------------------------
def test_static_engine_refuses_preferred_batch():
    """--preferred-batch on a static-batch engine is refused like --max-batch (Triton cannot batch it)."""
    from vitrt.serving.repository import batching_for

    with pytest.raises(VitrtError, match="--preferred-batch needs a dynamic-batch engine"):
        batching_for(artifact(static_batch=2), BatchingOptions(preferred_batch="2"))


def test_static_engine_keeps_its_instance_count():
    """--instances applies to a static-batch engine too: the config's instance group has that count."""
    from vitrt.serving.repository import batching_for, model_config

    batching = batching_for(artifact(static_batch=2), BatchingOptions(instances=3))
    assert batching == Batching(0, (), 0, 3)
    assert model_config(artifact(static_batch=2), "m", batching).instance_group[0].count == 3


@pytest.mark.parametrize("text", ["0,4", "4,4"])
def test_preferred_batch_zero_or_repeated_is_refused(text):
    """Preferred sizes are 1..max, ascending, without repeats (Triton refuses a preferred size of 0)."""
    from vitrt.serving.repository import batching_for

    with pytest.raises(VitrtError, match="--preferred-batch"):
        batching_for(artifact(), BatchingOptions(preferred_batch=text))


def test_queue_delay_zero_is_allowed():
    """--queue-delay-us 0 (Triton's own default: no waiting) is valid: 'must be >= 0'."""
    from vitrt.serving.repository import batching_for

    assert batching_for(artifact(), BatchingOptions(queue_delay_us=0)).queue_delay_us == 0


def test_provenance_batching_records_every_field():
    """vitrt.json's batching record holds the preferred sizes, queue delay and instances as chosen."""
    assert Batching(8, (2, 4), 250, 3).to_dict() == {"max_batch_size": 8, "preferred_batch_size": [2, 4],
                                                      "max_queue_delay_microseconds": 250, "instances": 3}


def test_only_the_first_output_gets_the_label_file():
    """The label file belongs to the logits output (the first); any other output gets none."""
    from vitrt.serving.repository import batching_for, model_config

    two = artifact(outputs=TWO_OUTPUTS)
    config = model_config(two, "m", batching_for(two, BatchingOptions()))
    assert [t.label_filename for t in config.output] == ["labels.txt", ""]


def test_warmup_sends_zeros():
    """Each warmup input names its data (zero_data): Triton refuses a warmup input without a data source."""
    from vitrt.serving.repository import batching_for, model_config

    config = model_config(artifact(), "m", batching_for(artifact(), BatchingOptions()))
    assert config.model_warmup[0].inputs["images"].zero_data is True


@pytest.mark.parametrize("shape", [(-1, 1, 32, 32), (-1, 3, 32, 16)])
def test_preprocess_refuses_non_rgb_or_non_square_inputs(shape):
    """--preprocess makes [3, S, S] images: a grey or non-square engine input is refused in one line."""
    from vitrt.serving.repository import ensemble_configs

    odd = artifact(inputs=(TensorIO("images", "float32", shape),))
    with pytest.raises(VitrtError, match=r"square RGB inputs \[3, S, S\]"):
        ensemble_configs(odd, "m", Batching(8, (), 100, 1), (0.5,) * 3, (0.5,) * 3)


def test_ensemble_configs_take_raw_uint8_images_and_return_labelled_logits():
    """The preprocess and ensemble configs: raw uint8 [-1, -1, 3] in, batched like the engine, the logits out per image
    with the label file, and the first step fed from the ensemble's raw input."""
    from tritonclient.grpc import model_config_pb2 as mc

    from vitrt.serving.repository import ensemble_configs

    pre, ens = ensemble_configs(artifact(), "m", Batching(8, (), 100, 1), (0.5,) * 3, (0.5,) * 3)
    for config in (pre, ens):
        assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == \
            [("raw", "TYPE_UINT8", [-1, -1, 3])]
    assert ens.max_batch_size == pre.max_batch_size == 8
    assert [(t.name, list(t.dims), t.label_filename) for t in ens.output] == [("logits", [10], "labels.txt")]
    assert dict(ens.ensemble_scheduling.step[0].input_map) == {"raw": "raw"}


def test_preprocess_export_writes_the_ensemble_label_file(outs, tmp_path):
    """REPO/<name>_ensemble/labels.txt exists: the ensemble's logits output names it as its label file."""
    from vitrt.serving.repository import ExportTritonConfig, export_triton

    export_triton(ExportTritonConfig(out=outs / "dynamic", repo=tmp_path / "repo", preprocess=True))
    labels = tmp_path / "repo" / "tiny_ensemble" / "labels.txt"
    assert labels.read_text().splitlines() == [f"class_{i}" for i in range(10)]


# --- artifact.py --------------------------------------------------------------------------------------------
def test_serve_refuses_an_engine_with_two_outputs():
    """vitrt serves one image input and one logits output: two outputs are a one-line refusal."""
    with pytest.raises(VitrtError, match="1 inputs and 2 outputs"):
        artifact(outputs=TWO_OUTPUTS).check_single_io()


def test_manifest_without_input_shape_is_one_line(tmp_path):
    """A manifest lacking input_shape is 'not written by vitrt compile' (a VitrtError, not a KeyError)."""
    from vitrt.serving.artifact import open_artifact

    (tmp_path / "manifest.json").write_text(json.dumps({"model": "x", "backend": "ort", "artifact": "model.ort.onnx"}))
    with pytest.raises(VitrtError, match="lacks 'input_shape'"):
        open_artifact(tmp_path)


def test_manifest_batch_disagreeing_with_the_artifact_is_refused(outs, tmp_path):
    """A manifest whose input batch differs from the artifact's is refused as inconsistent."""
    from vitrt.serving.artifact import open_artifact

    out = tmp_path / "out"
    shutil.copytree(outs / "dynamic", out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["input_shape"][0] = 4
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VitrtError, match="is inconsistent: the manifest's input batch is 4"):
        open_artifact(out)


# --- loadtest.py: checks, metrics, one level ---------------------------------------------------------------------
def loadtest_config(**kwargs):
    from vitrt.serving.loadtest import LoadtestConfig

    return LoadtestConfig(**{"url": "http://127.0.0.1:8000", "model": "m", **kwargs})


def test_duration_of_exactly_one_hour_is_allowed():
    """--duration lies in (0, 3600]: 3600 itself is accepted."""
    from vitrt.serving.loadtest import check

    check(loadtest_config(duration=3600.0))
    with pytest.raises(VitrtError, match="--duration"):
        check(loadtest_config(duration=3600.5))


def test_batch_zero_is_refused():
    """--batch 0 is refused (not silently turned into batch 1)."""
    from vitrt.serving.loadtest import check

    with pytest.raises(VitrtError, match="--batch must be >= 1, got 0"):
        check(loadtest_config(batch=0))


def test_metrics_url_none_reads_no_metrics():
    """--metrics-url none: no metrics URL at all, even beside a server on the default ports."""
    from vitrt.serving.loadtest import metrics_url_for

    assert metrics_url_for(loadtest_config(metrics_url="none")) is None


def test_metrics_url_must_be_loopback():
    """An explicit --metrics-url is checked to be on this machine like the server URL."""
    from vitrt.serving.loadtest import metrics_url_for

    with pytest.raises(VitrtError, match="loopback"):
        metrics_url_for(loadtest_config(metrics_url="http://10.0.0.1:8002/metrics"))


def test_a_level_without_answers_has_no_latency():
    """No request answered: the percentiles are NaN (unknown), not 0 ms."""
    from vitrt.serving.loadtest import LevelResult

    summary = LevelResult(concurrency=1, seconds=1.0, sent=3, errors=3).summary(1)
    assert all(math.isnan(summary[k]) for k in ("p50_ms", "p90_ms", "p99_ms"))


def test_server_requests_count_failures_and_mean_batch():
    """server_requests = Triton's successes + failures; server_mean_batch = inferences / executions."""
    from vitrt.serving.loadtest import LevelResult

    level = LevelResult(concurrency=4, seconds=1.0, sent=10, ok=7, errors=3, images=7, latencies_ms=[1.0],
                        server={"nv_inference_request_success": 7.0, "nv_inference_request_failure": 3.0,
                                "nv_inference_count": 7.0, "nv_inference_exec_count": 2.0})
    summary = level.summary(1)
    assert summary["server_requests"] == 10 and summary["server_mean_batch"] == 3.5


STEP = 2.0 ** -8  # one fake request takes 1/256 s (3.90625 ms): binary-exact sums, so the counts are exact


def virtual_clock(monkeypatch):
    """loadtest's clock replaced by one that only a request moves forward (STEP per request); returns connect()."""
    import vitrt.serving.loadtest as lt

    now = [0.0]
    monkeypatch.setattr(lt, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=lambda: now[0]))

    def connect():
        def infer(images):
            now[0] += STEP
            return np.zeros((len(images), 10), np.float32)
        return SimpleNamespace(infer=infer, close=lambda: None)
    return connect


def test_a_level_stops_at_its_duration_and_times_latency_in_ms(monkeypatch):
    """With budget to spare a level sends requests until its duration is over; latencies are in milliseconds."""
    from vitrt.serving.loadtest import run_level

    connect = virtual_clock(monkeypatch)
    result = run_level(connect, 1, np.zeros((4, 3, 8, 8), np.float32), None, 1, 5 * STEP, 1000, 5.0)
    assert (result.sent, result.ok) == (5, 5)
    assert result.latencies_ms == [STEP * 1000.0] * 5
    assert result.seconds == 5 * STEP


def test_a_level_that_spends_its_budget_early_is_timed_to_its_end(monkeypatch):
    """When the request budget runs out first, the level's seconds (and images/s) are the time taken, not the
    nominal duration."""
    from vitrt.serving.loadtest import run_level

    connect = virtual_clock(monkeypatch)
    result = run_level(connect, 1, np.zeros((4, 3, 8, 8), np.float32), None, 2, 1.0, 3, 5.0)
    assert (result.sent, result.images) == (3, 6)
    assert result.seconds == 3 * STEP
    assert result.summary(2)["images_per_s"] == round(6 / (3 * STEP), 1)


def test_requests_cycle_through_the_images_a_batch_at_a_time(monkeypatch):
    """Request k carries images k*batch .. k*batch+batch-1, wrapping around the image set."""
    from vitrt.serving.loadtest import run_level

    sent = []
    images = np.arange(5, dtype=np.float32).reshape(5, 1)
    connect = lambda: SimpleNamespace(infer=lambda x: sent.append(x[:, 0].tolist()) or np.zeros((len(x), 10)),  # noqa: E731
                                      close=lambda: None)
    result = run_level(connect, 1, images, None, 2, 60.0, 4, 5.0)
    assert result.sent == 4 and sent == [[0, 1], [2, 3], [4, 0], [1, 2]]


def test_in_process_rate_is_images_per_second(monkeypatch):
    """The in-process window's rate: images per call * calls / total seconds (samples are in ms)."""
    import vitrt.compiler.timing
    from vitrt.serving.loadtest import inprocess_images_per_s

    monkeypatch.setattr(vitrt.compiler.timing, "samples_ms", lambda call, timing: [10.0, 10.0, 20.0])
    assert inprocess_images_per_s(lambda: None, 8, 1.0) == 8 * 3 * 1000.0 / 40.0


def test_table_columns_hold_p50_p90_p99():
    """The table's p50 / p90 / p99 columns show those percentiles, in that order."""
    from vitrt.serving.loadtest import format_table

    row = {"concurrency": 1, "requests": 5, "ok": 5, "errors": 0, "lost": 0, "images_per_s": 9.0, "p50_ms": 1.0,
           "p90_ms": 2.0, "p99_ms": 3.0, "first_error": None}
    result = {"model": "m", "url": "u", "protocol": "http", "request_batch": 1, "data": "synthetic",
              "duration_s": 1.0, "max_requests": 5, "levels": [row]}
    assert "| 9.0 | 1.00 | 2.00 | 3.00 | n/a |" in format_table(result)


# --- cli/serving.py ---------------------------------------------------------------------------------------
def test_a_failed_load_test_exits_1_after_writing_its_json(monkeypatch, tmp_path, capsys):
    """vitrt loadtest whose requests mostly failed prints the table, writes --json, says why, and exits 1."""
    import vitrt.serving.loadtest as lt
    from vitrt.cli import main

    row = {"concurrency": 2, "requests": 10, "ok": 1, "errors": 9, "lost": 0, "images_per_s": 1.0, "p50_ms": 1.0,
           "p90_ms": 1.0, "p99_ms": 1.0, "first_error": "refused"}
    result = {"url": "http://127.0.0.1:8000", "model": "m", "protocol": "http", "request_batch": 1,
              "data": "synthetic", "duration_s": 1.0, "max_requests": 10, "levels": [row]}
    monkeypatch.setattr(lt, "loadtest", lambda config, progress=None: result)
    report = tmp_path / "r.json"
    assert main(["loadtest", "http://127.0.0.1:8000", "--model", "m", "--json", str(report)]) == 1
    assert "vitrt: error: at concurrency 2 9 of 10 requests failed" in capsys.readouterr().err
    assert json.loads(report.read_text())["levels"] == [row]


# --- client.py -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v2", "http://127.0.0.1", "grpc://127.0.0.1"])
def test_endpoint_needs_a_port_and_no_path(url):
    """A server URL is scheme://HOST:PORT: a path or a missing port is refused in one line."""
    from vitrt.serving.client import parse_endpoint

    with pytest.raises(VitrtError, match="must be http://HOST:PORT or grpc://HOST:PORT"):
        parse_endpoint(url)


def test_ipv6_loopback_address_is_bracketed():
    """[::1] keeps its brackets in host:port (tritonclient's address) and in the URL."""
    from vitrt.serving.client import parse_endpoint

    endpoint = parse_endpoint("grpc://[::1]:8001")
    assert (endpoint.host, endpoint.address, endpoint.url) == ("::1", "[::1]:8001", "grpc://[::1]:8001")


def test_evaluation_batch_is_capped_at_64():
    """RemoteModel.batch: up to 64 images per request when the server batches."""
    from vitrt.serving.client import RemoteModel

    remote = RemoteModel.__new__(RemoteModel)
    remote.input_dims = (3, 32, 32)
    for max_batch, batch in ((128, 64), (64, 64), (16, 16)):
        remote.max_batch_size = max_batch
        assert remote.batch == batch


# --- server.py --------------------------------------------------------------------------------------------
def test_a_dynamic_batch_is_split_back_per_request():
    """The batch Triton formed runs as one call; each request gets its own rows back, and the counters count
    requests, batches and images."""
    from vitrt.serving.server import InferenceHandler, ServeStats

    shape = SimpleNamespace(inputs=[TensorIO("images", "float32", (-1, 2))],
                            outputs=[TensorIO("logits", "float32", (-1, 2))])
    calls = []
    runner = SimpleNamespace(infer=lambda x: calls.append(len(x)) or x * 10)
    stats = ServeStats()
    handler = InferenceHandler(runner, shape, Batching(8, (), 100, 1), stats)
    requests = [{"images": np.full((n, 2), k, np.float32)} for k, n in enumerate((1, 3, 2))]
    responses = handler(requests)
    assert calls == [6]
    assert [r["logits"].tolist() for r in responses] == [[[0, 0]], [[10, 10]] * 3, [[20, 20]] * 2]
    assert (stats.requests, stats.batches, stats.images, stats.after_stop) == (3, 1, 6, 0)


def test_only_requests_executed_after_the_stop_count_as_drained():
    """ServeStats.after_stop counts the requests executed once the stop signal came, none before."""
    from vitrt.serving.server import ServeStats

    stats = ServeStats()
    stats.record(3, 3)
    stats.stopping = True
    stats.record(2, 4)
    assert (stats.requests, stats.batches, stats.images, stats.after_stop) == (5, 2, 7, 2)


def test_ports_must_differ_and_be_port_numbers():
    """--http-port, --grpc-port and --metrics-port: three different numbers in 1..65535."""
    from vitrt.serving.server import ServeConfig, check_ports

    a, b = free_ports(2)
    with pytest.raises(VitrtError, match="must differ"):
        check_ports(ServeConfig(http_port=a, grpc_port=a, metrics_port=b))
    with pytest.raises(VitrtError, match="--http-port must be a port number 1..65535, got 0"):
        check_ports(ServeConfig(http_port=0, grpc_port=a, metrics_port=b))


# --- preprocess.py -------------------------------------------------------------------------------------------
def test_normalisation_needs_both_mean_and_std_from_the_manifest():
    """A preprocessing record without std is not used (the model name decides): no KeyError, no half record."""
    from vitrt.serving.preprocess import normalisation

    mean, std, source = normalisation("digits_vit", {"mean": [0.1, 0.2, 0.3]})
    assert (mean, std) == ((0.5,) * 3, (0.5,) * 3) and "digits" in source


