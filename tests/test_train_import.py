"""Importers: folders, table rows (parquet / Hugging Face layout), WebDataset shards -> the training manifest."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest
from PIL import Image

from dla_core.errors import DLAInputError
from dla_core.train.data import read_manifest
from dla_core.train.importers import REPORT_NAME, ColumnSpec, import_folder, import_rows, split_pair


def _png(color, size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _save(path, color, size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(color, size))


@pytest.fixture
def folder_set(tmp_path):
    """a: one reference; b: a folder of two; c: a corrupt target; d: no caption; e: no reference."""
    root = tmp_path / "set"
    for name in "abcde":
        _save(root / "target" / f"{name}.png", (200, 10, 10))
        if name != "d":
            (root / "target" / f"{name}.txt").write_text(f"the {name} toy on a shelf\n")
    _save(root / "reference" / "a.jpg", (10, 200, 10))
    _save(root / "reference" / "b" / "1.png", (10, 10, 200))
    _save(root / "reference" / "b" / "2.png", (10, 100, 200))
    _save(root / "reference" / "c.png", (10, 10, 10))
    _save(root / "reference" / "d.png", (10, 10, 10))
    (root / "target" / "c.png").write_bytes(b"not an image at all")
    return root


def test_folder_import_writes_a_manifest_that_validates(folder_set):
    report = import_folder(folder_set)
    records = read_manifest(report.manifest)
    assert report.written == 2 and [r.id for r in records] == ["a", "b"]
    assert records[0].prompt == "the a toy on a shelf" and len(records[1].references) == 2
    assert records[0].target == str(folder_set / "target" / "a.png")


def test_folder_import_counts_and_reports_every_unusable_row(folder_set):
    report = import_folder(folder_set)
    reasons = dict(report.skipped)
    assert sorted(reasons) == ["c", "d", "e"]
    assert "not a readable image" in reasons["c"]
    assert "no caption file target/d.txt" in reasons["d"]
    assert "no reference" in reasons["e"]
    saved = json.loads((folder_set / REPORT_NAME).read_text())
    assert saved["written"] == 2 and len(saved["skipped"]) == 3
    assert "skipped 3 unusable row(s)" in report.summary()


def test_folder_import_names_the_missing_folder(tmp_path):
    with pytest.raises(DLAInputError, match="target/<name>.png"):
        import_folder(tmp_path)


def _composite(size=16, padding=2) -> Image.Image:
    """Subjects200K's layout: [pad | view 1 | pad][pad | view 2 | pad], view 1 red, view 2 blue."""
    image = Image.new("RGB", (2 * (size + 2 * padding), size + 2 * padding), (255, 255, 255))
    image.paste((255, 0, 0), (padding, padding, padding + size, padding + size))
    right = size + 3 * padding
    image.paste((0, 0, 255), (right, padding, right + size, padding + size))
    return image


def test_one_image_holding_both_views_is_split_into_reference_and_target():
    reference, target = split_pair(_composite(), padding=2)
    assert reference.size == target.size == (16, 16)
    assert {c for _, c in reference.getcolors()} == {(255, 0, 0)}
    assert {c for _, c in target.getcolors()} == {(0, 0, 255)}
    swapped_reference, _ = split_pair(_composite(), padding=2, order="right-left")
    assert {c for _, c in swapped_reference.getcolors()} == {(0, 0, 255)}


def _pair_rows():
    buffer = io.BytesIO()
    _composite().save(buffer, format="PNG")
    good = {
        "image": {"bytes": buffer.getvalue(), "path": None},
        "description": {"description_1": "the red toy, now blue"},
    }
    return [
        ("row 0", good),
        ("row 1", {**good, "image": {"bytes": b"\x89PNG broken", "path": None}}),  # corrupt
        ("row 2", {**good, "description": {"description_1": " "}}),  # empty prompt
        ("row 3", {**good, "description": {"item": "toy"}}),  # no description_1
        ("row 4", good),
    ]


