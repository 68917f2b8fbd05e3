"""Every shipped workflow has the thumbnail ComfyUI's template browser shows beside it.

workflows/<name>.jpg is drawn by tests/integration/support/render_workflow_thumbnails.js: a picture
of the workflow's graph in the real front end (only tiny random-weight models exist where the pack is
built, so a picture of a result would be noise). tests/integration/browser/test_templates.py checks that
the front ends show them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
SHIPPED = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
THUMBNAIL_SIZE = (1024, 768)  # render_workflow_thumbnails.js: 4:3, like the browser's cards
MAX_BYTES = 200_000


def test_thumbnails_and_workflows_pair_up():
    thumbnails = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.jpg"))
    assert SHIPPED and thumbnails == SHIPPED, "run render_workflow_thumbnails.js after adding or renaming a workflow"


@pytest.mark.parametrize("name", SHIPPED)
def test_thumbnail_is_a_small_jpeg_of_the_cards_shape(name):
    path = WORKFLOWS_DIR / f"{name}.jpg"
    with Image.open(path) as image:
        assert image.format == "JPEG"
        assert image.size == THUMBNAIL_SIZE
        pixels = image.convert("L").resize((64, 48))
        extrema = pixels.getextrema()
    assert extrema[1] - extrema[0] > 64, f"{name}.jpg is blank"  # a drawn graph, not an empty canvas
    assert path.stat().st_size <= MAX_BYTES
