"""Importers: turn the data sets people have into the training manifest (``python -m dla_core.train import``).

Sources:

- **folder** (:func:`import_folder`): ``ROOT/target/<name>.<ext>`` with its caption ``<name>.txt`` (beside the
  target, or under ``--caption-dir``) and its reference ``ROOT/reference/<name>.<ext>`` or several in
  ``ROOT/reference/<name>/``. Nothing is copied; the manifest points at the files.
- **table rows** (:func:`import_rows`): Hugging Face ``datasets`` saved to disk (:func:`hf_dataset_rows`), parquet
  files (:func:`parquet_rows`; the hub's own format, e.g. Subjects200K) and WebDataset tar shards
  (:func:`webdataset_rows`; the standard library reads them). The user names the columns: a reference and a
  target image column, or one column holding both views side by side (``pair``, Subjects200K's layout:
  ``[pad | view 1 | pad][pad | view 2 | pad]``, split in the middle, ``pair_padding`` px cut from each half's
  border), and a prompt column; ``a.b`` reaches into a struct / JSON column (``description.description_1``).
  Images are written under ``OUT/images/`` (the original bytes when nothing is cut, else PNG).

A row that cannot be used (an image that does not decode, has an alpha channel, a missing caption, an empty
prompt) is skipped, counted and reported with its reason, in the command's output and in
``OUT/import-report.json``; it is never dropped silently. A column that does not exist is an error naming the
columns that do. parquet needs ``pyarrow`` and Hugging Face data sets need ``datasets``; neither is a
requirement of the pack, and a clear message says what to install.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import DLAInputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MANIFEST_NAME = "manifest.jsonl"
REPORT_NAME = "import-report.json"
PAIR_ORDERS = ("left-right", "right-left")  # which half is the reference
PASSTHROUGH_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


@dataclass
class ImportReport:
    """What an import wrote and what it skipped (``skipped``: (row, reason) pairs)."""

    manifest: Path
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, limit: int = 10) -> str:
        lines = [f"wrote {self.written} example(s) to {self.manifest}; skipped {len(self.skipped)} unusable row(s)"]
        lines += [f"  {row}: {reason}" for row, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... {len(self.skipped) - limit} more in {self.manifest.parent / REPORT_NAME}")
        return "\n".join(lines)

    def write(self) -> None:
        (self.manifest.parent / REPORT_NAME).write_text(
            json.dumps(
                {
                    "manifest": str(self.manifest),
                    "written": self.written,
                    "skipped": [{"row": r, "reason": why} for r, why in self.skipped],
                },
                indent=2,
            )
        )


class RowError(Exception):
    """A row that cannot be imported; its message is the reason reported."""


def _open_image(value, where: str) -> Image.Image:
    """An image cell (bytes, ``{"bytes", "path"}``, a PIL image or a path) -> a loaded RGB PIL image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(value)
        else:
            raise RowError(f"{where} holds {type(value).__name__}, not an image")
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RowError(f"{where} is not a readable image ({exc})") from exc
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        raise RowError(f"{where} has an alpha channel; flatten it on a background you choose")
    return image


def split_pair(image: Image.Image, padding: int = 0, order: str = "left-right") -> tuple[Image.Image, Image.Image]:
    """One image holding two views side by side -> (reference, target): halves, ``padding`` px cut from each border."""
    half = image.width // 2
    boxes = [(0, 0, half, image.height), (half, 0, 2 * half, image.height)]
    views = []
    for left, top, right, bottom in boxes:
        box = (left + padding, top + padding, right - padding, bottom - padding)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RowError(f"a {image.width}x{image.height} image is too small to cut {padding} px from each half")
        views.append(image.crop(box))
    return (views[0], views[1]) if order == "left-right" else (views[1], views[0])


def _lookup(row: dict, column: str, where: str):
    """``row[column]``; else ``a.b`` reaches into a struct / JSON value."""
    if column in row:  # WebDataset extensions hold dots themselves ("ref.png")
        return row[column]
    value = row
    for part in column.split("."):
        if isinstance(value, (bytes, str)):
            try:
                value = json.loads(value)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RowError(f"{where}: '{column}' is not JSON") from exc
        if not isinstance(value, dict) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


@dataclass(frozen=True)
class ColumnSpec:
    """Which columns hold what. Either ``reference`` + ``target``, or ``pair`` (both views in one image)."""

    prompt: str
    reference: str | None = None
    target: str | None = None
    pair: str | None = None
    pair_padding: int = 0
    pair_order: str = "left-right"

    def check(self) -> None:
        if self.pair is None and (self.reference is None or self.target is None):
            raise DLAInputError(
                "Name the image columns: --reference-column and --target-column, or --pair-column for one image "
                "holding both views side by side (Subjects200K)."
            )
        if self.pair is not None and (self.reference is not None or self.target is not None):
            raise DLAInputError("--pair-column replaces --reference-column/--target-column; give one or the other.")
        if self.pair_order not in PAIR_ORDERS:
            raise DLAInputError(f"--pair-order must be one of {PAIR_ORDERS}, got {self.pair_order!r}.")
        if self.pair_padding < 0:
            raise DLAInputError("--pair-padding must be >= 0.")

    def names(self) -> list[str]:
        return [c for c in (self.reference, self.target, self.pair, self.prompt) if c is not None]


