"""A PNG grid of sample images, one row per class (used by ``dncml datasets show``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .base import DatasetBundle, DatasetError, EvalSet, ImageSplit

_LABEL_WIDTH = 120
_GAP = 2


def _split_of(data: DatasetBundle | EvalSet | ImageSplit) -> tuple[ImageSplit, dict[int, str]]:
    if isinstance(data, DatasetBundle):
        return data.train, dict(data.group_names)
    if isinstance(data, EvalSet):
        return data.query, {}
    if isinstance(data, ImageSplit):
        return data, {}
    raise TypeError(f"save_grid wants a DatasetBundle, EvalSet or ImageSplit, got {type(data).__name__}")


def _pick(split: ImageSplit, classes: int, per_class: int) -> list[tuple[int, int, list[int]]]:
    """[(label, group, image indices)]: classes evenly spaced over the sorted labels, and every
    (n // per_class)-th image of each class (for glyphs: the clean render of each face)."""
    labels = np.unique(split.labels)
    if len(labels) == 0:
        raise ValueError(f"split {split.name!r} is empty: nothing to show")
    chosen = labels[np.unique(np.linspace(0, len(labels) - 1, min(classes, len(labels))).round().astype(int))]
    rows = []
    for label in chosen:
        idx = np.flatnonzero(split.labels == label)
        if len(idx) >= per_class:
            take = idx[:: len(idx) // per_class][:per_class]
        else:
            take = idx
        rows.append((int(label), int(split.groups[idx[0]]), take.tolist()))
    return rows


def _font(size: int = 11):
    """DejaVu Sans (shipped with matplotlib: it draws the glyphs' own characters in labels),
    else PIL's default font."""
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _image(split: ImageSplit, i: int, cell: int, rgb: bool):
    from PIL import Image

    if split.images is not None:
        arr = np.asarray(split.images[i])
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    else:
        path = split.paths[i]
        try:
            with Image.open(path if split.pack is None else io.BytesIO(split.read_bytes(i))) as f:
                img = f.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read image {path}: {exc}") from exc
    img = img.convert("RGB" if rgb else "L")
    scale = cell / max(img.size)
    if scale != 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.NEAREST if scale >= 2 else Image.LANCZOS)
    return img


def save_grid(
    bundle_or_split: DatasetBundle | EvalSet | ImageSplit,
    out_path: str | Path,
    classes: int = 16,
    per_class: int = 12,
    cell: int | None = None,
    group_names: dict[int, str] | None = None,
    class_names: dict[int, str] | None = None,
) -> Path:
    """Write a PNG grid: one row per class (``classes`` classes spread over the labels), up to
    ``per_class`` images each, a label column on the left (class id and group name).

    A DatasetBundle shows its train split; an EvalSet its query split. Works with in-memory
    ``images`` (grayscale or RGB uint8) and with ``paths`` (read with PIL). ``cell``: pixels per
    image (default: 64 for arrays, upscaled with nearest neighbour when small; 96 for files).
    ``group_names``: group id -> name for the labels (default: the bundle's). Returns the PNG path.
    """
    from PIL import Image, ImageDraw

    if classes < 1 or per_class < 1:
        raise ValueError(f"classes and per_class must be >= 1, got {classes}, {per_class}")
    split, bundle_names = _split_of(bundle_or_split)
    group_names = bundle_names if group_names is None else dict(group_names)
    if class_names is None and isinstance(bundle_or_split, DatasetBundle):
        class_names = bundle_or_split.class_names
    class_names = class_names or {}
    rows = _pick(split, classes, per_class)
    rgb = split.paths is not None or (split.images is not None and split.images.ndim == 4)
    if cell is None:
        cell = 96 if split.paths is not None else max(64, int(split.images.shape[1]))
    cols = max(len(r[2]) for r in rows)
    width = _LABEL_WIDTH + cols * (cell + _GAP) + _GAP
    height = len(rows) * (cell + _GAP) + _GAP
    mode = "RGB" if rgb else "L"
    grid = Image.new(mode, (width, height), (40, 40, 40) if rgb else 40)
    draw = ImageDraw.Draw(grid)
    font = _font()
    text_fill = (230, 230, 230) if rgb else 230
    for r, (label, group, indices) in enumerate(rows):
        y = _GAP + r * (cell + _GAP)
        text = f"class {label}" if label not in class_names else f"{class_names[label]}"
        if group >= 0:
            text += f"\n{group_names.get(group, f'group {group}')}"
        draw.multiline_text((4, y + 4), text, fill=text_fill, font=font)
        for c, i in enumerate(indices):
            img = _image(split, i, cell, rgb)
            x = _LABEL_WIDTH + _GAP + c * (cell + _GAP)
            grid.paste(img, (x + (cell - img.width) // 2, y + (cell - img.height) // 2))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path, format="PNG")
    return out_path


RIGHT, WRONG, QUERY = (40, 170, 70), (210, 50, 50), (70, 120, 220)


def save_retrievals(
    split: ImageSplit,
    vectors: np.ndarray,
    out_path: str | Path,
    queries: int = 8,
    k: int = 5,
    cell: int | None = None,
    class_names: dict[int, str] | None = None,
) -> tuple[Path, float]:
    """Write a PNG grid of retrievals: one row per query (`queries` queries of distinct classes
    spread over the split's labels), the query framed blue, then its `k` nearest neighbours among
    the split's other images (as Recall@K searches them), framed green when of the query's class
    and red when not. Returns the path and the share of right neighbours shown."""
    from PIL import Image, ImageDraw

    from ..evaluation import _neighbours

    if queries < 1 or k < 1:
        raise ValueError(f"queries and k must be >= 1, got {queries}, {k}")
    rows = _pick(split, queries, 1)
    chosen = np.array([indices[0] for _, _, indices in rows])
    found = _neighbours(np.asarray(vectors, dtype=np.float32), None, k)[chosen]
    rgb = split.paths is not None or (split.images is not None and split.images.ndim == 4)
    if cell is None:
        cell = 96 if split.paths is not None else max(64, int(split.images.shape[1]))
    frame, gap = 4, 6
    label_width = _LABEL_WIDTH
    width = label_width + (found.shape[1] + 1) * (cell + 2 * frame + gap) + gap
    height = len(chosen) * (cell + 2 * frame + gap) + gap + 16
    grid = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    font = _font()
    names = class_names or {}
    draw.text((label_width + gap, 2), "query", fill=(0, 0, 0), font=font)
    draw.text(
        (label_width + gap + cell + 2 * frame + gap, 2), f"its {found.shape[1]} nearest neighbours (green: same class)", fill=(0, 0, 0)
    )
    right = 0
    for r, (query, neighbours) in enumerate(zip(chosen, found)):
        y = 16 + gap + r * (cell + 2 * frame + gap)
        label = int(split.labels[query])
        draw.multiline_text((4, y + 4), names.get(label, f"class {label}"), fill=(0, 0, 0), font=font)
        for c, index in enumerate([query, *neighbours]):
            x = label_width + gap + c * (cell + 2 * frame + gap)
            same = int(split.labels[index]) == label
            right += same and c > 0
            draw.rectangle([x, y, x + cell + 2 * frame - 1, y + cell + 2 * frame - 1], fill=QUERY if c == 0 else RIGHT if same else WRONG)
            img = _image(split, int(index), cell, rgb).convert("RGB")
            grid.paste(img, (x + frame + (cell - img.width) // 2, y + frame + (cell - img.height) // 2))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path, format="PNG")
    return out_path, right / found.size
