"""The embedded `glyphs` dataset: Unicode code points drawn by the 12 DejaVu faces of matplotlib.

A class is one code point (Unicode general category L*, N* or S*) that all 12 DejaVu TrueType
faces shipped in ``matplotlib.get_data_path()/fonts/ttf`` draw: Sans, Serif and Sans Mono, each
regular / bold / oblique (italic) / bold-oblique. About 2,200 classes (Latin, Greek, Cyrillic,
Armenian, Georgian, IPA, digits, arrows, box drawing, math, ...).

Instances: ``instances_per_class = 12 * A``; for each face (in ``GLYPH_FACES`` order) there are
``A`` images. The first image of every face is the *clean* render (no augmentation, no noise);
the other ``A - 1`` are seeded augmentations of it: rotation, anisotropic scale, shear,
translation, stroke width (dilation / erosion), contrast and Gaussian pixel noise. So
``instances_per_class=12`` gives the 12 clean faces only. Images are uint8, white glyph (255) on
black (0), ``image_size`` square.

Placement: each glyph is placed by its box = the union of its ink bounding box and its
typographic cell (advance width x font ascent..descent), centred and scaled so the box fits the
image (minus a 1/16 margin each side). For almost every glyph the cell is the larger, so glyphs
keep their size and position relative to the baseline: superscript ``⁰`` vs subscript ``₀``,
``ᵏ`` vs ``ₖ``, ``▔`` vs ``▁``, ``o`` vs ``O`` stay apart. (Measured on the clean renders: with a
fit to the ink box alone 244 classes have a near pixel-identical twin (RMS < 1 grey level over
the 12 faces); with the cell fit 158, nearly all cross-script homoglyphs such as Latin ``A`` /
Greek ``Α`` / Cyrillic ``А`` or canonical duplicates such as OHM SIGN / Greek Omega, which the
fonts draw identically.) Glyphs that overflow their cell (wide arrows, tall brackets) are scaled
down to fit.

Groups: each class has a group label (its script or Unicode block family: Latin, Greek,
Cyrillic, arrows, box drawing, math, ...). Groups smaller than ``MIN_GROUP_SIZE`` over the full
eligible set are merged into ``other``. Group ids are fixed by the full eligible set, so a
``num_classes`` subset uses the same ids.

Split: train and test are disjoint class sets, about half each; within each group the classes
are shuffled with a seeded rng and alternately given to train and test, so both halves span
every group present. A ``num_classes`` subset is stratified by group (proportional, seeded)
with at least 2 classes per group so both halves span it; when ``num_classes`` < 2 x the number
of groups, only the largest ``num_classes // 2`` groups are kept. The validation split is carved
from train by the trainer.

Deterministic: each class draws from ``np.random.default_rng([seed, code_point])``, so the same
config gives byte-identical arrays and a subset does not change any other class's images.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..files import publishing_dir
from ..registry import DATASETS
from .base import DatasetBundle, DatasetError, EvalSet, ImageSplit, default_cache_dir

GLYPH_RECALL_KS = DATASETS.info("glyphs").recall_ks

# The 12 faces, in instance order (the face index of an image is its position here).
GLYPH_FACES = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
)
NUM_FACES = len(GLYPH_FACES)

# Bump when the rendering or the grouping changes: it is part of the cache key.
RENDER_VERSION = 1

MIN_GROUP_SIZE = 20
ARRAY_NAMES = ("images", "labels", "groups", "faces", "code_points", "class_groups", "split")
_MARGIN = 1.0 / 16.0  # of the image side, each side

# Group names in id order (ids of groups that end up empty or merged are dropped, then renumbered).
_GROUP_ORDER = (
    "Latin",
    "Latin extended",
    "IPA & phonetic",
    "Greek",
    "Greek polytonic",
    "Cyrillic",
    "Armenian",
    "Georgian",
    "Hebrew",
    "Arabic",
    "numbers",
    "accents & modifiers",
    "arrows",
    "math operators",
    "box drawing",
    "block elements",
    "geometric shapes",
    "other",
)

# (first, last, group) for letters (category L*), by Unicode block.
_LETTER_BLOCKS = (
    (0x0000, 0x024F, None),  # resolved below: Latin / Latin extended
    (0x0250, 0x02FF, "IPA & phonetic"),  # IPA Extensions, Spacing Modifier Letters
    (0x0370, 0x03FF, "Greek"),
    (0x0400, 0x052F, "Cyrillic"),
    (0x0530, 0x058F, "Armenian"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x10A0, 0x10FF, "Georgian"),
    (0x1D00, 0x1DBF, "IPA & phonetic"),  # Phonetic Extensions (+ Supplement)
    (0x1E00, 0x1EFF, "Latin"),  # Latin Extended Additional (accented basic letters)
    (0x1F00, 0x1FFF, "Greek polytonic"),
    (0x2070, 0x209F, "IPA & phonetic"),  # superscript / subscript letters
    (0x2C60, 0x2C7F, "Latin extended"),
    (0x2D00, 0x2D2F, "Georgian"),
    (0xA640, 0xA69F, "Cyrillic"),
    (0xA700, 0xA71F, "IPA & phonetic"),  # Modifier Tone Letters
    (0xA720, 0xA7FF, "Latin extended"),
    (0xFB00, 0xFB06, "Latin extended"),  # Latin ligatures
)
# (first, last, group) for symbols (category S*), by Unicode block; the rest by category.
_SYMBOL_BLOCKS = (
    (0x2190, 0x21FF, "arrows"),
    (0x27F0, 0x27FF, "arrows"),
    (0x2900, 0x297F, "arrows"),
    (0x2B00, 0x2B0D, "arrows"),
    (0x2500, 0x257F, "box drawing"),
    (0x2580, 0x259F, "block elements"),
    (0x25A0, 0x25FF, "geometric shapes"),
    (0x2B12, 0x2B2F, "geometric shapes"),
)


# ----------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class GlyphConfig:
    """What to render. ``num_classes`` None = every eligible code point, else a deterministic,
    group-stratified subset of that many classes (chosen by ``seed``)."""

    num_classes: int | None = None
    instances_per_class: int = 24
    image_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        ipc = self.instances_per_class
        if not is_int(ipc) or ipc < NUM_FACES or ipc % NUM_FACES:
            raise ValueError(
                f"GlyphConfig.instances_per_class must be a multiple of {NUM_FACES} (the faces) "
                f"and >= {NUM_FACES}: 12, 24, 36, ...; got {ipc!r}"
            )
        if not is_int(self.image_size) or not 16 <= self.image_size <= 128:
            raise ValueError(f"GlyphConfig.image_size must be an integer in [16, 128]; got {self.image_size!r}")
        if self.num_classes is not None and (not is_int(self.num_classes) or self.num_classes < 8):
            raise ValueError(
                f"GlyphConfig.num_classes must be None (all eligible code points) or an integer >= 8; got {self.num_classes!r}"
            )
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"GlyphConfig.seed must be an integer >= 0; got {self.seed!r}")

    @property
    def augmentations_per_face(self) -> int:
        return self.instances_per_class // NUM_FACES

    @property
    def key(self) -> str:
        """Cache directory name: encodes every field and the renderer version."""
        num = "all" if self.num_classes is None else f"c{self.num_classes}"
        return f"v{RENDER_VERSION}-{num}-i{self.instances_per_class}-s{self.image_size}-seed{self.seed}"

    def check(self) -> None:
        """The checks that need the font files: num_classes <= the eligible code points."""
        if self.num_classes is not None:
            total = len(_eligible())
            if self.num_classes > total:
                raise ValueError(
                    f"GlyphConfig.num_classes must be None or in [8, {total}] (the eligible code points); got {self.num_classes}"
                )


# ------------------------------------------------------------------------- code points, groups


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def face_paths() -> list[Path]:
    """The 12 DejaVu .ttf files, in GLYPH_FACES order (DatasetError naming any missing one)."""
    root = font_dir()
    paths = [root / f"{face}.ttf" for face in GLYPH_FACES]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"missing DejaVu font face: expected a file at {path} (matplotlib)")
    return paths


@functools.lru_cache(maxsize=1)
def _eligible() -> tuple[int, ...]:
    from fontTools.ttLib import TTFont

    common: set[int] | None = None
    for path in face_paths():
        font = TTFont(str(path), lazy=True)
        try:
            cps = set(font.getBestCmap())
        finally:
            font.close()
        common = cps if common is None else common & cps
    assert common is not None
    return tuple(sorted(cp for cp in common if unicodedata.category(chr(cp))[0] in "LNS"))


def glyph_code_points() -> list[int]:
    """The eligible code points, sorted: categories L*, N*, S* drawn by all 12 faces."""
    return list(_eligible())


def _raw_group(cp: int) -> str:
    cat = unicodedata.category(chr(cp))
    if cat[0] == "N":
        return "numbers"
    if cat[0] == "L":
        if cp <= 0x024F:
            return "Latin" if cp <= 0x017F else "Latin extended"
        for first, last, group in _LETTER_BLOCKS:
            if first <= cp <= last and group is not None:
                return group
        return "other"  # e.g. letter-like symbols (Ohm, Kelvin, Angstrom signs)
    for first, last, group in _SYMBOL_BLOCKS:
        if first <= cp <= last:
            return group
    if cat == "Sk":
        return "accents & modifiers"
    if cat == "Sm":
        return "math operators"
    return "other"  # currency, misc symbols and technical, letterlike, dingbats


@functools.lru_cache(maxsize=1)
def _group_table() -> tuple[dict[int, str], dict[int, int]]:
    """(group id -> name, code point -> group id) over the full eligible set."""
    cps = _eligible()
    raw = {cp: _raw_group(cp) for cp in cps}
    sizes: dict[str, int] = {}
    for name in raw.values():
        sizes[name] = sizes.get(name, 0) + 1
    merged = {cp: (n if sizes[n] >= MIN_GROUP_SIZE else "other") for cp, n in raw.items()}
    present = [n for n in _GROUP_ORDER if n in set(merged.values())]
    ids = {name: i for i, name in enumerate(present)}
    return {i: n for n, i in ids.items()}, {cp: ids[n] for cp, n in merged.items()}


def glyph_group_names() -> dict[int, str]:
    """Group id -> name (over the full eligible set; a subset uses the same ids)."""
    return dict(_group_table()[0])


def glyph_group_of(code_point: int) -> int:
    """Group id of an eligible code point."""
    return _group_table()[1][code_point]


# ---------------------------------------------------------------------- class choice and split


def _allocate(sizes: list[int], total: int) -> list[int]:
    """Stratified quotas: proportional (largest remainder), >= 2 per group kept, as many groups
    kept as ``total`` allows (the largest ones) so that both split halves span every group."""
    n = sum(sizes)
    order = sorted(range(len(sizes)), key=lambda g: (-sizes[g], g))
    keep = set(order[: max(1, min(len(sizes), total // 2))])
    ideal = [total * s / n for s in sizes]
    quota = [min(sizes[g], max(2, math.floor(ideal[g]))) if g in keep else 0 for g in range(len(sizes))]
    while sum(quota) < total:
        g = max((g for g in keep if quota[g] < sizes[g]), key=lambda g: (ideal[g] - quota[g], -g))
        quota[g] += 1
    while sum(quota) > total:
        g = min((g for g in keep if quota[g] > 2), key=lambda g: (ideal[g] - quota[g], g))
        quota[g] -= 1
    return quota


def select_classes(config: GlyphConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code_points (C,), class_groups (C,), split (C,) int8 0=train 1=test) for a config."""
    config.check()
    _, group_of = _group_table()
    cps = np.array(_eligible(), dtype=np.int64)
    groups = np.array([group_of[int(cp)] for cp in cps], dtype=np.int64)
    group_ids = sorted(set(groups.tolist()))
    if config.num_classes is not None:
        members = [cps[groups == g] for g in group_ids]
        quota = _allocate([len(m) for m in members], config.num_classes)
        chosen = []
        for g, m, q in zip(group_ids, members, quota):
            rng = np.random.default_rng([config.seed, 17, g])
            chosen.append(np.sort(rng.permutation(m)[:q]))
        cps = np.sort(np.concatenate(chosen))
        groups = np.array([group_of[int(cp)] for cp in cps], dtype=np.int64)
    split = np.zeros(len(cps), dtype=np.int8)
    sizes = [0, 0]  # classes given to train, test so far
    for g in sorted(set(groups.tolist())):
        idx = np.random.default_rng([config.seed, 31, g]).permutation(np.flatnonzero(groups == g))
        # alternate, starting on the smaller half so far (an odd group's extra class evens out)
        start = 0 if sizes[0] <= sizes[1] else 1
        split[idx] = ((np.arange(len(idx)) + start) % 2).astype(np.int8)
        sizes[start] += (len(idx) + 1) // 2
        sizes[1 - start] += len(idx) // 2
    return cps, groups, split