def check_columns(available: Sequence[str], spec: ColumnSpec, source: str) -> None:
    """Every named column's top-level name must exist; the error lists the columns that do."""
    missing = [c for c in spec.names() if c not in available and c.split(".")[0] not in available]
    if missing:
        raise DLAInputError(
            f"{source} has no column {', '.join(repr(c) for c in missing)}. Its columns: "
            f"{', '.join(sorted(available))}. Name the right ones with --reference-column/--target-column/"
            "--pair-column/--prompt-column."
        )


def _save(image: Image.Image, raw, stem: Path) -> Path:
    """Write ``image``: its original bytes when they are a PNG/JPEG/WebP that needs no change, else PNG."""
    extension = PASSTHROUGH_FORMATS.get(image.format or "")
    if isinstance(raw, dict):
        raw = raw.get("bytes")
    if extension and image.mode == "RGB" and isinstance(raw, (bytes, bytearray)):
        path = stem.with_suffix(extension)
        path.write_bytes(raw)
        return path
    path = stem.with_suffix(".png")
    image.convert("RGB").save(path)
    return path


def _prompt(row: dict, spec: ColumnSpec, where: str) -> str:
    try:
        prompt = _lookup(row, spec.prompt, where)
    except KeyError as exc:
        raise RowError(f"{where}: no '{spec.prompt}' (missing key {exc})") from exc
    if isinstance(prompt, bytes):
        prompt = prompt.decode("utf-8", errors="replace")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError(f"{where}: empty prompt in '{spec.prompt}'")
    return prompt.strip()


def _row_images(row: dict, spec: ColumnSpec, where: str):
    """-> [(reference image, raw)], (target image, raw); raw is None for a cut view."""

    def cell(column):
        try:
            return _lookup(row, column, where)
        except KeyError as exc:
            raise RowError(f"{where}: no '{column}' (missing key {exc})") from exc

    if spec.pair is not None:
        both = _open_image(cell(spec.pair), f"{where} '{spec.pair}'")
        reference, target = split_pair(both.convert("RGB"), spec.pair_padding, spec.pair_order)
        return [(reference, None)], (target, None)
    raw_refs = cell(spec.reference)
    raw_refs = raw_refs if isinstance(raw_refs, list) else [raw_refs]
    if not raw_refs:
        raise RowError(f"{where}: no reference image in '{spec.reference}'")
    references = [(_open_image(r, f"{where} '{spec.reference}'"), r) for r in raw_refs]
    raw_target = cell(spec.target)
    return references, (_open_image(raw_target, f"{where} '{spec.target}'"), raw_target)


def import_rows(
    rows: Iterable[tuple[str, dict]],
    out_dir: str | Path,
    spec: ColumnSpec,
    columns: Sequence[str] | None = None,
    source: str = "The data set",
) -> ImportReport:
    """Write the images of ``rows`` (``(row name, row dict)`` pairs) under ``out_dir/images`` and the manifest.

    ``columns``: the source's column names, checked against ``spec`` before the first row (else the first row's
    keys are).
    """
    spec.check()
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    report = ImportReport(out_dir / MANIFEST_NAME)
    lines = []
    checked = columns is not None
    if columns is not None:
        check_columns(columns, spec, source)
    for number, (name, row) in enumerate(rows):
        if not checked:
            check_columns(list(row), spec, f"{source} (first row, {name})")
            checked = True
        try:
            prompt = _prompt(row, spec, name)
            references, (target, raw_target) = _row_images(row, spec, name)
            stem = f"{number:08d}"
            ref_paths = [_save(image, raw, images / f"{stem}_ref{k}") for k, (image, raw) in enumerate(references)]
            target_path = _save(target, raw_target, images / f"{stem}_target")
        except RowError as exc:
            report.skipped.append((name, str(exc)))
            continue
        refs = [str(p.relative_to(out_dir)) for p in ref_paths]
        lines.append(
            json.dumps(
                {
                    "reference": refs[0] if len(refs) == 1 else refs,
                    "prompt": prompt,
                    "target": str(target_path.relative_to(out_dir)),
                    "id": name,
                }
            )
        )
    return _finish(report, lines)


def _finish(report: ImportReport, lines: list[str]) -> ImportReport:
    if not lines:
        reasons = "; ".join(f"{r}: {why}" for r, why in report.skipped[:3])
        raise DLAInputError(f"No usable example found ({len(report.skipped)} row(s) skipped: {reasons}).")
    report.manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = report.manifest.with_name(f".{report.manifest.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, report.manifest)
    report.written = len(lines)
    report.write()
    return report


# ----------------------------------------------------------------------------- folder


def _image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def import_folder(
    root: str | Path,
    out: str | Path | None = None,
    reference_dir: str = "reference",
    target_dir: str = "target",
    caption_dir: str | None = None,
) -> ImportReport:
    """Manifest of a folder of targets + captions + references (see the module docstring), paths relative to it."""
    root = Path(root)
    targets, references = root / target_dir, root / reference_dir
    captions = root / caption_dir if caption_dir else targets
    for folder, what in ((targets, "target"), (references, "reference"), (captions, "caption")):
        if not folder.is_dir():
            raise DLAInputError(
                f"'{folder}' is not a folder. A folder data set holds {target_dir}/<name>.png + <name>.txt and "
                f"{reference_dir}/<name>.png (or {reference_dir}/<name>/*.png); set --{what}-dir to yours."
            )
    manifest = Path(out) if out is not None else root / MANIFEST_NAME
    base = manifest.parent.resolve()
    report = ImportReport(manifest)
    lines = []
    for name, target in _image_files(targets).items():
        try:
            _open_image(target, f"target '{target.name}'")
            caption_file = captions / f"{name}.txt"
            if not caption_file.is_file():
                raise RowError(f"no caption file {caption_file.relative_to(root)}")
            prompt = caption_file.read_text(encoding="utf-8", errors="replace").strip()
            if not prompt:
                raise RowError(f"empty caption in {caption_file.relative_to(root)}")
            folder = references / name
            refs = list(_image_files(folder).values()) if folder.is_dir() else []
            single = _image_files(references).get(name)
            refs = refs or ([single] if single else [])
            if not refs:
                raise RowError(f"no reference {reference_dir}/{name}.<png|jpg|...> or {reference_dir}/{name}/")
            for ref in refs:
                _open_image(ref, f"reference '{ref.relative_to(root)}'")
        except RowError as exc:
            report.skipped.append((name, str(exc)))
            continue
        rel = [os.path.relpath(p.resolve(), base) for p in refs]
        lines.append(
            json.dumps(
                {
                    "reference": rel[0] if len(rel) == 1 else rel,
                    "prompt": prompt,
                    "target": os.path.relpath(target.resolve(), base),
                    "id": name,
                }
            )
        )
    return _finish(report, lines)


# ----------------------------------------------------------------------------- table readers


def _need(module: str, what: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DLAInputError(
            f"Reading {what} needs the Python package '{package}', which is not installed (it is not a requirement "
            f"of the pack). Install it with `pip install {package}`, or convert the data to a folder or WebDataset "
            "shards, which need nothing extra."
        ) from exc


def parquet_columns(files: Sequence[str | Path]) -> list[str]:
    """Column names of the first parquet file."""
    pq = _need("pyarrow.parquet", "parquet files", "pyarrow")
    return list(pq.ParquetFile(str(files[0])).schema_arrow.names)


def parquet_rows(files: Sequence[str | Path], batch_rows: int = 64) -> Iterator[tuple[str, dict]]:
    """Rows of parquet files as dicts (image columns: ``{"bytes", "path"}`` structs as the hub writes them)."""
    pq = _need("pyarrow.parquet", "parquet files", "pyarrow")
    for file in files:
        handle = pq.ParquetFile(str(file))
        number = 0
        for batch in handle.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield f"{Path(file).name} row {number}", row
                number += 1


def hf_dataset_rows(path: str | Path, split: str | None = None) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    """(column names, rows) of a Hugging Face data set saved with ``save_to_disk`` (images decoded by datasets)."""
    datasets = _need("datasets", "Hugging Face data sets", "datasets")
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split is None or split not in data:
            raise DLAInputError(f"'{path}' holds the splits {', '.join(data)}; choose one with --split.")
        data = data[split]
    return list(data.column_names), ((f"row {k}", row) for k, row in enumerate(data))


def webdataset_rows(shards: Sequence[str | Path]) -> Iterator[tuple[str, dict]]:
    """Samples of WebDataset tar shards: members ``<key>.<ext>`` grouped by key, ``{ext: bytes}`` per sample
    (``.txt`` decoded to text, ``.json`` parsed), in shard order."""
    for shard in shards:
        try:
            archive = tarfile.open(str(shard))
        except (tarfile.TarError, OSError) as exc:
            raise DLAInputError(f"'{shard}' is not a readable tar shard ({exc}).") from exc
        with archive:
            key, sample = None, {}
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot:
                    continue
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key:
                    if sample:
                        yield f"{Path(shard).name}:{key}", sample
                    key, sample = member_key, {}
                data = archive.extractfile(member).read()
                if extension == "txt":
                    data = data.decode("utf-8", errors="replace")
                elif extension == "json":
                    try:
                        data = json.loads(data)
                    except ValueError:
                        pass  # reported when the row uses it
                sample[extension] = data
            if sample:
                yield f"{Path(shard).name}:{key}", sample
