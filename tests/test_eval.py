"""``python -m dla_core eval`` on tiny random CLIP / DINO folders built offline in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dla_core.cli import main as cli_main
from dla_core.errors import DLAInputError
from dla_core.eval import METRICS, collect_items, evaluate, format_table


def _build_tiny_clip(folder: Path) -> Path:
    """CLIPModel + CLIPProcessor with a byte-level BPE vocabulary (no merges) written offline."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from dla_core.selftest_models import bytes_to_unicode  # the same table as CLIP's

    folder.mkdir(parents=True)
    chars = list(bytes_to_unicode().values())
    vocab = {
        token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _build_tiny_dino(folder: Path, kind: str = "vit") -> Path:
    """A tiny ViT (DINO ViT-S/16 architecture family) or DINOv2 + its image processor."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    common = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=16
    )
    if kind == "vit":
        ViTModel(ViTConfig(**common), add_pooling_layer=False).save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        Dinov2Model(Dinov2Config(**common)).save_pretrained(folder)
        BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    return {
        "clip": _build_tiny_clip(root / "clip"),
        "dino": _build_tiny_dino(root / "dino"),
        "dinov2": _build_tiny_dino(root / "dinov2", kind="dinov2"),
    }


@pytest.fixture
def bench(tmp_path):
    """references/<subject>/*.png; generations flat (<subject>__x.png) and nested (<subject>/x.png)."""
    refs, gens = tmp_path / "references", tmp_path / "generations"
    for s, subject in enumerate(("dog", "cat")):
        for k in range(2):
            _png(refs / subject / f"{k:02d}.png", seed=10 * s + k)
    _png(gens / "dog__beach__0.png", seed=100)
    _png(gens / "cat" / "sofa.png", seed=101)
    (tmp_path / "prompts.json").write_text(
        json.dumps({"dog__beach__0.png": "a dog on a beach", "cat/sofa.png": "a cat on a sofa"})
    )
    return tmp_path


def test_pairing_follows_the_file_name_convention(bench):
    items = collect_items(bench / "generations", bench / "references", bench / "prompts.json")
    pairs = {item.relative: (item.subject, [r.name for r in item.references], item.prompt) for item in items}
    assert pairs == {
        "cat/sofa.png": ("cat", ["00.png", "01.png"], "a cat on a sofa"),
        "dog__beach__0.png": ("dog", ["00.png", "01.png"], "a dog on a beach"),
    }


def test_generation_without_references_names_the_expected_path(bench):
    _png(bench / "generations" / "bird__sky.png", seed=5)
    with pytest.raises(DLAInputError, match=r"subject 'bird'.*references/bird"):
        collect_items(bench / "generations", bench / "references")


def test_identical_generation_and_reference_score_one(tmp_path, models):
    reference = _png(tmp_path / "references" / "toy.png", seed=3)
    (tmp_path / "generations").mkdir()
    (tmp_path / "generations" / "toy__copy.png").write_bytes(reference.read_bytes())
    result = evaluate(tmp_path / "generations", tmp_path / "references", dino=models["dino"], clip=models["clip"])
    assert result["metrics"]["dino"] == pytest.approx(1.0, abs=1e-5)
    assert result["metrics"]["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert result["metrics"]["clip_t"] is None  # no prompt given


def test_metrics_json_has_documented_fields_and_cosine_ranges(bench, models, capsys):
    out = bench / "metrics.json"
    code = cli_main(
        [
            "eval",
            "--generations",
            str(bench / "generations"),
            "--references",
            str(bench / "references"),
            "--prompts",
            str(bench / "prompts.json"),
            "--dino",
            str(models["dino"]),
            "--clip",
            str(models["clip"]),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == {"metrics", "counts", "per_subject", "per_image", "models", "conventions", "paper_dreambench"}
    assert set(result["metrics"]) == set(METRICS)
    assert result["counts"] == {"generations": 2, "subjects": 2, "with_prompt": 2, "reference_images": 4}
    for row in result["per_image"]:
        for metric in METRICS:
            assert -1.0 <= row[metric] <= 1.0
    # The overall score is the mean over generations; a subject's score the mean over its generations.
    for metric in METRICS:
        assert result["metrics"][metric] == pytest.approx(np.mean([row[metric] for row in result["per_image"]]))
    assert result["per_subject"]["dog"]["dino"] == pytest.approx(result["per_image"][1]["dino"])
    assert result["paper_dreambench"]["DLA (paper)"] == {"dino": 0.7482, "clip_i": 0.8443, "clip_t": 0.3010}
    table = capsys.readouterr().out
    assert "these generations" in table and "0.7482" in table


def test_clip_i_is_the_mean_over_the_subjects_references(bench, models):
    from dla_core.eval import Embedder

    embedder = Embedder(None, models["clip"])
    items = collect_items(bench / "generations", bench / "references")
    dog = next(item for item in items if item.subject == "dog")
    generation = embedder.images("clip", [dog.generation])[0]
    expected = float(np.mean([float(embedder.images("clip", [r])[0] @ generation) for r in dog.references]))
    result = evaluate(bench / "generations", bench / "references", clip=models["clip"])
    assert result["per_subject"]["dog"]["clip_i"] == pytest.approx(expected, abs=1e-6)
    assert result["metrics"]["dino"] is None


@pytest.mark.parametrize("kind", ["dino", "dinov2"])
def test_dino_score_is_the_cosine_of_cls_tokens(bench, models, kind):
    """Known value: DINO = cosine of ``last_hidden_state[:, 0]`` (the CLS token), computed here by hand from the
    tiny model's outputs and averaged over the subject's references; a mean over all tokens gives another number."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(models[kind]).eval()
    processor = AutoImageProcessor.from_pretrained(models[kind])
    items = collect_items(bench / "generations", bench / "references")
    dog = next(item for item in items if item.subject == "dog")

    def hidden(path):
        with Image.open(path) as image:
            pixels = processor(images=[image.convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            return model(**pixels).last_hidden_state[0]  # [tokens, width]

    def mean_cosine(pool):
        generation = pool(hidden(dog.generation))
        return float(
            np.mean(
                [
                    float(torch.nn.functional.cosine_similarity(pool(hidden(r)), generation, dim=0))
                    for r in dog.references
                ]
            )
        )

    cls, mean_pooled = mean_cosine(lambda h: h[0]), mean_cosine(lambda h: h.mean(0))
    result = evaluate(bench / "generations", bench / "references", dino=models[kind])
    assert result["per_subject"]["dog"]["dino"] == pytest.approx(cls, abs=1e-6)
    assert abs(mean_pooled - cls) > 1e-3  # so the line above tells CLS pooling from mean pooling


def test_dinov2_folder_works_as_dino_model(bench, models):
    result = evaluate(bench / "generations", bench / "references", dino=models["dinov2"])
    assert 0.0 < result["metrics"]["dino"] <= 1.0


def test_missing_model_folder_is_a_clear_error(bench, tmp_path):
    with pytest.raises(DLAInputError, match="--clip.*config.json"):
        evaluate(bench / "generations", bench / "references", clip=tmp_path / "nothing")


def test_table_lists_paper_and_anchor_numbers():
    result = {
        "metrics": {"dino": 0.5, "clip_i": 0.6, "clip_t": None},
        "counts": {"generations": 1, "subjects": 1, "with_prompt": 0},
    }
    table = format_table(result)
    for name in ("DLA (paper)", "UNO", "DreamO", "USO", "OmniGen2", "Qwen-Image", "OminiControl"):
        assert name in table
    assert "0.5000  0.6000     -" in table