# ---------------------------------------------------------------------------------- rendering


class _Face:
    """One font face loaded once at the working resolution, with its cell metrics (pixels)."""

    def __init__(self, path: Path, canvas: int) -> None:
        from fontTools.ttLib import TTFont
        from PIL import ImageFont

        tt = TTFont(str(path), lazy=True)
        try:
            upem = tt["head"].unitsPerEm
            asc, desc = tt["hhea"].ascent, -tt["hhea"].descent
        finally:
            tt.close()
        target = canvas * (1 - 2 * _MARGIN)
        self.size = max(8, int(target * upem / (asc + desc)))
        self.ascent = asc * self.size / upem
        self.descent = desc * self.size / upem
        self.font = ImageFont.truetype(str(path), self.size)
        self.bold = "Bold" in path.stem

    def render(self, ch: str):
        """(glyph image 'L', its origin offset in anchor coords, box centre, box size)."""
        from PIL import Image, ImageDraw

        left, top, right, bottom = self.font.getbbox(ch, anchor="ls")
        w, h = right - left + 4, bottom - top + 4
        img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(img).text((2 - left, 2 - top), ch, fill=255, font=self.font, anchor="ls")
        ox, oy = left - 2, top - 2  # anchor coords of the image's (0, 0)
        x0, y0, x1, y1 = 0.0, -self.ascent, float(self.font.getlength(ch)), self.descent
        ink = img.getbbox()
        if ink is not None:
            x0, y0 = min(x0, ink[0] + ox), min(y0, ink[1] + oy)
            x1, y1 = max(x1, ink[2] + ox), max(y1, ink[3] + oy)
        return img, (ox, oy), ((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0)


@functools.lru_cache(maxsize=4)
def _faces(canvas: int) -> tuple[_Face, ...]:
    return tuple(_Face(path, canvas) for path in face_paths())


def _draw_aug(rng: np.random.Generator, bold: bool) -> dict:
    """One augmentation's parameters (always the same number of draws, in the same order)."""
    u = rng.random(9)
    stroke_u = u[5]
    if bold:
        stroke = -1 if stroke_u < 0.25 else (0 if stroke_u < 0.75 else 1)
    else:
        stroke = 0 if stroke_u < 0.65 else (1 if stroke_u < 0.95 else 2)
    return {
        "rotate": math.radians((u[0] * 2 - 1) * 10.0),  # +-10 degrees
        "scale": 0.85 + 0.20 * u[1],  # 0.85 .. 1.05
        "aspect": math.exp((u[2] * 2 - 1) * 0.06),  # +-6% anisotropy
        "shear": (u[3] * 2 - 1) * 0.20,
        "translate": ((u[4] * 2 - 1) * 1.5, (u[6] * 2 - 1) * 1.5),  # output pixels
        "stroke": stroke,  # -1 erode, 0 none, +1 / +2 dilate (at the working resolution)
        "contrast": 0.8 + 0.2 * u[7],
        "noise": 12.0 * u[8],  # Gaussian sigma, grey levels
    }


def _place(glyph, origin, centre, box, canvas: int, aug: dict | None):
    """Affine-place the glyph image into a canvas x canvas image (box fitted, then augmented)."""
    from PIL import Image

    target = canvas * (1 - 2 * _MARGIN)
    s = min(target / max(box[0], 1e-6), target / max(box[1], 1e-6))
    m = np.eye(2)
    tx = ty = 0.0
    if aug is not None:
        c, sn = math.cos(aug["rotate"]), math.sin(aug["rotate"])
        rot = np.array([[c, -sn], [sn, c]])
        shear = np.array([[1.0, aug["shear"]], [0.0, 1.0]])
        scale = np.diag([aug["scale"] * aug["aspect"], aug["scale"] / aug["aspect"]])
        m = rot @ shear @ scale
        factor = canvas / 32.0  # translation is in 32-px output units
        tx, ty = aug["translate"][0] * factor, aug["translate"][1] * factor
    inv = np.linalg.inv(m) / s
    out_c = np.array([canvas / 2 + tx, canvas / 2 + ty])
    shift = np.array([centre[0] - origin[0], centre[1] - origin[1]]) - inv @ out_c
    data = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])
    return glyph.transform((canvas, canvas), Image.AFFINE, data, resample=Image.BILINEAR)


