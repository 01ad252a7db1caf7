"""Embedding passes and evaluation: batches of a split, its embeddings, the metrics of the
validation and test sets, and the training steps' own embeddings (`EmbeddingBank`) that
`embedding_source: training_pass` re-uses for clustering."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.base import DatasetBundle, ImageSplit
from .data.loading import photo_resize, torch_dataset
from .data.torch_dataset import ArrayBatches
from .evaluation import evaluate_embeddings
from .metric_keys import set_prefix
from .model import DivideAndConquerNet
from .runtime import autocast, memory_format, resolve_data_path, resolve_device, to_device
from .spec import RunSpec


def loader(split: ImageSplit, spec: RunSpec, train: bool, batch_sampler=None, indices=None, device: torch.device | None = None):
    """Batches of (images, labels, indices). An in-memory split (glyphs) is gathered and scaled a
    whole batch at a time (`ArrayBatches`); image files go through a DataLoader with the photo
    transforms and `loader_workers` processes: on `data_path` cpu, PIL decodes and augments in
    the workers; on gpu, the workers read bytes and `TensorBatches` decodes and augments whole
    batches on `device` (None: the spec's)."""
    if batch_sampler is None:
        order = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
        batch_sampler = [order[i : i + spec.eval_batch_size] for i in range(0, len(order), spec.eval_batch_size)]
    if split.images is not None:
        return ArrayBatches(split, batch_sampler)
    if resolve_data_path(spec) == "gpu":
        from .data.tensor_path import TensorBatches

        size = spec.resolved_image_size
        return TensorBatches(
            split,
            batch_sampler,
            device or resolve_device(spec),
            train,
            image_size=size,
            resize=photo_resize(size),
            crop_scale=(spec.crop_scale, 1.0),
            workers=spec.loader_workers,
        )
    kwargs = dict(num_workers=spec.loader_workers, pin_memory=torch.cuda.is_available(), persistent_workers=False)
    return DataLoader(torch_dataset(split, spec, train=train), batch_sampler=[list(map(int, b)) for b in batch_sampler], **kwargs)


@torch.inference_mode()
def embed_split(
    net: DivideAndConquerNet,
    split: ImageSplit,
    spec: RunSpec,
    device: torch.device,
    space: str = "embedding",
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """Embeddings (eval transforms, eval mode) of a split or of some of its samples."""
    was_training = net.training
    net.eval()
    chunks = []
    with autocast(spec, device):
        for images, _, _ in loader(split, spec, train=False, indices=indices, device=device):
            chunks.append(net.embed(to_device(images, spec, device), space).float().cpu())
    net.train(was_training)
    width = spec.embedding_dim if space == "embedding" else net.backbone.feature_dim
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, width), np.float32)


def evaluate(
    net: DivideAndConquerNet,
    data: DatasetBundle,
    spec: RunSpec,
    device: torch.device,
    validation: bool = True,
    test: bool = True,
) -> dict[str, float]:
    """Recall@K, NMI and MAP@R on the validation split (model selection) and/or every test set."""
    metrics: dict[str, float] = {}
    sets = ([data.val] if validation and data.val is not None else []) + (list(data.tests) if test else [])
    for eval_set in sets:
        query = embed_split(net, eval_set.query, spec, device)
        gallery = embed_split(net, eval_set.gallery, spec, device) if eval_set.gallery is not None else None
        metrics.update(
            evaluate_embeddings(
                query,
                eval_set.query.labels,
                eval_set.recall_ks,
                gallery,
                eval_set.gallery.labels if eval_set.gallery is not None else None,
                seed=spec.seed,
                prefix=set_prefix(eval_set.name),
            )
        )
    return metrics


class EmbeddingBank:
    """`embedding_source: training_pass`: the cluster-space vectors the training steps already
    computed, so a round needs no extra pass over the data.

    `seen` marks the vectors this worker holds that are recent enough to use; `seen_globally`
    the samples any worker holds one for (every worker knows the global batch of each step), so
    only samples no one saw need a fallback pass. A vector stays usable for `stale_rounds` rounds
    after the one it was computed in (0: only vectors from since the last round)."""

    def __init__(self, num_samples: int, stale_rounds: int = 0):
        self.vectors: np.ndarray | None = None
        self.stale_rounds = stale_rounds
        self.seen = np.zeros(num_samples, dtype=bool)
        self.seen_globally = np.zeros(num_samples, dtype=bool)
        self.age = np.zeros(num_samples, dtype=np.int64)  # rounds since this worker computed it
        self.age_globally = np.zeros(num_samples, dtype=np.int64)

    def record(self, indices: np.ndarray, vectors: torch.Tensor, global_indices: np.ndarray) -> None:
        vectors = vectors.float().cpu().numpy()
        if self.vectors is None:
            self.vectors = np.zeros((len(self.seen), vectors.shape[1]), dtype=np.float32)
        self.vectors[indices] = vectors
        self.seen[indices] = True
        self.age[indices] = 0
        self.seen_globally[global_indices] = True
        self.age_globally[global_indices] = 0

    def reset(self) -> None:
        """A round has used the bank: age every vector by one round."""
        self.age += 1
        self.age_globally += 1
        self.seen &= self.age <= self.stale_rounds
        self.seen_globally &= self.age_globally <= self.stale_rounds

    def state(self) -> dict:
        return {
            "vectors": self.vectors,
            "seen": self.seen,
            "seen_globally": self.seen_globally,
            "age": self.age,
            "age_globally": self.age_globally,
        }

    def load(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def embed_checkpoint(directory: str, split_name: str = "test") -> tuple[ImageSplit, np.ndarray]:
    """The full test-time embeddings of one split, from a saved checkpoint (for users' own
    analysis: `dncml embed`)."""
    from .checkpoints import load_checkpoint, load_checkpoint_spec
    from .data.loading import load_dataset

    spec = load_checkpoint_spec(directory)
    device = resolve_device(spec)
    data = load_dataset(spec, progress=False)
    splits = {"train": data.train, "val": data.val.query if data.val else None, "test": data.tests[0].query}
    split = splits.get(split_name)
    if split is None:
        raise ValueError(f"split {split_name!r} is empty or unknown; choose from train, val, test")
    num_classes = len(np.unique(data.train.labels))
    net = DivideAndConquerNet(spec, data.channels, num_classes).to(device, memory_format=memory_format(spec))
    payload = load_checkpoint(directory, device)
    net.load_state_dict(payload["model"])
    net.undivided = spec.plan.undivided_at(payload["state"].epoch - 1)  # the checkpoint's epoch
    return split, embed_split(net, split, spec, device)
