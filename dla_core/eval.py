"""``python -m dla_core eval``: DreamBench-style DINO, CLIP-I and CLIP-T over a folder of generations.

Metrics (as in DreamBooth / DreamBench and the methods compared in the paper, arXiv 2605.26111):

* **DINO**: cosine similarity of the CLS embeddings (``last_hidden_state[:, 0]``) of a
  generation and a reference image, from a local transformers DINO folder (ViT-S/16 DINO,
  ``facebook/dino-vits16``, or a DINOv2 one; loaded with ``AutoModel``).
* **CLIP-I**: cosine similarity of CLIP image embeddings (generation vs reference).
* **CLIP-T**: cosine similarity of the generation's CLIP image embedding and its prompt's CLIP
  text embedding, reported as the **raw cosine** (the paper's ~0.30 scale), *not* x100 as some
  papers print it.

A generation is compared with **every** reference image of its subject and the similarities
are averaged (DreamBench's protocol); the reported score is the mean over all generations;
per-subject means are in the JSON too.

Pairing of generations to references (file-name convention):

* subject of a generation: its first folder under ``--generations``
  (``generations/<subject>/<anything>.png``), or for files directly in ``--generations`` the
  part of the file name before the first ``__`` (``<subject>__<prompt>__<seed>.png``), or the
  whole stem (``<subject>.png``);
* references of a subject: all images in ``--references/<subject>/`` (DreamBench's layout),
  else the files ``--references/<subject>.<ext>``.

Prompts for CLIP-T (optional): ``--prompts FILE`` with a JSON object ``{"<generation path
relative to --generations, or its stem>": "prompt"}`` or JSONL lines ``{"generation": ...,
"prompt": ...}``; else a sidecar ``<generation>.txt`` next to the image. Generations without a
prompt get no CLIP-T. Nothing is downloaded: model folders load with ``local_files_only``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .checks import check_image_pixels, whole
from .errors import DLAInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SUBJECT_SEPARATOR = "__"
METRICS = ("dino", "clip_i", "clip_t")

# The paper's reported DreamBench results (arXiv 2605.26111; DINO / CLIP-I / CLIP-T).
PAPER_NUMBERS = {
    "DLA (paper)": (0.7482, 0.8443, 0.3010),
    "UNO": (0.7484, 0.8354, 0.3040),
    "DreamO": (0.7537, 0.8356, 0.3086),
    "USO": (0.7478, 0.8263, 0.3213),
    "OmniGen2": (0.7323, 0.8268, 0.3185),
    "Qwen-Image": (0.7317, 0.8261, 0.3158),
    "OminiControl": (0.5987, 0.7840, 0.3186),
}


@dataclass
class EvalItem:
    """One generation and what it is compared with."""

    generation: Path
    relative: str  # path relative to --generations, '/'-separated
    subject: str
    references: list[Path]
    prompt: str | None = None
    scores: dict = field(default_factory=dict)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def subject_of(relative: Path) -> str:
    """Subject name of a generation path relative to the generations folder (see module docstring)."""
    if len(relative.parts) > 1:
        return relative.parts[0]
    return relative.stem.split(SUBJECT_SEPARATOR)[0]


def references_of(references_dir: Path, subject: str) -> list[Path]:
    folder = references_dir / subject
    if folder.is_dir():
        return _images_in(folder)
    return [
        references_dir / f"{subject}{suffix}"
        for suffix in IMAGE_SUFFIXES
        if (references_dir / f"{subject}{suffix}").is_file()
    ]


def read_prompts(path: Path | None) -> dict[str, str]:
    """``--prompts`` file -> {relative path or stem: prompt}."""
    if path is None:
        return {}
    if not path.is_file():
        raise DLAInputError(f"Prompts file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return dict(data)
    except json.JSONDecodeError:
        pass
    prompts = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompts[str(item["generation"])] = str(item["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DLAInputError(
                f"{path.name} line {line_no}: expected a JSON object mapping generation -> prompt, or JSONL lines "
                '{"generation": "dog__beach.png", "prompt": "a dog on a beach"}.'
            ) from exc
    return prompts


def collect_items(
    generations_dir: str | Path, references_dir: str | Path, prompts_file: str | Path | None = None
) -> list[EvalItem]:
    """Pair every generation with its subject's references and its prompt; errors name the file and the fix."""
    generations_dir, references_dir = Path(generations_dir), Path(references_dir)
    for name, folder in (("--generations", generations_dir), ("--references", references_dir)):
        if not folder.is_dir():
            raise DLAInputError(f"{name} folder '{folder}' does not exist.")
    prompts = read_prompts(Path(prompts_file) if prompts_file else None)
    files = sorted(p for p in generations_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DLAInputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under --generations '{generations_dir}'.")
    items = []
    for file in files:
        relative = file.relative_to(generations_dir)
        subject = subject_of(relative)
        refs = references_of(references_dir, subject)
        if not refs:
            raise DLAInputError(
                f"No reference images for subject '{subject}' (from generation '{relative.as_posix()}'): expected "
                f"'{references_dir / subject}/' with images or '{references_dir / subject}.png'. Name generations "
                f"'<subject>{SUBJECT_SEPARATOR}<anything>.png' or put them in '<subject>/' folders."
            )
        key = relative.as_posix()
        prompt = prompts.get(key, prompts.get(relative.stem))
        sidecar = file.with_suffix(".txt")
        if prompt is None and sidecar.is_file():
            prompt = sidecar.read_text(encoding="utf-8").strip()
        items.append(EvalItem(file, key, subject, refs, prompt or None))
    return items


# ----------------------------------------------------------------------------- embeddings


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def check_reference_sizes(items: list[EvalItem]) -> None:
    """Every reference image within ``DLA_MAX_REFERENCE_PIXELS`` (headers only), before any model is loaded."""
    for path in dict.fromkeys(ref for item in items for ref in item.references):
        with Image.open(path) as image:  # reads the header only
            check_image_pixels(f"Reference image {path}", *image.size)


class Embedder:
    """Caches normalised embeddings per image path / prompt."""

    def __init__(
        self, dino_dir: str | Path | None, clip_dir: str | Path | None, device: str = "cpu", batch_size: int = 16
    ):
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel

        self.device, self.batch_size = device, batch_size
        self.dino = self.dino_processor = self.clip = self.clip_processor = None
        if dino_dir is not None:
            _check_model_dir(dino_dir, "--dino")
            self.dino = AutoModel.from_pretrained(dino_dir, local_files_only=True).to(device).eval()
            self.dino_processor = AutoImageProcessor.from_pretrained(dino_dir, local_files_only=True)
        if clip_dir is not None:
            _check_model_dir(clip_dir, "--clip")
            self.clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True).to(device).eval()
            self.clip_processor = AutoProcessor.from_pretrained(clip_dir, local_files_only=True)
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    @torch.no_grad()
    def images(self, kind: str, paths: list[Path]) -> torch.Tensor:
        """[len(paths), dim] unit vectors from ``kind`` in ('dino', 'clip')."""
        todo = [p for p in dict.fromkeys(paths) if (kind, str(p)) not in self._cache]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            pixels = [_load_rgb(p) for p in chunk]
            if kind == "dino":
                inputs = self.dino_processor(images=pixels, return_tensors="pt").to(self.device)
                vectors = self.dino(**inputs).last_hidden_state[:, 0]  # [batch, width] CLS token
            else:
                inputs = self.clip_processor(images=pixels, return_tensors="pt").to(self.device)
                vectors = _projected(self.clip.get_image_features(**inputs))  # [batch, projection]
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1).cpu()
            for path, vector in zip(chunk, vectors):
                self._cache[(kind, str(path))] = vector
        return torch.stack([self._cache[(kind, str(p))] for p in paths])

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        """[len(prompts), projection] unit CLIP text vectors (prompts truncated to CLIP's 77 tokens)."""
        inputs = self.clip_processor(text=prompts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        vectors = _projected(
            self.clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        )
        return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu()


def _projected(output) -> torch.Tensor:
    """CLIP's projected embeddings: transformers 4.x ``get_*_features`` return the tensor, transformers 5
    a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the same projected tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _check_model_dir(folder, flag: str) -> None:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DLAInputError(
            f"{flag} '{folder}' is not a local transformers model folder (no config.json). Download the model once "
            "(e.g. facebook/dino-vits16, openai/clip-vit-large-patch14) and pass its folder; nothing is fetched here."
        )


def score_items(items: list[EvalItem], embedder: Embedder) -> None:
    """Fill ``item.scores`` with dino / clip_i (mean over references) and clip_t (if a prompt)."""
    for kind, metric in (("dino", "dino"), ("clip", "clip_i")):
        if (embedder.dino if kind == "dino" else embedder.clip) is None:
            continue
        for item in items:
            generation = embedder.images(kind, [item.generation])  # [1, dim]
            references = embedder.images(kind, item.references)  # [refs, dim]
            item.scores[metric] = float((references @ generation[0]).mean())
    if embedder.clip is not None:
        with_prompt = [item for item in items if item.prompt]
        if with_prompt:
            texts = embedder.texts([item.prompt for item in with_prompt])
            for item, text in zip(with_prompt, texts):
                item.scores["clip_t"] = float(embedder.images("clip", [item.generation])[0] @ text)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(items: list[EvalItem], dino_dir=None, clip_dir=None) -> dict:
    """The metrics JSON (see README): overall means, per-subject means, per-image scores, conventions."""
    per_subject: dict[str, dict] = {}
    for subject in sorted({item.subject for item in items}):
        mine = [item for item in items if item.subject == subject]
        per_subject[subject] = {
            "generations": len(mine),
            **{m: _mean([i.scores[m] for i in mine if m in i.scores]) for m in METRICS},
        }
    return {
        "metrics": {m: _mean([i.scores[m] for i in items if m in i.scores]) for m in METRICS},
        "counts": {
            "generations": len(items),
            "subjects": len(per_subject),
            "with_prompt": sum(1 for i in items if i.prompt),
            "reference_images": len({str(r) for i in items for r in i.references}),
        },
        "per_subject": per_subject,
        "per_image": [
            {
                "generation": i.relative,
                "subject": i.subject,
                "prompt": i.prompt,
                "references": [r.name for r in i.references],
                **i.scores,
            }
            for i in items
        ],
        "models": {"dino": str(dino_dir) if dino_dir else None, "clip": str(clip_dir) if clip_dir else None},
        "conventions": {
            "dino": "cosine of CLS embeddings, averaged over the subject's reference images",
            "clip_i": "cosine of CLIP image embeddings, averaged over the subject's reference images",
            "clip_t": "raw cosine of CLIP image and text embeddings (not x100)",
            "aggregate": "mean over generations",
        },
        "paper_dreambench": {name: dict(zip(METRICS, values)) for name, values in PAPER_NUMBERS.items()},
    }


def format_table(result: dict) -> str:
    """Readable table: these generations next to the paper's DreamBench numbers."""

    def cell(value):
        return "   -  " if value is None else f"{value:.4f}"

    rows = [("these generations", *[result["metrics"][m] for m in METRICS])]
    rows += [(name, *values) for name, values in PAPER_NUMBERS.items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  DINO    CLIP-I  CLIP-T", "-" * (width + 24)]
    for name, *values in rows:
        lines.append(f"{name:{width}}  " + "  ".join(cell(v) for v in values))
    counts = result["counts"]
    lines.append(
        f"({counts['generations']} generations, {counts['subjects']} subjects, {counts['with_prompt']} with prompts; "
        "paper rows are DreamBench numbers from the paper, arXiv 2605.26111, CLIP-T as raw cosine)"
    )
    return "\n".join(lines)


def evaluate(generations, references, dino=None, clip=None, prompts=None, device="cpu", batch_size=16) -> dict:
    """Pair, embed, score and summarise; returns the metrics dict."""
    if dino is None and clip is None:
        raise DLAInputError(
            "Give --dino and/or --clip (local model folders); with neither there is nothing to measure."
        )
    whole("batch_size (--batch-size)", batch_size, 1, 4096, hint="Images embedded together; 16 is a good start.")
    items = collect_items(generations, references, prompts)  # cheap checks before loading models
    check_reference_sizes(items)
    score_items(items, Embedder(dino, clip, device, batch_size))
    return summarize(items, dino, clip)


# ----------------------------------------------------------------------------- CLI (dla_core.cli)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m dla_core eval``."""
    parser.add_argument(
        "--generations", required=True, help="folder of generated images (<subject>/x.png or <subject>__x.png)"
    )
    parser.add_argument(
        "--references", required=True, help="folder of reference images (<subject>/*.jpg or <subject>.png)"
    )
    parser.add_argument(
        "--prompts", default=None, help="JSON {generation: prompt} or JSONL for CLIP-T (else <generation>.txt)"
    )
    parser.add_argument("--dino", default=None, help="local DINO folder (ViT-S/16 DINO or DINOv2, transformers format)")
    parser.add_argument("--clip", default=None, help="local CLIP folder (CLIPModel + processor)")
    parser.add_argument("--out", default=None, help="write the metrics JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation, print the table, write the JSON."""
    result = evaluate(
        args.generations, args.references, args.dino, args.clip, args.prompts, args.device, args.batch_size
    )
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0 if all(v is None or math.isfinite(v) for v in result["metrics"].values()) else 1