def _render_class(cp: int, faces: tuple[_Face, ...], config: GlyphConfig) -> np.ndarray:
    """All instances of one class: (instances_per_class, H, W) uint8, face-major order."""
    from PIL import Image, ImageFilter

    size = config.image_size
    canvas = 2 * size
    per_face = config.augmentations_per_face
    rng = np.random.default_rng([config.seed, cp])
    out = np.empty((NUM_FACES * per_face, size, size), dtype=np.uint8)
    ch = chr(cp)
    for f, face in enumerate(faces):
        glyph, origin, centre, box = face.render(ch)
        for a in range(per_face):
            aug = None if a == 0 else _draw_aug(rng, face.bold)
            img = _place(glyph, origin, centre, box, canvas, aug)
            if aug is not None and aug["stroke"]:
                k = 2 * abs(aug["stroke"]) + 1
                img = img.filter(ImageFilter.MaxFilter(k) if aug["stroke"] > 0 else ImageFilter.MinFilter(k))
            img = img.resize((size, size), Image.LANCZOS)
            if aug is None:
                out[f * per_face + a] = np.asarray(img)
                continue
            arr = np.asarray(img, dtype=np.float32) * np.float32(aug["contrast"])
            arr += rng.standard_normal((size, size), dtype=np.float32) * np.float32(aug["noise"])
            out[f * per_face + a] = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return out


