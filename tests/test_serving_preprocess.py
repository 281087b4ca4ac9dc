"""`vitrt export triton --preprocess`: the raw-image step against torch's resize, the configs, and the written
model.py running on the Triton server PyTriton bundles (its Python backend is there; the onnxruntime backend of
the ensemble's second step is not, so the ensemble itself is checked as configuration only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_vit
from serving_support import free_ports, http_status

pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.xdist_group("serving")


def torch_reference(raw: np.ndarray, size: int, mean, std) -> np.ndarray:
    x = torch.from_numpy(raw.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return ((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).numpy()


@pytest.mark.parametrize("height, width, size", [(8, 8, 32), (20, 28, 32), (300, 200, 224), (5, 97, 16)])
def test_preprocess_matches_torch_bilinear(height, width, size):
    from vitrt.serving.preprocess import preprocess

    raw = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = preprocess(raw, size, mean, std)
    assert out.shape == (2, 3, size, size) and out.dtype == np.float32
    # In [0, 1] pixel units: torch takes the source coordinates in float32, we in float64 (1/80 of a uint8 level)
    scale = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    assert np.max(np.abs(out - torch_reference(raw, size, mean, std)) * scale) <= 5e-5


def test_an_empty_image_is_a_clear_error():
    from vitrt.serving.preprocess import preprocess

    with pytest.raises(ValueError, match=r"height >= 1, width >= 1, 3\], got shape \[1, 0, 0, 3\]"):
        preprocess(np.zeros((1, 0, 0, 3), np.uint8), 32, (0.5,) * 3, (0.5,) * 3)
    for channels in (1, 4):  # grey or RGBA would broadcast or fail inside numpy: the engine wants RGB
        with pytest.raises(ValueError, match=rf"3\], got shape \[1, 4, 4, {channels}\]"):
            preprocess(np.zeros((1, 4, 4, channels), np.uint8), 32, (0.5,) * 3, (0.5,) * 3)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, digits_reference):
    import vitrt
    from vitrt.cli import main

    import contextlib
    import io

    root = tmp_path_factory.mktemp("preprocess")
    vitrt.compile(digits_reference[0], root / "out", name="digits_vit", dynamic_batch=True, quiet=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "triton", str(root / "out"), "-o", str(root / "repo"), "--preprocess",
                     "--max-batch", "16", "--queue-delay-us", "250"]) == 0
    assert "with digits_vit_preprocess/ and digits_vit_ensemble/ beside it" in printed.getvalue()  # all it wrote
    return root / "repo"


def test_ensemble_configs(repo):
    from tritonclient.grpc import model_config_pb2 as mc

    from vitrt.serving.repository import parse_config

    model = parse_config((repo / "digits_vit" / "config.pbtxt").read_text())
    pre = parse_config((repo / "digits_vit_preprocess" / "config.pbtxt").read_text())
    ens = parse_config((repo / "digits_vit_ensemble" / "config.pbtxt").read_text())
    assert pre.backend == "python" and ens.platform == "ensemble"
    assert pre.max_batch_size == ens.max_batch_size == model.max_batch_size == 16
    # both batching steps wait as long for a batch to fill (the preprocessing one was left at Triton's 0)
    assert pre.dynamic_batching.max_queue_delay_microseconds == model.dynamic_batching.max_queue_delay_microseconds \
        == 250
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in pre.output] == \
        [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in model.input]
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["digits_vit_preprocess", "digits_vit"]
    assert steps[0].output_map["images"] == steps[1].input_map["images"]  # the steps are wired together
    assert dict(steps[1].output_map) == {"logits": "logits"} and ens.output[0].name == "logits"
    assert json.loads(pre.parameters["mean"].string_value) == [0.5, 0.5, 0.5]
    assert (repo / "digits_vit_ensemble" / "1").is_dir()


def test_preprocess_needs_a_dynamic_batch_engine(tmp_path, capsys):
    import vitrt
    from vitrt.cli import main

    vitrt.compile(tiny_vit(), tmp_path / "static", name="tiny", batch=2, quiet=True)
    assert main(["export", "triton", str(tmp_path / "static"), "-o", str(tmp_path / "repo"), "--preprocess"]) == 2
    assert "--preprocess needs a dynamic-batch engine" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_a_foreign_entry_beside_the_model_stops_the_whole_export(repo, tmp_path, capsys):
    """Mutation-audit survivor: every entry --preprocess writes is checked before any is written — a folder of the
    user's named like the ensemble stops the export (with --force too: vitrt did not write it), REPO/<name> included."""
    from vitrt.cli import main

    target = tmp_path / "repo"
    (target / "digits_vit_ensemble").mkdir(parents=True)
    (target / "digits_vit_ensemble" / "mine.txt").write_text("keep")
    for force in ([], ["--force"]):
        assert main(["export", "triton", str(repo.parent / "out"), "-o", str(target), "--preprocess", *force]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "digits_vit_ensemble" in err[0], err
        assert [p.relative_to(target).as_posix() for p in sorted(target.rglob("*"))] == \
            ["digits_vit_ensemble", "digits_vit_ensemble/mine.txt"]


def test_timm_normalisation():
    from vitrt.serving.preprocess import normalisation

    mean, std, source = normalisation("deit_small_patch16_224")
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225) and "timm" in source
    # the manifest's record wins over the name: a model compiled under any name keeps its own normalisation
    mean, std, source = normalisation("my_vit", {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert mean == std == (0.5, 0.5, 0.5) and "manifest" in source


@pytest.fixture(scope="module")
def bundled_server(repo, tmp_path_factory):
    """The exported preprocessing model on the Triton server PyTriton ships (Python backend), 127.0.0.1 only."""
    pytest.importorskip("pytriton")
    from pytriton.triton import TRITONSERVER_DIST_DIR
    from pytriton.utils.distribution import get_libs_path, get_stub_path

    dist = tmp_path_factory.mktemp("triton") / "tritonserver"
    shutil.copytree(TRITONSERVER_DIST_DIR, dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(get_stub_path(f"{sys.version_info.major}.{sys.version_info.minor}"),
                dist / "backends" / "python" / "triton_python_backend_stub")
    http, grpc, metrics = free_ports(3)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:{get_libs_path()}",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    log = open(dist.parent / "server.log", "w")
    process = subprocess.Popen(
        [str(dist / "bin" / "tritonserver"), "--model-repository", str(repo), "--backend-directory",
         str(dist / "backends"), "--model-control-mode", "explicit", "--load-model", "digits_vit_preprocess",
         "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address", "127.0.0.1", "--grpc-port",
         str(grpc), "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while http_status(f"{url}/v2/models/digits_vit_preprocess/ready")[0] != 200:
            assert process.poll() is None and time.monotonic() < deadline, (dist.parent / "server.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)
        log.close()


def test_written_model_py_runs_on_triton(bundled_server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(bundled_server.removeprefix("http://"))
    raw = np.random.default_rng(1).integers(0, 256, (1, 20, 28, 3), dtype=np.uint8)
    tensor = httpclient.InferInput("raw", list(raw.shape), "UINT8")
    tensor.set_data_from_numpy(raw)
    out = client.infer("digits_vit_preprocess", [tensor]).as_numpy("images")
    assert out.shape == (1, 3, 32, 32)
    assert np.max(np.abs(out - torch_reference(raw, 32, (0.5,) * 3, (0.5,) * 3))) <= 1e-5


def test_raw_digits_through_the_preprocessing_step_keep_the_reference_accuracy(bundled_server, repo, digits_test):
    """The 8x8 scans as raw uint8 images -> Triton's preprocessing step -> the exported engine: reference top-1."""
    import tritonclient.http as httpclient
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from vitrt.calib.digits import SPLIT_SEED, TEST_FRACTION
    from vitrt.calib.evaluate import top1
    from vitrt.compiler.backends import BuildOptions, get_backend

    data = load_digits()
    _, test_idx = train_test_split(np.arange(len(data.target)), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                   stratify=data.target)
    raw = np.round(data.images[test_idx] / 16.0 * 255.0).astype(np.uint8)[..., None].repeat(3, axis=-1)
    client = httpclient.InferenceServerClient(bundled_server.removeprefix("http://"))
    images = []
    for start in range(0, len(raw), 16):
        tensor = httpclient.InferInput("raw", list(raw[start:start + 16].shape), "UINT8")
        tensor.set_data_from_numpy(raw[start:start + 16])
        images.append(client.infer("digits_vit_preprocess", [tensor]).as_numpy("images"))
    runner = get_backend("ort").load(repo / "digits_vit" / "1" / "model.onnx", BuildOptions())
    served = top1(np.concatenate([runner.infer(x) for x in images]), digits_test.labels)
    reference = top1(runner.infer(digits_test.images.numpy()), digits_test.labels)
    assert abs(served - reference) <= 0.005 and served >= 0.98  # uint8 rounding of the scans only
