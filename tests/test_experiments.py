"""Experiment specs: every shipped spec and preset loads and validates; bad specs fail early."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dncml.experiments.loader import ExperimentError, list_experiments, load_experiment

SHIPPED = ["budget", "fig1_learners", "hierarchy", "hpo", "t_sensitivity", "table3_losses", "table6_grouping"]


def test_all_experiments_are_shipped():
    assert list_experiments() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_every_preset_validates(name, preset):
    experiment = load_experiment(name, preset)
    assert experiment.preset == preset
    assert experiment.trial_count >= 1
    assert experiment.metric.startswith("val_")
    for point in experiment.grid_points():
        spec = experiment.run_spec(point)  # every grid point is a valid RunSpec
        if preset == "paper":
            assert spec.backbone == "resnet50" and spec.dataset != "glyphs"
        else:
            assert spec.dataset == "glyphs"


def test_table6_has_the_papers_five_rows():
    experiment = load_experiment("table6_grouping", "quick")
    assert experiment.grid["grouping"] == ["none", "random", "gt_labels", "kmeans_nosplit", "kmeans"]
    assert len(experiment.grid["seed"]) >= 3
    assert experiment.run["num_learners"] == 8 and experiment.run["loss"] == "margin"
    assert set(experiment.table["paper"]) == set(experiment.grid["grouping"])
    # a fair comparison: every row starts from the same warm-up and gets the same steps
    specs = [experiment.run_spec(point) for point in experiment.grid_points()]
    assert len({(s.warmup_epochs, s.epochs, s.finetune_epochs, s.steps_per_epoch, s.batch_size) for s in specs}) == 1
    assert specs[0].warmup_epochs >= 1


def _write(tmp_path: Path, card: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


BASE = str(Path(__file__).resolve().parents[1] / "experiments" / "runs" / "glyphs_smoke.yaml")


@pytest.mark.parametrize("card, message", [
    ({"name": "x", "base": BASE, "grid": {"K": [4, 7]}}, "grid point num_learners=7"),
    ({"name": "x", "base": BASE, "grid": {"grouping": ["kmeans", "clever"]}}, "allowed values are none, kmeans"),
    ({"name": "x", "base": BASE, "grid": {"nonsense": [1]}}, "unknown RunSpec field 'nonsense'"),
    ({"name": "x", "base": BASE, "metric": "test_recall@1"}, "select on a validation metric"),
    ({"name": "x", "base": BASE, "grid": {"seed": [0]}, "search": {"lr": {"loguniform": [1e-4, 1e-2]}}},
     "either grid axes"),
    ({"name": "x", "base": BASE, "search": {"lr": {"normal": [0, 1]}}}, "write one of uniform"),
    ({"name": "x", "base": BASE, "search": {"lr": {"loguniform": [0, 1]}}}, "low > 0"),
    ({"name": "x", "base": BASE, "mode": "sideways"}, "allowed values are max, min"),
    ({"name": "x", "base": "missing.yaml"}, "base run 'missing.yaml' not found"),
    ({"name": "x", "base": BASE, "resources": {"gpus": 1}}, "resources: unknown key(s) gpus"),
    ({"name": "x", "base": BASE, "colour": "blue"}, "unknown key(s) colour"),
])
def test_bad_specs_fail_with_a_clear_message(tmp_path, card, message):
    with pytest.raises(ExperimentError) as error:
        load_experiment(_write(tmp_path, card))
    assert message in str(error.value)


def test_unknown_preset_and_experiment():
    with pytest.raises(ExperimentError, match="unknown preset 'huge'; this experiment has: smoke, quick, paper"):
        load_experiment("table6_grouping", "huge")
    with pytest.raises(ExperimentError, match="unknown experiment 'table7'"):
        load_experiment("table7")


def test_preset_layers_override_the_base(tmp_path):
    card = {"name": "layers", "base": BASE, "run": {"lr": 0.5}, "grid": {"seed": [0, 1]},
            "presets": {"smoke": {"run": {"lr": 0.25}, "grid": {"seed": [3]}}}}
    path = _write(tmp_path, card)
    smoke = load_experiment(path, "smoke")
    assert smoke.run["lr"] == 0.25 and smoke.grid == {"seed": [3]}
    assert smoke.run["glyph_classes"] == 96  # from the base run file
    assert load_experiment(path).run["lr"] == 0.5  # no quick preset here: no layer


def test_setting_labels_name_the_row_not_the_seed():
    experiment = load_experiment("table3_losses", "quick")
    assert experiment.rows == ["loss", "grouping"]
    assert experiment.setting_label({"loss": "triplet", "grouping": "kmeans", "seed": 0}) == "loss=triplet,grouping=kmeans"


def test_linked_axis_varies_fields_together():
    """A grid axis whose values are mappings varies several RunSpec fields together (the budget
    experiment's baseline is K = 1, its divide-and-conquer rows K = 4 and 8): no product of
    grouping x K, each point flattened into RunSpec overrides, rows named by the fields."""
    experiment = load_experiment("budget", "quick")
    points = experiment.grid_points()
    assert len(points) == 3 * 4 * 3 == experiment.trial_count
    assert {(p["grouping"], p["num_learners"]) for p in points} == {("none", 1), ("kmeans", 4), ("kmeans", 8)}
    spec = experiment.run_spec({"method": {"grouping": "kmeans", "num_learners": 8}, "epochs": 3, "seed": 1})
    assert (spec.grouping, spec.num_learners, spec.epochs, spec.seed) == ("kmeans", 8, 3, 1)
    assert experiment.setting_label({"method": {"grouping": "none", "num_learners": 1}, "epochs": 7}) == \
        "grouping=none,num_learners=1,epochs=7"
    assert spec.pretrained == "glyphs" and spec.resolved_freeze_bn == "all"