def render_glyphs(config: GlyphConfig, progress: bool = False) -> dict[str, np.ndarray]:
    """Render a config in memory.

    Returns images uint8 (n, H, W); labels int64 (n,) class index 0..C-1; groups int64 (n,);
    faces int8 (n,) face index into GLYPH_FACES; code_points int64 (C,); class_groups int64 (C,);
    split int8 (C,) 0=train 1=test. Images are class-major, then face, then augmentation.
    """
    from tqdm import tqdm

    code_points, class_groups, split = select_classes(config)
    faces = _faces(2 * config.image_size)
    per_class = config.instances_per_class
    n_classes = len(code_points)
    images = np.empty((n_classes * per_class, config.image_size, config.image_size), np.uint8)
    for c, cp in enumerate(tqdm(code_points.tolist(), desc="glyphs", unit="class", file=sys.stderr, disable=not progress)):
        images[c * per_class : (c + 1) * per_class] = _render_class(cp, faces, config)
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    face_ids = np.tile(np.repeat(np.arange(NUM_FACES, dtype=np.int8), config.augmentations_per_face), n_classes)
    return {
        "images": images,
        "labels": labels,
        "groups": class_groups[labels],
        "faces": face_ids,
        "code_points": code_points,
        "class_groups": class_groups,
        "split": split,
    }


