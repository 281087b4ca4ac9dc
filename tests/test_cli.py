"""The CLI end to end: the manifest contract, one-line errors with exit 2, and nothing left behind."""

import json
import subprocess
import sys

import pytest
import torch

from vitrt.cli import main
from vitrt.compiler.backends.trt import tensorrt_available

from conftest import DIGITS_LUT, tiny_vit

MANIFEST_KEYS = {"vitrt_version", "model", "input_shape", "spec_before", "spec_after", "passes", "params", "flops",
                 "verify", "latency"}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vitrt.cli", *args], capture_output=True, text=True, timeout=600)


def test_compile_deit_small_verify_bench(tmp_path):
    out = tmp_path / "out"
    result = run_cli("compile", "deit_small_patch16_224", "--verify", "--bench", "--bench-iters", "10", "-o", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["verify"]["max_abs_err"] <= 1e-4 and manifest["verify"]["reference"] == "timm model"
    for key in ("emb", "depth", "patch", "img", "prefix_tokens", "blocks"):
        assert key in manifest["spec_after"]
    assert set(manifest["spec_after"]["blocks"][0]) >= {"heads", "qk", "v", "mlp", "tokens"}
    assert manifest["params"] == {"before": 22050664, "after": 22050664}
    latency = manifest["latency"]
    assert {"backend", "device", "batch", "median_ms", "p90_ms", "images_per_s", "per_block_ms"} <= set(latency)
    assert all(f"blocks.{i}" in latency["per_block_ms"] for i in range(12))
    assert {"name", "seconds", "modified", "stats"} <= set(manifest["passes"][0])
    assert (out / "model.onnx").is_file() and (out / "model.ort.onnx").is_file()
    import onnx

    names = {n.name for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node if n.op_type == "MatMul"}
    assert all(f"blocks.{i}.{l}" in names for i in range(12) for l in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"))


@pytest.mark.parametrize("model, message", [
    ("no_such_model", "unknown model 'no_such_model'"),
    ("swin_tiny_patch4_window7_224", "unsupported architecture 'swin_tiny_patch4_window7_224'"),
    ("convnext_tiny", "unsupported architecture 'convnext_tiny'"),
])
def test_bad_models_exit_2_with_one_line_and_no_output(tmp_path, model, message):
    out = tmp_path / "out"
    result = run_cli("compile", model, "-o", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "vit_tiny_patch16_224" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _compile_tiny(tmp_path, out, *extra):
    checkpoint = tmp_path / "tiny.pt"
    if not checkpoint.exists():
        from vitrt.compiler.models import load_timm_model

        model = load_timm_model("vit_tiny_patch16_224", img_size=32)
        with torch.no_grad():
            model.head.weight.normal_()  # differs from any fresh init, so loading it is observable
        torch.save({"state_dict": model.state_dict()}, checkpoint)
    return main(["compile", "vit_tiny_patch16_224", "--img-size", "32", "--checkpoint", str(checkpoint), "-o", str(out),
                 "--quiet", *extra])


def test_non_empty_output_needs_force_and_is_kept_intact(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["compile", "deit_tiny_patch16_224", "-o", str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def argparse_namespace():
    """A Python object people often save beside their weights (training arguments)."""
    import argparse

    return argparse.Namespace(lr=0.1)


def test_unreadable_and_mismatched_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    assert main(["compile", "deit_tiny_patch16_224", "--checkpoint", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not a torch checkpoint or it is damaged" in err and "weights_only" not in err
    torch.save(tiny_vit().state_dict(), tmp_path / "tiny.pt")  # emb 64, depth 2, 10 classes: another model
    assert main(["compile", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "tiny.pt"), "-o", str(out)]) == 2
    err = capsys.readouterr().err  # the checkpoint's 10-class head is announced, then the one-line error
    assert "has 10 classes: building deit_tiny_patch16_224 with num_classes=10" in err
    err = [line for line in err.splitlines() if line.startswith("vitrt: error:")]
    assert len(err) == 1 and "does not match deit_tiny_patch16_224" in err[0]
    err = err[0]
    assert "missing: blocks.2.norm1.weight" in err and "with another shape (checkpoint vs model): cls_token [1, 1, 64]" in err
    objects = tmp_path / "objects.pt"
    torch.save({"state_dict": tiny_vit().state_dict(), "args": argparse_namespace()}, objects)
    assert main(["compile", "deit_tiny_patch16_224", "--checkpoint", str(objects), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects besides tensors" in err and "weights_only=False" not in err
    assert main(["compile", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_checkpoint_force_and_dynamic_batch(tmp_path):
    out = tmp_path / "out"
    assert _compile_tiny(tmp_path, out, "--verify", "--batch", "3") == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["input_shape"] == [3, 3, 32, 32] and first["verify"]["max_abs_err"] <= 1e-4
    assert _compile_tiny(tmp_path, out, "--force", "--dynamic-batch", "--verify") == 0
    second = json.loads((out / "manifest.json").read_text())
    assert second["input_shape"][0] == "batch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.pt"]  # no staging leftovers


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT installed")  # its type stubs alone do not count
def test_trt_backend_missing_exits_2(tmp_path):
    result = run_cli("compile", "deit_tiny_patch16_224", "--backend", "trt", "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "TensorRT is not installed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_import_vitrt_stays_light():
    code = ("import sys, vitrt, vitrt.compiler.backends, vitrt.transforms, vitrt.pipeline, vitrt.kernels, vitrt.calib, vitrt.benchmarks, vitrt.cli; "
            "bad = [m for m in ('tensorrt', 'modelopt', 'pycuda') if m in sys.modules]; "
            "torch = sys.modules.get('torch'); bad += ['cuda initialised'] if torch and torch.cuda.is_initialized() else []; "
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_compile_digits_reference_by_name(tmp_path, capsys):
    """`vitrt compile digits` compiles the shipped digits reference (real weights) and reports its real top-1."""
    assert main(["compile", "digits", "-o", str(tmp_path / "d"), "--eval-data", "digits", "--verify"]) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["model"] == "digits" and manifest["input_shape"] == [1, 3, 32, 32]
    assert manifest["verify"]["ok"] and manifest["accuracy"]["real"]["top1_compiled"] > 0.98
    assert "98.89 % (dense 98.89 %) on 450 images of digits:test" in capsys.readouterr().out
    # what a server must do to an image: the digits pipeline's normalisation, not ImageNet's
    assert manifest["preprocessing"]["mean"] == [0.5] * 3 and manifest["preprocessing"]["crop_pct"] == 1.0
    assert main(["compile", "digits", "-o", str(tmp_path / "e"), "--img-size", "64"]) == 2
    assert "--img-size does not apply to digits" in capsys.readouterr().err and not (tmp_path / "e").exists()
    # every command takes the reference's other spellings (vitrt synth digits-reference, sensitivity digits_reference)
    assert main(["compile", "digits-reference", "-o", str(tmp_path / "e"), "--img-size", "64"]) == 2
    assert "--img-size does not apply to digits" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--metric-set", "synth:{missing}"], "--metric-set 'synth:{missing}' is neither digits"),
    (["--eval-data", "{missing}"], "--eval-data '{missing}' is neither digits nor an existing directory (an ImageF"),
    (["--metric-set", "synth:{set}/images"], "not a synthetic metric set (no metadata.json); the set is its parent: "
                                             "synth:{set}"),
    (["--metric-set", "{set}"], "is a synthetic metric set, not an ImageFolder: name it synth:{set}"),
    (["--dcvit-macs", "0.7", "--data", "digits", "--dcvit-metric", "{missing}"], "--dcvit-metric '{missing}'"),
    # real top-1 on images grown from assigned labels reads 100 %: not an accuracy (it was computed and reported)
    (["--eval-data", "synth:{set}"], "--eval-data must be labelled data (digits or an ImageFolder PATH): it measures "
                                     "real top-1; its data-free estimate is --metric-set synth:{set}"),
    (["--eval-data", "synthetic"], "--eval-data must be labelled data"),  # refused after the compile before
])
def test_data_options_are_checked_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
    """A wrong data path is refused in one line before the model is even loaded (not after hours of planning)."""
    def load_source(*args):
        raise AssertionError("the model was loaded before the data options were checked")

    monkeypatch.setattr("vitrt.pipeline.driver.load_source", load_source)
    fake_set = tmp_path / "set"
    (fake_set / "images" / "0").mkdir(parents=True)
    (fake_set / "metadata.json").write_text("{}")
    names = {"missing": str(tmp_path / "nope"), "set": str(fake_set)}
    argv = ["compile", "digits", "-o", str(tmp_path / "out")] + [f.format(**names) for f in flags]
    assert main(argv) == 2
    assert message.format(**names) in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_reference_output_is_checked_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["reference", "-o", str(tmp_path / "w")]) == 2
    assert "add --retrain" in capsys.readouterr().err
    assert main(["reference", "--retrain", "-o", str(tmp_path / "file")]) == 2  # refused at once, not after training
    assert "exists and is not a directory" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    assert main(["reference", "--retrain", "-o", str(tmp_path / "full")]) == 2  # the --force it names exists
    assert "pass --force to replace it" in capsys.readouterr().err
    assert main(["reference", "--force"]) == 2 and "add -o" in capsys.readouterr().err


def test_prune_plan_takes_the_digits_reference_by_name(tmp_path, capsys):
    lut = DIGITS_LUT
    assert main(["prune-plan", "digits", "--prune", "0.7", "--lut", str(lut), "--batch", "8", "--quiet",
                 "-o", str(tmp_path / "plan.json")]) == 0
    assert len(json.loads((tmp_path / "plan.json").read_text())["emb"]) == 64 and "plan: emb" in capsys.readouterr().out
    # the compile options prune-plan does not act on are not offered (they were accepted and ignored)
    for ignored in (["--tome", "2"], ["--lowrank", "0.9"], ["--eval-data", "digits"], ["--dynamic-batch"]):
        with pytest.raises(SystemExit) as exc:
            main(["prune-plan", "digits", "--prune", "0.7", "--lut", str(lut), *ignored, "-o", str(tmp_path / "x")])
        assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    (tmp_path / "plans").mkdir()
    for args, message in ((["--force"], "is a directory"), (["--prune-samples", "0"], "--prune-samples must be")):
        assert main(["prune-plan", "digits", "--prune", "0.7", "--lut", str(lut), "--batch", "8", "--quiet", *args,
                     "-o", str(tmp_path / "plans")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not list((tmp_path / "plans").iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--bench-iters", "5"], "--bench-iters acts only with --bench"),
    (["--eta", "0.1"], "--eta acts only with --prune, --prune-plan, --revit or --dcvit-macs"),
    (["--distill-data", "digits"], "--distill-data acts only with --distill-epochs"),
    (["--tome-lut", "lut.json"], "--tome-lut acts only with --tome-latency"),
    (["--lowrank-plan", "p.json", "--lowrank-layers", "blocks.0.*"], "--lowrank-layers acts only with --lowrank or"),
    (["--sparse-min-weights", "5"], "--sparse-min-weights acts only with --sparsity 2:4"),
    (["--sparsity", "2:4", "--sparse-data", "digits"], "--sparse-data acts only with --sparse-finetune-epochs"),
    (["--lowrank", "0.9", "--lowrank-data", "digits"], "--lowrank-data acts only with --lowrank-finetune-epochs"),
    (["--calib-method", "entropy"], "--calib-method acts only with --precision int8 or fp8"),
    (["--timing-cache", "t.cache"], "--timing-cache acts only with --backend trt"),
    # distillation runs before low rank, 2:4 and int8: it would fine-tune the dense model, recovering nothing
    (["--distill-epochs", "1"], "--distill-epochs fine-tunes a pruned or token-merged model"),
    (["--lowrank", "0.9", "--distill-epochs", "1"], "nothing before it compresses; low rank, 2:4 and int8 have"),
])
def test_an_option_given_without_what_it_acts_through_is_refused(tmp_path, capsys, flags, message):
    """Accepted and silently ignored before (review): each names what it needs, and nothing is written."""
    assert main(["compile", "digits", "-o", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def corrupt_out(tmp_path_factory):
    """A digits OUT whose artifact was overwritten (a disk error, a stray copy)."""
    import vitrt

    out = tmp_path_factory.mktemp("corrupt") / "OUT"
    vitrt.compile("digits", out, batch=1, quiet=True)
    (out / "model.ort.onnx").write_bytes(b"not a model")
    return out


@pytest.mark.parametrize("args, message", [
    (["compile", "digits", "-o", "{tmp}/o", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["compile", "deit_tiny_patch16_224", "-o", "{tmp}/o", "--batch", "100000000", "--quiet"],
     "out of memory (Unable to allocate"),
    (["bench", "digits", "--clock", "cpu", "--iterations", "2"], "--clock cpu measures the caller thread's CPU time"),
    (["lut", "build", "--grid", "tiny", "--precision", "bf16", "-o", "{tmp}/lut.json"], "--precision bf16 needs"),
    (["bench", "{corrupt}", "--batch", "1", "--iterations", "2"], "model.ort.onnx' as an ONNX model"),
    (["lint-trt", "{corrupt}/model.ort.onnx"], "as an ONNX model"),
    (["lint-trt", "--rules", "{corrupt}/model.onnx"], "--rules lists the rules and reads no model"),
    (["bench", "digits", "--device", "cuda", "--iterations", "2"], "--device applies to the torch backend"),
    (["bench", "digits", "--backend", "ort", "--torch-compile", "default"], "--torch-compile applies to the torch"),
    (["bench", "digits", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
])
def test_what_raised_a_traceback_is_one_line(tmp_path, capsys, corrupt_out, args, message):
    """Bad input that used to end in a traceback (numpy's seed or allocation error, a CUDA driver probe, ONNX
    Runtime's missing bf16 kernel, protobuf's DecodeError) is one line with exit 2, and writes nothing."""
    assert main([a.format(tmp=tmp_path, corrupt=corrupt_out) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []
