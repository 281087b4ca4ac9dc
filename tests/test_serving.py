"""`vitrt serve` on a real Triton Inference Server (PyTriton's bundled Triton 2.51) and `vitrt loadtest`, with the
digits reference compiled with a dynamic batch. One server for the whole module (module-scoped fixture); it is
stopped with SIGTERM at the end and must exit 0 without leaving a process behind.

Everything binds and talks to 127.0.0.1 only; every load loop is bounded in count and time.
"""

from __future__ import annotations

import json
import signal
import struct
import threading

import numpy as np
import pytest

from serving_support import READY_S, ServeProcess, http_status

pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.xdist_group("serving")

MAX_BATCH = 16
MODEL = "digits_vit"


@pytest.fixture(scope="module")
def digits_out(tmp_path_factory, digits_reference):
    import vitrt

    out = tmp_path_factory.mktemp("serving") / "digits_dyn"
    vitrt.compile(digits_reference[0], out, name=MODEL, dynamic_batch=True, quiet=True)
    return out


@pytest.fixture(scope="module")
def server(digits_out, tmp_path_factory):
    process = ServeProcess(digits_out, "--max-batch", str(MAX_BATCH), log_dir=tmp_path_factory.mktemp("serve-log"))
    with process:
        process.ready_s = process.wait_ready()
        yield process
        assert process.stop(signal.SIGTERM) == 0, process.stderr()[-2000:]
        assert process.orphans() == set()


def test_ready_within_30_s_with_one_start_line(server):
    assert server.ready_s <= READY_S, server.ready_s
    lines = [line for line in server.stderr().splitlines() if line.startswith("[vitrt]")]
    assert len(lines) == 1 and "dynamic batching up to 16" in lines[0] and "127.0.0.1" in lines[0]


def test_health_and_model_endpoints(server):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        assert http_status(server.http + path)[0] == 200, path
    status, body = http_status(f"{server.http}/v2/models/{MODEL}")
    assert status == 200 and json.loads(body)["inputs"][0]["name"] == "images"
    assert http_status(f"{server.http}/v2/models/no_such_model/ready")[0] == 400


def test_served_config_is_the_exported_one(server, digits_out, tmp_path):
    """The served model has the exported repository's inputs, outputs and batching (same client for both)."""
    from tritonclient.grpc import model_config_pb2

    from vitrt.serving.repository import BatchingOptions, ExportTritonConfig, export_triton, parse_config

    repo = tmp_path / "repo"
    export_triton(ExportTritonConfig(out=digits_out, repo=repo, batching=BatchingOptions(max_batch=MAX_BATCH)))
    exported = parse_config((repo / MODEL / "config.pbtxt").read_text())
    served = json.loads(http_status(f"{server.http}/v2/models/{MODEL}/config")[1])
    assert served["max_batch_size"] == exported.max_batch_size == MAX_BATCH
    for kind in ("input", "output"):
        want = [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in getattr(exported, kind)]
        got = [(t["name"], t["data_type"], t["dims"]) for t in served[kind]]
        assert got == want
    assert served["dynamic_batching"]["max_queue_delay_microseconds"] == 100


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_top1_through_the_server_equals_the_artifact(server, digits_out, digits_test, protocol):
    from vitrt.calib.evaluate import runner_logits, top1
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.serving.client import RemoteModel

    runner = get_backend("ort").load(digits_out / "model.ort.onnx", BuildOptions())
    local = runner_logits(runner, digits_test)
    with RemoteModel(server.http if protocol == "http" else server.grpc, MODEL) as remote:
        assert remote.batch == MAX_BATCH
        served = runner_logits(remote, digits_test)
    assert len(served) == len(digits_test) == 450
    assert top1(served, digits_test.labels) == top1(local, digits_test.labels) >= 0.98
    assert float(np.max(np.abs(served - local))) <= 1e-4  # fp32, batch composition may differ


