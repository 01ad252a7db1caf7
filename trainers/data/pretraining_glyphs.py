"""The pre-training set for GlyphNet: the embedded dataset's analogue of ImageNet.

The paper fine-tunes an ImageNet-pretrained backbone on classes ImageNet never had as such. Here
the backbone is pre-trained by classification on glyph classes that are in *neither* the train
nor the test split of the `glyphs` dataset: code points that the DejaVu faces draw but that are
not eligible for `glyphs` (which takes categories L*, N*, S* drawn by all 12 faces). Those are
drawn by 4 to 11 of the faces (most by the four DejaVu Sans faces), plus punctuation (category
P*), which `glyphs` never uses. A code point whose NFKC form equals that of an eligible code point
(a superscript or full-width twin of a letter, say) is left out too, so no `glyphs` class is seen
in another guise.

Rendering is the `glyphs` renderer (same placement, augmentations and image size); each class
has `images_per_face` images per face that draws it. Deterministic for its seed, cached like the
glyph render.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..files import publishing_dir
from .base import DatasetError, default_cache_dir
from .glyphs import GLYPH_FACES, NUM_FACES, RENDER_VERSION, GlyphConfig, _eligible, _faces, _render_class, face_paths

MIN_FACES = 4  # a class needs this many faces drawing it (style variation within the class)
CATEGORIES = "LNSP"


@dataclass(frozen=True)
class PretrainingSet:
    """Which classes and images: every qualifying code point, `images_per_face` per face."""

    images_per_face: int = 2
    image_size: int = 32
    seed: int = 0
    max_classes: int | None = None  # None: every qualifying code point; else a spread subset (tests)

    @property
    def key(self) -> str:
        limit = "" if self.max_classes is None else f"-c{self.max_classes}"
        return f"v{RENDER_VERSION}-f{MIN_FACES}-i{self.images_per_face}-s{self.image_size}-seed{self.seed}{limit}"

    def classes(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        chosen = pretraining_classes()
        if self.max_classes is None or self.max_classes >= len(chosen):
            return chosen
        return tuple(chosen[i] for i in np.linspace(0, len(chosen) - 1, self.max_classes).astype(int))


@functools.lru_cache(maxsize=1)
def _face_cmaps() -> tuple[frozenset[int], ...]:
    from fontTools.ttLib import TTFont

    cmaps = []
    for path in face_paths():
        font = TTFont(str(path), lazy=True)
        try:
            cmaps.append(frozenset(font.getBestCmap()))
        finally:
            font.close()
    return tuple(cmaps)


def _nfkc(cp: int) -> str:
    return unicodedata.normalize("NFKC", chr(cp))


@functools.lru_cache(maxsize=1)
def pretraining_classes() -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(code point, the indices into GLYPH_FACES of the faces that draw it) for every
    pre-training class, sorted by code point. Raises DatasetError if one of them is a `glyphs`
    class (or its NFKC twin): the backbone must never have seen a train or test class."""
    eligible = set(_eligible())
    twins = {_nfkc(cp) for cp in eligible}
    cmaps = _face_cmaps()
    chosen = []
    for cp in sorted(set().union(*cmaps) - eligible):
        if unicodedata.category(chr(cp))[0] not in CATEGORIES or _nfkc(cp) in twins or not chr(cp).strip():
            continue
        faces = tuple(f for f, cmap in enumerate(cmaps) if cp in cmap)
        if len(faces) >= MIN_FACES:
            chosen.append((cp, faces))
    check_disjoint([cp for cp, _ in chosen])
    return tuple(chosen)


def check_disjoint(code_points) -> None:
    """The pre-training classes must share no code point (nor NFKC form) with the `glyphs`
    classes, which hold every train and test class of every `glyphs` config."""
    eligible = set(_eligible())
    overlap = sorted(set(code_points) & eligible)
    twins = {_nfkc(cp) for cp in eligible}
    overlap += sorted(cp for cp in set(code_points) - eligible if _nfkc(cp) in twins)
    if overlap:
        shown = ", ".join(f"U+{cp:04X}" for cp in overlap[:8])
        raise DatasetError(
            f"pre-training classes overlap the glyphs train / test classes ({len(overlap)}: {shown}); "
            "a backbone pre-trained on them would have seen evaluation classes"
        )


def render_pretraining_set(config: PretrainingSet, progress: bool = False) -> dict[str, np.ndarray]:
    """images uint8 (n, H, W), labels int64 (n,) 0..C-1, code_points int64 (C,)."""
    from tqdm import tqdm

    classes = config.classes()
    glyph_config = GlyphConfig(instances_per_class=NUM_FACES * config.images_per_face, image_size=config.image_size, seed=config.seed)
    all_faces = _faces(2 * config.image_size)
    images, labels = [], []
    for label, (cp, face_ids) in enumerate(tqdm(classes, desc="pre-training glyphs", unit="class", disable=not progress)):
        rendered = _render_class(cp, tuple(all_faces[f] for f in face_ids), glyph_config)
        images.append(rendered[: len(face_ids) * config.images_per_face])
        labels.append(np.full(len(images[-1]), label, dtype=np.int64))
    return {
        "images": np.concatenate(images),
        "labels": np.concatenate(labels),
        "code_points": np.array([cp for cp, _ in classes], dtype=np.int64),
    }


def prepare_pretraining_set(config: PretrainingSet, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Render once into `<cache>/glyph-pretraining/<key>` (atomically) and return the directory."""
    target = Path(cache_dir or default_cache_dir()) / "glyph-pretraining" / config.key
    if target.is_dir():
        return target
    with publishing_dir(target) as tmp:
        arrays = render_pretraining_set(config, progress)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        meta = {
            "config": asdict(config),
            "faces": list(GLYPH_FACES),
            "min_faces": MIN_FACES,
            "categories": CATEGORIES,
            "classes": int(len(arrays["code_points"])),
            "images": int(len(arrays["images"])),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return target


def load_pretraining_set(config: PretrainingSet, cache_dir: Path | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    path = prepare_pretraining_set(config, cache_dir, progress)
    try:
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in ("images", "labels", "code_points")}
    except (OSError, ValueError) as error:
        raise DatasetError(f"glyph pre-training cache {path} is damaged ({error}); delete it to render again") from None
    check_disjoint(arrays["code_points"].tolist())
    return arrays