# ------------------------------------------------------------------------------ cache on disk


def glyphs_cache_path(config: GlyphConfig, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "glyphs" / config.key


def _meta(config: GlyphConfig, arrays: dict[str, np.ndarray]) -> dict:
    import PIL
    from PIL import features

    names = glyph_group_names()
    split = arrays["split"]
    counts = {
        "classes": int(len(arrays["code_points"])),
        "train_classes": int((split == 0).sum()),
        "test_classes": int((split == 1).sum()),
        "images": int(len(arrays["images"])),
        "classes_per_group": {names[int(g)]: int((arrays["class_groups"] == g).sum()) for g in np.unique(arrays["class_groups"])},
    }
    return {
        "dataset": "glyphs",
        "render_version": RENDER_VERSION,
        "config": asdict(config),
        "faces": list(GLYPH_FACES),
        "group_names": {str(k): v for k, v in names.items()},
        "counts": counts,
        "eligible_code_points": len(_eligible()),
        "instance_order": "class-major; per face: instance 0 clean, the rest augmented",
        "versions": {
            "pillow": PIL.__version__,
            "freetype": features.version("freetype2"),
            "numpy": np.__version__,
            "unicodedata": unicodedata.unidata_version,
        },
    }


def prepare_glyphs(config: GlyphConfig, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Render a config once into ``<cache>/glyphs/<config.key>`` and return that directory.

    Files: one ``<name>.npy`` per array (np.save: byte-deterministic), ``meta.json`` (sorted
    keys, deterministic): two renders of one config give byte-identical directories.
    Atomic: rendered into a temporary directory beside the target, then renamed; an existing
    target is reused as is.
    """
    config.check()
    target = glyphs_cache_path(config, cache_dir)
    if target.is_dir():
        return target
    with publishing_dir(target) as tmp:
        arrays = render_glyphs(config, progress=progress)
        for name in ARRAY_NAMES:
            np.save(tmp / f"{name}.npy", arrays[name], allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(_meta(config, arrays), indent=2, sort_keys=True) + "\n")
    return target


def _read_cache(path: Path, config: GlyphConfig) -> tuple[dict[str, np.ndarray], dict]:
    hint = f"; delete the directory {path} to re-render it"
    arrays: dict[str, np.ndarray] = {}
    for name in ARRAY_NAMES:
        file = path / f"{name}.npy"
        if not file.is_file():
            raise DatasetError(f"glyphs cache is incomplete: missing {file}{hint}")
        try:
            arrays[name] = np.load(file, allow_pickle=False)
        except Exception as exc:  # truncated / garbage file
            raise DatasetError(f"glyphs cache file {file} is corrupted ({exc}){hint}") from exc
    meta_file = path / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
        group_names = {int(k): str(v) for k, v in sorted(meta["group_names"].items(), key=lambda kv: int(kv[0]))}
    except Exception as exc:
        raise DatasetError(f"glyphs cache file {meta_file} is missing or corrupted ({exc}){hint}") from exc
    n_classes = len(arrays["code_points"])
    n = n_classes * config.instances_per_class
    size = config.image_size
    expected = {
        "images": ((n, size, size), np.uint8),
        "labels": ((n,), np.int64),
        "groups": ((n,), np.int64),
        "faces": ((n,), np.int8),
        "code_points": ((n_classes,), np.int64),
        "class_groups": ((n_classes,), np.int64),
        "split": ((n_classes,), np.int8),
    }
    for name, (shape, dtype) in expected.items():
        arr = arrays[name]
        if arr.shape != shape or arr.dtype != dtype:
            raise DatasetError(
                f"glyphs cache file {path / (name + '.npy')} has shape {arr.shape} {arr.dtype}, expected {shape} {np.dtype(dtype)}{hint}"
            )
    if n_classes == 0 or arrays["labels"].min() < 0 or arrays["labels"].max() >= n_classes:
        raise DatasetError(f"glyphs cache file {path / 'labels.npy'} holds bad labels{hint}")
    return arrays, group_names


def load_glyphs(config: GlyphConfig, cache_dir: Path | None = None, progress: bool = True) -> DatasetBundle:
    """Prepare (if needed) and load: train = the train classes, one test EvalSet (query = the
    test classes, no gallery), val None (the trainer carves it from train)."""
    path = prepare_glyphs(config, cache_dir, progress=progress)
    arrays, group_names = _read_cache(path, config)
    in_test = arrays["split"][arrays["labels"]] == 1

    def part(name: str, mask: np.ndarray) -> ImageSplit:
        idx = np.flatnonzero(mask)
        return ImageSplit(name=name, labels=arrays["labels"][idx], images=arrays["images"][idx], groups=arrays["groups"][idx])

    test = EvalSet("test", query=part("test", in_test), gallery=None, recall_ks=GLYPH_RECALL_KS)
    return DatasetBundle(
        name="glyphs",
        train=part("train", ~in_test),
        tests=[test],
        recall_ks=GLYPH_RECALL_KS,
        channels=DATASETS.info("glyphs").channels,
        group_names=group_names,
        class_names={c: f"{chr(cp)} U+{cp:04X}" for c, cp in enumerate(arrays["code_points"].tolist())},
    )


def glyph_config(spec) -> GlyphConfig:
    """The render a RunSpec asks for (`glyphs` and `glyph_families` read the same one)."""
    return GlyphConfig(
        num_classes=spec.glyph_classes,
        instances_per_class=spec.glyph_instances,
        image_size=spec.resolved_image_size,
        seed=spec.dataset_seed,
    )


@DATASETS.register("glyphs")
def load_for_spec(spec, progress: bool = True, cache_dir: Path | None = None) -> DatasetBundle:
    return load_glyphs(glyph_config(spec), cache_dir, progress=progress)