# --- bad requests: a 4xx naming what was expected; the server keeps serving ---------------------------------
def _json_infer(shape, datatype="FP32", data=None, name="images", extra=None):
    count = int(np.prod(shape)) if shape else 0
    body = {"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                        "data": data if data is not None else [0.0] * count}]}
    body.update(extra or {})
    return json.dumps(body).encode()


def _binary_infer(shape, payload_bytes):
    header = json.dumps({"inputs": [{"name": "images", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(payload_bytes)}}]}).encode()
    return header + payload_bytes, {"Inference-Header-Content-Length": str(len(header)),
                                    "Content-Type": "application/octet-stream"}


BAD_REQUESTS = {
    # name: (model, body, headers, words the message must contain)
    "wrong image size": (MODEL, _json_infer([1, 3, 16, 16]), None, ["images", "[-1,3,32,32]"]),
    "missing batch dimension": (MODEL, _json_infer([3, 32, 32]), None, ["images"]),
    "wrong data type": (MODEL, _json_infer([1, 3, 32, 32], "FP64"), None, ["images", "FP32"]),
    "batch above max_batch_size": (MODEL, _json_infer([MAX_BATCH + 1, 3, 32, 32]), None, [str(MAX_BATCH)]),
    "unknown input name": (MODEL, _json_infer([1, 3, 32, 32], name="pixels"), None, ["pixels"]),
    "no inputs": (MODEL, json.dumps({"inputs": []}).encode(), None, ["input"]),
    "binary payload of the wrong size": (MODEL, *_binary_infer([1, 3, 32, 32], struct.pack("<4f", 0, 0, 0, 0)),
                                         ["images"]),
    "empty body": (MODEL, b"", None, []),
    "unknown output requested": (MODEL, _json_infer([1, 3, 32, 32], extra={"outputs": [{"name": "probs"}]}), None,
                                 ["probs"]),
    "unknown model": ("no_such_model", _json_infer([1, 3, 32, 32]), None, ["no_such_model"]),
}


# Triton 2.51's HTTP front end answers these with 500 (it files JSON parse failures under INTERNAL): not vitrt's to
# change, the request never reaches the model. Kept here so the behaviour is on record and checked.
TRITON_500 = {
    "data shorter than the shape": (_json_infer([1, 3, 32, 32], data=[0.0] * 10), "Shape does not match"),
    "garbage body": (b"\x00\xffnot json at all{", "failed to parse the request JSON"),
}


@pytest.mark.parametrize("case", list(TRITON_500))
def test_malformed_json_is_refused_with_a_message_and_the_server_keeps_serving(server, case):
    body, words = TRITON_500[case]
    status, text = http_status(f"{server.http}/v2/models/{MODEL}/infer", data=body)
    assert status == 500 and words in json.loads(text)["error"], (status, text)
    assert http_status(f"{server.http}/v2/health/ready")[0] == 200


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_4xx_with_a_clear_message_and_the_server_keeps_serving(server, case):
    model, body, headers, words = BAD_REQUESTS[case]
    status, text = http_status(f"{server.http}/v2/models/{model}/infer", data=body, headers=headers)
    assert 400 <= status < 500, (case, status, text)
    message = json.loads(text)["error"]
    assert message and all(w in message for w in words), (case, message)
    assert http_status(f"{server.http}/v2/health/ready")[0] == 200
    good = _json_infer([1, 3, 32, 32])
    status, text = http_status(f"{server.http}/v2/models/{MODEL}/infer", data=good)
    assert status == 200 and len(json.loads(text)["outputs"][0]["data"]) == 10


def test_bad_catalogue_is_large_enough():
    assert len(BAD_REQUESTS) >= 8


