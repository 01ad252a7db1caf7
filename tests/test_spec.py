"""RunSpec validation: the messages, coercion of overrides, and a spec the data cannot serve failing
before any model is built."""

from __future__ import annotations

import pytest
from rigs import tiny

from dncml.trainers import divide_and_conquer as dnc
from dncml.trainers.seam import Seam
from dncml.trainers.spec import GROUPINGS, SpecError, from_dict, parse_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_spec_validation_messages():
    with pytest.raises(SpecError, match="K must divide"):
        from_dict(dict(K=7, d=64))
    with pytest.raises(SpecError, match="did you mean num_learners"):
        from_dict(dict(num_lerners=4))
    with pytest.raises(SpecError) as error:
        from_dict(dict(grouping="kmean"))
    assert all(name in str(error.value) for name in GROUPINGS)
    with pytest.raises(SpecError, match="multiple of samples_per_class"):
        from_dict(dict(batch_size=18, m=4))
    with pytest.raises(SpecError, match="samples_per_class"):
        from_dict(dict(m=1))
    with pytest.raises(SpecError, match="recluster_every"):
        from_dict(dict(T=0))
    with pytest.raises(SpecError, match="group labels"):
        from_dict(dict(grouping="gt_labels", dataset="cub", data_root="/nonexistent"))
    with pytest.raises(SpecError, match="power of 2"):
        from_dict(dict(hierarchy="binary", K=6, d=96))
    with pytest.raises(SpecError, match="must be int"):
        from_dict(dict(K="eight"))


def test_spec_coercion():
    overrides = parse_overrides(["K=8", "T=3", "lr=1e-4", "amp=yes", "glyph_classes=null", "grouping=random", "d=64"])
    spec = from_dict({}, overrides)
    assert spec.num_learners == 8 and isinstance(spec.num_learners, int)
    assert spec.recluster_every == 3 and spec.embedding_dim == 64
    assert spec.lr == pytest.approx(1e-4) and isinstance(spec.lr, float)
    assert spec.amp is True and spec.glyph_classes is None and spec.grouping == "random"
    assert from_dict(dict(amp="off", freeze_bn=1, learn_beta="False")).amp is False
    assert from_dict(dict(freeze_bn=1)).freeze_bn == "all" and from_dict(dict(freeze_bn=False)).freeze_bn == "none"
    assert from_dict(dict(learn_beta="False")).learn_beta is False
    assert from_dict(dict(K="8")).num_learners == 8
    with pytest.raises(SpecError, match="amp"):
        from_dict(dict(amp="maybe"))
    with pytest.raises(SpecError):
        parse_overrides(["K"])


def test_too_many_learners_for_the_data_fails_before_training(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the spec check")

    monkeypatch.setattr(dnc, "DivideAndConquerNet", no_model)
    spec = tiny(glyph_classes=16, K=4, batch_size=8, m=2)  # 6 training classes: K <= 3
    reports = []
    with pytest.raises(SpecError, match=r"K must be <= training classes / \(2 x 1 worker"):
        dnc.train(spec, Seam(report=lambda m, c: reports.append(m), checkpoint_root=str(tmp_path)))
    assert not reports
    # The baseline has no such limit: it gets as far as building the model.
    with pytest.raises(AssertionError, match="model was built"):
        dnc.train(spec.replace(grouping="none"), Seam(report=lambda m, c: None, checkpoint_root=str(tmp_path)))
