"""Checks one throwaway venv of .ci/run's "requirements resolution" phase; run it with that venv's python.

usage: <venv>/bin/python .ci/resolve_check.py NAME [--self-test]

Prints the versions pip picked, then fails (exit 1, saying what broke) unless
  * `pip check` finds every installed distribution's requirements met (the broken pair of the issue,
    transformers 4.57 next to a huggingface-hub >= 1.0, is exactly such a conflict),
  * `import transformers, diffusers, peft, accelerate; from transformers import AutoProcessor;
    import torchvision` works, and
  * with --self-test: `python -m dla_core generate` runs the whole method end to end on its embedded
    tiny random models (InternVL processor, DLA, staged FLUX, VAE decode) in this environment.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHOWN = ("transformers", "diffusers", "peft", "accelerate", "huggingface-hub", "tokenizers", "torch", "torchvision")
IMPORTS = "import transformers, diffusers, peft, accelerate; from transformers import AutoProcessor; import torchvision"


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def run(label: str, command: list[str], cwd: Path | None = None) -> bool:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"[resolve] FAILED {label}: {' '.join(command)}\n{(done.stdout + done.stderr)[-4000:]}", flush=True)
        return False
    return True


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "venv"
    print(f"[resolve] {name}: " + ", ".join(f"{dist} {version(dist)}" for dist in SHOWN), flush=True)
    ok = run("pip check", [sys.executable, "-m", "pip", "check"])
    ok = run("imports", [sys.executable, "-c", IMPORTS]) and ok
    if "--self-test" in argv:
        with tempfile.TemporaryDirectory(prefix="dla-resolve-") as tmp:
            from PIL import Image

            reference = Path(tmp) / "reference.png"
            Image.new("RGB", (64, 48), (180, 120, 60)).save(reference)
            command = [
                sys.executable,
                "-m",
                "dla_core",
                "generate",
                "--reference",
                str(reference),
                "--prompt",
                "the subject on a beach",
                "--out",
                str(Path(tmp) / "out.png"),
                "--no-progress",
            ]
            ok = run("self-test", command, cwd=REPO_ROOT) and (Path(tmp) / "out.png").is_file() and ok
    print(f"[resolve] {name}: {'OK' if ok else 'BROKEN'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
