"""The compiled artifact's accuracy: the data-free estimate on a metric set and, where labels exist, real top-1.

``--metric-set DATA`` (typically ``synth:SET`` from ``vitrt synth``): DC-ViT's metric loss — KL(dense ‖ artifact)
of the outputs on the set — with the cross entropy against the set's labels (a synthetic set's assigned classes;
the dense model's argmax for data without labels) and the fraction still classified as labelled, for the
artifact and for the dense model.
``--eval-data DATA``: top-1 and cross entropy of the artifact and of the dense model on DATA's test split (digits:
the 450 test images; an ImageFolder: the folder), and the artifact's KL(dense ‖ artifact) there — the metric loss
on real images, finer than top-1 where a few hundred images leave top-1 tied. Both run the artifact through its
backend runner, so what is measured is what ships.
"""

from __future__ import annotations

from vitrt.calib.data import in_memory, load_data
from vitrt.calib.evaluate import runner_logits, top1, torch_logits
from vitrt.calib.synthesis import MetricSet, grown_from, metric_loss
from vitrt.calib.synthesis_config import SYNTH_PREFIX
from vitrt.compiler.errors import DataError


def artifact_accuracy(runner, dense, *, metric_set: str | None, eval_data: str | None, seed: int = 0,
                      preprocessing: dict | None = None) -> dict:
    """The manifest's ``accuracy`` section for the artifact behind ``runner``; ``dense``: the untransformed twin;
    ``preprocessing``: the model's input pipeline, for ImageFolder data."""
    img = dense.spec.img
    out: dict = {}
    if metric_set is not None:
        data = load_data(metric_set, img, seed=seed, preprocessing=preprocessing, in_chans=dense.spec.in_chans)
        metric = MetricSet.of(in_memory(data, f"metric set '{metric_set}'"), dense)
        out["metric"] = {"data": metric_set, "images": len(metric),
                         "compiled": metric.loss(runner_logits(runner, metric.as_image_set())),
                         "dense": metric.loss(metric.dense_logits)}
        if metric_set.startswith(SYNTH_PREFIX):  # another model's set loads too: say whether it is this one's
            out["metric"]["grown_from_this_model"] = grown_from(dense, metric_set.removeprefix(SYNTH_PREFIX))
    if eval_data is not None:
        data = load_data(eval_data, img, split="test", seed=seed, preprocessing=preprocessing,
                         num_classes=dense.spec.num_classes, in_chans=dense.spec.in_chans)
        test = in_memory(data, f"evaluation data '{eval_data}'")
        if test.labels is None:
            raise DataError(f"--eval-data '{eval_data}' has no labels: pass labelled data (digits or an ImageFolder)")
        compiled, reference = runner_logits(runner, test), torch_logits(dense, test)
        divergence = metric_loss(compiled, test.labels, reference)
        out["real"] = {"data": f"{eval_data}:test" if eval_data == "digits" else eval_data, "images": len(test),
                       "top1_compiled": round(top1(compiled, test.labels), 6),
                       "top1_dense": round(top1(reference, test.labels), 6),
                       "ce_compiled": divergence["ce"],
                       "ce_dense": metric_loss(reference, test.labels, reference)["ce"],
                       "kl_to_dense": divergence["loss"]}
    return out