def test_rows_with_a_pair_column_import_with_corrupt_rows_counted(tmp_path):
    spec = ColumnSpec(prompt="description.description_1", pair="image", pair_padding=2)
    report = import_rows(_pair_rows(), tmp_path / "out", spec, columns=["image", "description", "collection"])
    assert report.written == 2
    assert [row for row, _ in report.skipped] == ["row 1", "row 2", "row 3"]
    assert "not a readable image" in report.skipped[0][1] and "empty prompt" in report.skipped[1][1]
    assert "missing key 'description_1'" in report.skipped[2][1]
    records = read_manifest(report.manifest)
    assert [r.id for r in records] == ["row 0", "row 4"] and records[0].prompt == "the red toy, now blue"
    with Image.open(records[0].target) as target:
        assert target.size == (16, 16) and target.getpixel((8, 8)) == (0, 0, 255)


def test_a_missing_column_names_the_columns_that_exist(tmp_path):
    spec = ColumnSpec(prompt="caption", pair="image")
    with pytest.raises(DLAInputError, match=r"no column 'caption'\. Its columns: collection, description, image"):
        import_rows(_pair_rows(), tmp_path / "out", spec, columns=["image", "description", "collection"])
    with pytest.raises(DLAInputError, match=r"no column 'caption'\. Its columns: description, image"):
        import_rows(_pair_rows(), tmp_path / "out", spec)  # no schema: the first row's keys


def test_separate_reference_and_target_columns_keep_the_original_bytes(tmp_path):
    rows = [("r0", {"ref": _png((1, 2, 3)), "tgt": {"bytes": _png((4, 5, 6)), "path": "x.png"}, "text": "a toy"})]
    report = import_rows(rows, tmp_path / "out", ColumnSpec(prompt="text", reference="ref", target="tgt"))
    record = read_manifest(report.manifest)[0]
    assert open(record.target, "rb").read() == _png((4, 5, 6))
    with pytest.raises(DLAInputError, match="--reference-column and --target-column, or --pair-column"):
        import_rows(rows, tmp_path / "out", ColumnSpec(prompt="text", reference="ref"))


def _shard(path, samples):
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_webdataset_shards_import_through_the_command_line(tmp_path, capsys):
    from dla_core.train.__main__ import main as train_main

    good = {"ref.png": _png((9, 9, 9)), "jpg": _png((200, 0, 0)), "txt": b"the toy in the snow"}
    _shard(tmp_path / "shard-0.tar", [("s/000", good), ("s/001", {**good, "jpg": b"corrupt"})])
    _shard(tmp_path / "shard-1.tar", [("s/002", good)])
    argv = ["import", "webdataset", str(tmp_path / "shard-0.tar"), str(tmp_path / "shard-1.tar")]
    argv += ["--out", str(tmp_path / "out"), "--prompt-column", "txt", "--reference-column", "ref.png"]
    assert train_main(argv + ["--target-column", "jpg"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 example(s)" in out and "skipped 1 unusable row(s)" in out and "shard-0.tar:s/001" in out
    assert [r.prompt for r in read_manifest(tmp_path / "out" / "manifest.jsonl")] == ["the toy in the snow"] * 2
    assert train_main(argv + ["--target-column", "png"]) == 2
    assert "no column 'png'. Its columns: jpg, ref.png, txt" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "package"), [("parquet", "pyarrow"), ("hf", "datasets")])
def test_parquet_and_hf_readers_without_their_library_say_what_to_install(
    tmp_path, monkeypatch, capsys, source, package
):
    from dla_core.train.__main__ import main as train_main

    for module in ("pyarrow", "pyarrow.parquet", "datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    argv = ["import", source, str(tmp_path / "x"), "--out", str(tmp_path / "out"), "--prompt-column", "text"]
    assert train_main(argv + ["--pair-column", "image"]) == 2
    assert f"pip install {package}" in capsys.readouterr().err
