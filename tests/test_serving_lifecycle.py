"""`vitrt serve` start and stop: SIGTERM while requests are in flight (they complete, exit 0, no process left),
SIGINT, a static-batch engine served as it was compiled, and one-line errors at start. Each test that needs a
server starts its own (they are stopped by signals); all on 127.0.0.1, every load loop bounded."""

from __future__ import annotations

import re
import signal
import threading
import time

import numpy as np
import pytest

from serving_support import READY_S, ServeProcess, free_ports, http_status

pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.xdist_group("serving")

MODEL = "digits_vit"
QUEUE_DELAY_S = 2.0  # requests wait this long in Triton's batcher: they are surely in flight when SIGTERM comes


@pytest.fixture(scope="module")
def digits_outs(tmp_path_factory, digits_reference):
    import vitrt

    root = tmp_path_factory.mktemp("lifecycle")
    vitrt.compile(digits_reference[0], root / "dynamic", name=MODEL, dynamic_batch=True, quiet=True)
    vitrt.compile(digits_reference[0], root / "static", name=MODEL, batch=8, quiet=True)
    vitrt.compile(digits_reference[0], root / "torch", name=MODEL, dynamic_batch=True, backend="torch", quiet=True)
    return root


def pending(server) -> float:
    text = http_status(server.metrics)[1]
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("nv_inference_pending_request_count{") and f'model="{MODEL}"' in line]
    return values[0] if values else 0.0