def test_grpc_bad_shape_is_invalid_argument(server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    tensor = grpcclient.InferInput("images", [1, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException) as exc:
        client.infer(MODEL, [tensor])
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and "images" in exc.value.message()
    assert client.is_server_ready()


# --- load: dynamic batching, metrics, the loadtest command ---------------------------------------------------
def test_loadtest_counts_every_request_and_batches_them(server, tmp_path):
    from vitrt.cli import main

    report = tmp_path / "load.json"
    code = main(["loadtest", server.http, "--model", MODEL, "--concurrency", "1,8", "--duration", "2",
                 "--max-requests", "400", "--data", "digits", "--metrics-url", server.metrics, "--json", str(report),
                 "--quiet"])
    assert code == 0
    result = json.loads(report.read_text())
    assert "command" in result
    for level in result["levels"]:
        assert level["errors"] == 0 and level["lost"] == 0 and level["ok"] == level["requests"] > 0
        assert level["requests"] <= 400 and level["seconds"] < 2 + 10  # bounded in count and time
        assert level["server_requests"] == level["requests"]  # Triton counted every request the client sent
        assert level["top1"] >= 0.95
        assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
    assert result["levels"][0]["server_mean_batch"] == 1.0  # one client: nothing to batch
    assert result["levels"][1]["server_mean_batch"] > 1.0  # eight clients: Triton's dynamic batcher joins them


def test_metrics_endpoint_counts_inferences(server):
    status, text = http_status(server.metrics)
    assert status == 200
    success = [line for line in text.splitlines()
               if line.startswith("nv_inference_request_success{") and f'model="{MODEL}"' in line]
    assert success and float(success[0].rsplit(" ", 1)[1]) > 0


def test_concurrent_grpc_clients_get_their_own_answers(server, digits_test):
    """Requests batched together come back to the right client (each checks its own image's logits)."""
    from vitrt.serving.client import RemoteModel

    images = digits_test.images.numpy()[:64]
    with RemoteModel(server.grpc, MODEL) as remote:
        expected = [remote.infer(images[i:i + 1])[0] for i in range(len(images))]
    mismatches = []

    def worker(k):
        with RemoteModel(server.grpc, MODEL) as remote:
            for i in range(k, len(images), 8):
                if np.max(np.abs(remote.infer(images[i:i + 1])[0] - expected[i])) > 1e-4:
                    mismatches.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and mismatches == []


@pytest.mark.slow
def test_sustained_load_at_concurrency_16_against_in_process_batch_8(server, digits_out):
    """The issue's bar: 30 s at concurrency 16, batch-1 requests: no error, nothing lost, and the server's throughput
    with dynamic batching at least 60 % of the same artifact run in this process at batch 8, side by side."""
    from vitrt.serving.loadtest import LoadtestConfig, loadtest

    result = loadtest(LoadtestConfig(url=server.http, model=MODEL, concurrency="16", duration=30.0, data="digits",
                                     metrics_url=server.metrics, versus=digits_out, versus_batch=8))
    level = result["levels"][0]
    assert level["errors"] == 0 and level["lost"] == 0 and level["server_requests"] == level["requests"] > 0
    assert level["seconds"] < 30 + 15 and level["top1"] >= 0.98
    assert level["server_mean_batch"] > 1.0
    assert level["versus_in_process"] >= 0.6, result


def test_a_client_that_cannot_connect_is_not_a_sent_request():
    """A load level whose clients cannot connect (the server stopping, say) sends nothing, so nothing is lost and
    no request error is counted: ok + errors == sent holds, the failures are counted apart with their message."""
    from vitrt.compiler.errors import VitrtError
    from vitrt.serving.loadtest import run_level

    def refuse():
        raise VitrtError("model 'm' at http://127.0.0.1:1: Request for unknown model")

    result = run_level(refuse, 3, np.zeros((4, 3, 8, 8), np.float32), None, 1, 0.2, 10, 5.0)
    assert (result.sent, result.ok, result.errors, result.lost, result.unconnected) == (0, 0, 0, 0, 3)
    assert "unknown model" in result.first_error and result.summary(1)["unconnected"] == 3


def test_top1_counts_every_image_of_a_request():
    """A request of 2 labelled images adds 2 to the labelled count (not 1): top-1 is a fraction of images."""
    from types import SimpleNamespace

    from vitrt.serving.loadtest import run_level

    images, labels = np.zeros((4, 3, 8, 8), np.float32), np.array([0, 1, 2, 3])
    logits = np.eye(10, dtype=np.float32)[[0, 1]]  # classes 0 and 1: right for images 0, 1, wrong for 2, 3

    def connect():
        return SimpleNamespace(infer=lambda batch: logits, close=lambda: None)

    result = run_level(connect, 1, images, labels, 2, 5.0, 4, 5.0)
    assert (result.sent, result.ok, result.images, result.labelled, result.correct) == (4, 4, 8, 8, 4)
    assert result.summary(2)["top1"] == 0.5
