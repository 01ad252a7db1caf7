"""The names of the evaluation metrics: built here for `evaluation.py`, which produces them, and
predicted here for a run from its dataset's declaration (`registry.DATASETS`), before any data is
read. Everyone else who names a metric (validation, the trainer's model selection, the store,
the progress lines, the experiments) imports it from here.

An evaluation set `name` (`val`, `test`, VehicleID's `test_small`, ...) reports
`<name>_recall@<K>` for each of its Recall@K, `<name>_nmi` and `<name>_map@r`.

Light: no torch, no numpy (validation imports it).
"""

from __future__ import annotations

from typing import Any

from .registry import DATASETS

VALIDATION = "val"  # the split carved from train for model selection
TEST = "test"  # the test set of every dataset but VehicleID
NMI = "nmi"
MAP_AT_R = "map@r"


def set_prefix(eval_set: str) -> str:
    """What the metrics of evaluation set `eval_set` start with: `test` -> `test_`."""
    return f"{eval_set}_"


def recall_key(k: int, prefix: str = "") -> str:
    return f"{prefix}recall@{k}"


def nmi_key(prefix: str = "") -> str:
    return prefix + NMI


def map_at_r_key(prefix: str = "") -> str:
    return prefix + MAP_AT_R


def eval_set_keys(recall_ks: tuple[int, ...] | list[int], prefix: str = "") -> list[str]:
    """The keys one evaluation reports (`evaluation.evaluate_embeddings`), in its order."""
    return [recall_key(k, prefix) for k in recall_ks] + [nmi_key(prefix), map_at_r_key(prefix)]


def dataset_metric_names(dataset: str, validation: bool = True) -> list[str]:
    """The evaluation metrics a run on `dataset` reports: the validation set's (when there is
    one) and each declared test set's, with the declared Recall@K."""
    info = DATASETS.info(dataset)
    sets = ([VALIDATION] if validation else []) + list(info.test_sets)
    return [key for name in sets for key in eval_set_keys(info.recall_ks, set_prefix(name))]


def metric_names(spec: Any) -> list[str]:
    """The evaluation metrics a run of this RunSpec reports (known before any data is read)."""
    return dataset_metric_names(spec.dataset, validation=spec.val_fraction > 0)


def selected_key(name: str) -> str:
    """A test metric measured on the weights model selection chose (`test_eval: selected`)."""
    return f"selected_{name}"


def best_key(name: str) -> str:
    """The best value so far of the selection metric `name`."""
    return f"best_{name}"


# The default model-selection metric (`RunSpec.selection_metric`, an experiment's `metric`).
SELECTION_METRIC = recall_key(1, set_prefix(VALIDATION))
# Model selection: an exact tie on the selection metric goes to the finer MAP@R.
TIE_BREAKER = map_at_r_key(set_prefix(VALIDATION))
# The metrics a progress line shows, where an epoch reports them.
PROGRESS_METRICS = (
    SELECTION_METRIC,
    recall_key(1, set_prefix(TEST)),
    nmi_key(set_prefix(TEST)),
    map_at_r_key(set_prefix(TEST)),
)
