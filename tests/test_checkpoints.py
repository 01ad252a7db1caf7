"""Checkpoints: a resumed run continues identically, `test_eval: selected` keeps the selected epoch
across a resume, a checkpoint cannot run code when loaded, the local run's `best` checkpoint."""

from __future__ import annotations

import pytest
import torch
from rigs import assert_state_dicts_equal, run, tiny

from dncml.trainers import divide_and_conquer as dnc
from dncml.trainers import embedding
from dncml.trainers.checkpoints import load_checkpoint
from dncml.trainers.seam import LocalRun

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupted(Exception):
    pass


def interrupted_run(spec, root, data, after_epoch: int = 1) -> LocalRun:
    """A run stopped right after `after_epoch` was reported (its checkpoints in root / "run",
    scratch in root / "tmp"); the LocalRun that kept them."""
    local = LocalRun(root / "run", printer=None)

    def interrupting(metrics, checkpoint):
        local(metrics, checkpoint)
        if metrics["epoch"] == after_epoch:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(spec, root / "tmp", data, report=interrupting)
    return local


@pytest.mark.parametrize("source", ["full_pass", "training_pass"])
def test_resume_continues_identically(source, tmp_path, tiny_data):
    # T = 2: epoch 2 re-clusters from the restored assignment (and, for training_pass, the
    # restored bank of vectors from epochs 0 and 1).
    spec = tiny(embedding_source=source, T=2, epochs=3, finetune_epochs=0, steps_per_epoch=4, eval_every=10)
    straight, _, straight_model = run(spec, tmp_path / "straight", tiny_data)

    local = interrupted_run(spec, tmp_path, tiny_data)
    checkpoint = local.latest_checkpoint()
    assert checkpoint is not None and checkpoint.endswith("epoch-0001")
    assert [m["loss"] for m in local.history] == [m["loss"] for m in straight[:2]]

    resumed, state, resumed_model = run(spec, tmp_path / "tmp", tiny_data, resume_from=checkpoint)
    assert [m["epoch"] for m in resumed] == [2]
    assert resumed[0]["reclustered"]
    assert resumed[0]["loss"] == straight[2]["loss"]
    assert resumed[0]["cluster_sizes"] == straight[2]["cluster_sizes"]
    assert resumed[0]["cluster_changed"] == straight[2]["cluster_changed"]
    assert len(state.history) == 3
    assert_state_dicts_equal(straight_model, resumed_model)


class SelectEpoch:
    """`dnc.evaluate`, with the validation Recall@1 rigged so that model selection chooses
    `epoch` (a tiny run's own numbers rarely choose an earlier epoch); test metrics are real."""

    def __init__(self, epoch: int):
        self.epoch, self.validations = epoch, 0

    def __call__(self, net, data, spec, device, validation=True, test=True):
        metrics = embedding.evaluate(net, data, spec, device, validation=validation, test=test)
        if validation:
            # rising until the chosen epoch, so that no tie leaves the choice to the data
            metrics["val_recall@1"] = 1.0 if self.validations == self.epoch else 0.5 + 0.01 * self.validations
            self.validations += 1
        return metrics


@pytest.mark.parametrize("selected_epoch", [0, 2])
def test_test_eval_selected_equals_every_eval_at_the_selected_epoch(selected_epoch, tmp_path, tiny_data, monkeypatch):
    """`test_eval: selected` embeds the test set once, on the selected weights; its numbers are the
    ones `every_eval` reports at the selected epoch, also when a resume comes between the two."""
    spec = tiny(epochs=3, finetune_epochs=0, steps_per_epoch=2, eval_every=1)
    monkeypatch.setattr(dnc, "evaluate", SelectEpoch(selected_epoch))
    every, _, every_model = run(tiny(**{**spec.to_dict(), "test_eval": "every_eval"}), tmp_path / "every", tiny_data)
    assert [m["best_epoch"] for m in every] == ([0, 0, 0] if selected_epoch == 0 else [0, 1, 2])
    test_names = [name for name in every[0] if name.startswith("test_")]
    assert {"test_recall@1", "test_nmi", "test_map@r"} <= set(test_names)

    monkeypatch.setattr(dnc, "evaluate", SelectEpoch(selected_epoch))
    selected, _, selected_model = run(spec, tmp_path / "selected", tiny_data)
    assert [m["best_epoch"] for m in selected] == [m["best_epoch"] for m in every]
    assert [m["val_map@r"] for m in selected] == [m["val_map@r"] for m in every]
    for name in test_names:
        assert abs(selected[-1]["selected_" + name] - every[selected_epoch][name]) <= 1e-6, name
    assert not [name for m in selected[:-1] for name in m if name.startswith(("test_", "selected_"))]
    # the last epoch's own test_* only where it is the selected one; its weights stay the last
    assert ("test_recall@1" in selected[-1]) == (selected_epoch == 2)
    assert_state_dicts_equal(every_model, selected_model)

    # Interrupted after epoch 1 and resumed: the checkpoint carries the selected weights.
    monkeypatch.setattr(dnc, "evaluate", SelectEpoch(selected_epoch))
    local = interrupted_run(spec, tmp_path, tiny_data)
    resumed, _, _ = run(spec, tmp_path / "tmp", tiny_data, resume_from=local.latest_checkpoint())
    assert [m["epoch"] for m in resumed] == [2]
    for name in test_names:
        assert abs(resumed[-1]["selected_" + name] - every[selected_epoch][name]) <= 1e-6, name


class _Payload:
    """A pickled object that would run code when unpickled (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path, tiny_data):
    spec = tiny(epochs=1, finetune_epochs=0, steps_per_epoch=1, eval_every=10)
    _, _, model = run(spec, tmp_path / "run", tiny_data)
    checkpoint = next((tmp_path / "run").glob("epoch-*"))
    assert load_checkpoint(checkpoint)["state"].epoch == 1  # ours: tensors and plain data, read safely
    marker = tmp_path / "pwned"
    torch.save({"model": model, "state": _Payload(marker)}, checkpoint / "state.pt")
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(checkpoint)
    assert not marker.exists()


def test_local_run_keeps_the_selected_epoch_across_a_resume(tmp_path):
    """The `best` checkpoint is the epoch model selection chose (the trainer's best_epoch, which a
    resume restores), not the first epoch a fresh reporter sees after a resume."""

    def checkpoint(epoch):
        directory = tmp_path / f"staging-{epoch}"
        directory.mkdir()
        (directory / "state.pt").write_text(str(epoch))
        return str(directory)

    first = LocalRun(tmp_path / "run", printer=None)
    first({"epoch": 0, "best_epoch": 0, "val_recall@1": 0.9}, checkpoint(0))
    first({"epoch": 1, "best_epoch": 0, "val_recall@1": 0.8}, checkpoint(1))
    resumed = LocalRun(tmp_path / "run", printer=None)  # a new process after an interruption
    resumed({"epoch": 2, "best_epoch": 0, "val_recall@1": 0.7}, checkpoint(2))
    assert (tmp_path / "run" / "checkpoints" / "best" / "state.pt").read_text() == "0"
    resumed({"epoch": 3, "best_epoch": 3, "val_recall@1": 0.95}, checkpoint(3))
    assert (tmp_path / "run" / "checkpoints" / "best" / "state.pt").read_text() == "3"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch-*"))[-1] == "epoch-0003"
    assert resumed.latest_checkpoint() is None  # these stand-ins hold no tensors: none can be resumed from