def test_sigterm_completes_requests_in_flight_exits_0_and_leaves_no_process(digits_outs, digits_test, tmp_path):
    from vitrt.serving.client import RemoteModel
    from vitrt.serving.loadtest import run_level

    images = digits_test.images.numpy()
    with ServeProcess(digits_outs / "dynamic", "--max-batch", "16", "--queue-delay-us", str(int(QUEUE_DELAY_S * 1e6)),
                      log_dir=tmp_path) as server:
        assert server.wait_ready() <= READY_S
        assert len(server.tree) >= 2  # tritonserver and its Python backend stub
        with RemoteModel(server.http, MODEL) as remote:
            expected = remote.infer(images[:4])  # waits out one queue delay
        answers: dict[int, np.ndarray] = {}

        def queued(i):
            with RemoteModel(server.grpc, MODEL, timeout_s=60) as remote:
                answers[i] = remote.infer(images[i:i + 1])

        threads = [threading.Thread(target=queued, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        # the four are counted alone before the steady load starts: counted together, four pending requests
        # could be partly the load's, and a request of the four that reached Triton after the signal was
        # (rightly) refused
        deadline = time.monotonic() + QUEUE_DELAY_S / 2
        while pending(server) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pending(server) >= 4, "the requests should be waiting in Triton's queue"
        load = {}
        loader = threading.Thread(target=lambda: load.update(result=run_level(
            lambda: RemoteModel(server.http, MODEL, timeout_s=30), 4, images, None, 1, 20.0, 2000, 30.0)))
        loader.start()
        time.sleep(0.2)  # the load is under way when the signal comes (its later requests are refused)
        stopped = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0, server.stderr()[-2000:]
        for t in threads:
            t.join(timeout=30)
        loader.join(timeout=60)
        assert sorted(answers) == [0, 1, 2, 3]  # every request in flight got its answer
        for i in range(4):
            assert np.max(np.abs(answers[i][0] - expected[i])) <= 1e-4
        result = load["result"]
        assert result.lost == 0 and result.ok + result.errors == result.sent  # nothing vanished
        # requests sent after the signal were refused, not queued up for the drain (or, when the signal came
        # first, their clients could not connect at all)
        assert result.errors + result.unconnected > 0
        # drained: the queue delay, then a quick exit (not the 30 s exit timeout a steady load would hold it for)
        assert time.monotonic() - stopped < QUEUE_DELAY_S + 13
        assert server.orphans() == set()
        last = server.stderr().strip().splitlines()[-1]
        assert last.startswith("[vitrt] stopped digits_vit on SIGTERM") and "drain:" not in last, last
        drained = int(re.search(r"(\d+) finished after the signal", last).group(1))
        assert drained >= 4


def test_static_engine_served_as_compiled_then_ctrl_c(digits_outs, digits_test, tmp_path):
    """A static batch-8 engine: requests of exactly 8 (the last padded), top-1 equal to the artifact's own."""
    from vitrt.calib.evaluate import runner_accuracy
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.serving.client import RemoteModel

    with ServeProcess(digits_outs / "static", log_dir=tmp_path) as server:
        assert server.wait_ready() <= READY_S
        assert "static batch 8, max_batch_size 0" in server.stderr()
        with RemoteModel(server.http, MODEL) as remote:
            assert remote.request_batch == 8 and remote.max_batch_size == 0
            served = runner_accuracy(remote, digits_test)
            status, text = http_status(f"{server.http}/v2/models/{MODEL}/infer", data=(
                b'{"inputs":[{"name":"images","shape":[1,3,32,32],"datatype":"FP32","data":[%s]}]}'
                % b",".join([b"0"] * 3072)))
            assert status == 400 and "[8,3,32,32]" in text  # the compiled batch, named
        runner = get_backend("ort").load(digits_outs / "static" / "model.ort.onnx", BuildOptions())
        assert served == runner_accuracy(runner, digits_test) >= 0.98
        assert server.stop(signal.SIGINT, group=True) == 0  # Ctrl+C: the whole foreground process group
        assert server.orphans() == set()
        last = server.stderr().strip().splitlines()[-1]
        assert last.startswith("[vitrt] stopped digits_vit on SIGINT") and "drain:" not in last, last


def test_torch_backend_out_is_served_by_its_own_runner(digits_outs, digits_test, tmp_path):
    """A --backend torch OUT behind Triton: vitrt's torch runner answers (not ONNX Runtime), its logits equal the
    artifact's own in process and the top-1 of the ort artifact on the same images."""
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.serving.client import RemoteModel

    images, labels = digits_test.images.numpy()[:64], digits_test.labels.numpy()[:64]
    with ServeProcess(digits_outs / "torch", "--max-batch", "64", log_dir=tmp_path) as server:
        assert server.wait_ready() <= READY_S
        assert "(torch: " in server.stderr() and "model.torch.onnx" in server.stderr()
        with RemoteModel(server.http, MODEL) as remote:
            served = remote.infer(images)
        assert server.stop(signal.SIGTERM) == 0, server.stderr()[-2000:]
    runner = get_backend("torch").load(digits_outs / "torch" / "model.torch.onnx", BuildOptions())
    assert np.max(np.abs(served - runner.infer(images))) <= 1e-4
    ort = get_backend("ort").load(digits_outs / "dynamic" / "model.ort.onnx", BuildOptions())
    assert (served.argmax(1) == ort.infer(images).argmax(1)).all() and (served.argmax(1) == labels).mean() >= 0.95


def run_serve(capsys, *args) -> tuple[int, str]:
    """``vitrt serve`` in this process: its errors come before any server starts."""
    from vitrt.cli import main

    code = main(["serve", *map(str, args)])
    return code, capsys.readouterr().err


def test_not_a_vitrt_output_is_one_line_at_start(tmp_path, capsys):
    (tmp_path / "model_dir").mkdir()
    (tmp_path / "model_dir" / "model.onnx").write_bytes(b"not a vitrt OUT")
    code, err = run_serve(capsys, tmp_path / "model_dir")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "is not a vitrt compile output" in lines[0]


def test_port_in_use_and_static_batching_options_are_one_line(digits_outs, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        grpc, metrics = free_ports(2)
        code, err = run_serve(capsys, digits_outs / "dynamic", "--http-port", port, "--grpc-port", grpc,
                              "--metrics-port", metrics)
    assert code == 2 and err.strip() == f"vitrt: error: port {port} on 127.0.0.1 is in use; choose another --http-port"
    code, err = run_serve(capsys, digits_outs / "static", "--max-batch", "16")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "compiled for static batch 8" in err


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads must be >= 1"), (["--name", ""], "--name is empty"),
    (["--name", ".."], "not valid for Triton"),
    (["--server-log", "/nonexistent/dir/triton.log"], "its directory '/nonexistent/dir' does not exist"),
])
def test_bad_serve_options_are_one_line_before_any_server(digits_outs, capsys, args, message):
    code, err = run_serve(capsys, digits_outs / "dynamic", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
