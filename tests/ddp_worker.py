"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: the shared trainer on a tiny ViT.

Each rank trains the same tiny twin (2:4 masks on the fc1 weights, hard labels + feature mimicry) on a labelled
synthetic set and saves its final state and loss history to ``OUT/rank<R>.pt`` (a test artefact: the check is
that the ranks end identical, so every rank must write its own).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_vit  # noqa: E402

from vitrt.calib.digits import ImageSet  # noqa: E402
from vitrt.calib.losses import FeatureMimic, HardLabel, Objective  # noqa: E402
from vitrt.calib.trainer import TrainConfig, train  # noqa: E402
from vitrt.compiler.distributed import finish, world  # noqa: E402
from vitrt.compiler.models import canonicalize  # noqa: E402


def main(out: Path) -> None:
    rank, size = world() or (0, 1)
    twin = canonicalize(tiny_vit(depth=2))
    teacher = canonicalize(tiny_vit(depth=2)).requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randn(60, 3, 32, 32, generator=generator), torch.randint(0, 10, (60,), generator=generator))
    weight = twin.blocks[0].mlp.fc1.weight
    mask = torch.ones_like(weight, dtype=torch.bool).reshape(weight.shape[0], -1, 4)
    mask[..., :2] = False
    masks = {"blocks.0.mlp.fc1": mask.reshape(weight.shape)}
    objective = Objective(HardLabel(), FeatureMimic(weight=1.0), teacher=teacher)
    seen = []  # the batches this rank trained on: its images' first pixels and the batch sizes

    def counting(student, images, labels):
        seen.append(images[:, 0, 0, 0].clone())
        return objective(student, images, labels)

    result = train(twin, data, counting, TrainConfig(epochs=2, lr=1e-3, batch_size=16, augment=False, seed=0),
                   masks=masks)
    torch.save({"state": twin.state_dict(), "history": result.history, "size": size, "per_feature": result.per_feature,
                "batch_sizes": [len(s) for s in seen], "pixels": torch.cat(seen), "all_pixels": data.images[:, 0, 0, 0]},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    finish(0)  # as the vitrt CLI ends under torchrun
