"""The real ComfyUI HTTP server as a subprocess, for the HTTP and browser tests.

`ComfyServer` starts `main.py --cpu` from a ComfyUI checkout on a free loopback port with its own
base directory (custom_nodes/comfyui-dla-subject -> this repository, models/ -> the tiny models),
waits until it answers, talks to it over plain HTTP, and stops it with Ctrl-C so it shuts down
the way a person's server does. Its log is kept in test-artifacts/comfyui-server.log.

`comfy_server_fixture` is the body of the session fixture ``comfy_server`` (tests/integration/conftest.py):
one server for the whole pytest session, so ComfyUI starts once for the HTTP and the browser tests.

The models tree it serves is the tiny one (:mod:`dla_harness.tree`), plus the file names real users
have (`USER_MODEL_NAMES`) as symlinks to the tiny files, so the shipped workflows' dropdown values
exist on this server exactly as on a person's.

Serve by hand: `PYTHONPATH=tests/lib python -m dla_harness.server [--without-user-models] [models-dir]` prints
the URL (``--without-user-models``: none of the files the workflows name, see `server_without_user_models_fixture`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ci_guard import find_comfyui

from dla_harness.tree import PACK_DIR_NAME, REPO_ROOT, TINY_DLA, TINY_FLUX, TINY_LORA, TINY_MLLM, TINY_VAE

ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0

# The first visit of a new user opens the template browser over the canvas; a finished tutorial
# keeps the canvas visible for the browser tests and their screenshots.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": True,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    """In the child: let Ctrl-C stop ComfyUI even when our shell started us with SIGINT ignored, and (Linux)
    have the kernel stop it when the process that started it dies without cleaning up (a killed pytest)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class ServerError(RuntimeError):
    """The ComfyUI server did not start, died, or answered something unexpected."""


class ComfyServer:
    """One ComfyUI server process with its own base directory."""

    def __init__(self, comfyui: Path, models_dir: Path, base_dir: Path, log_path: Path, python: str = sys.executable):
        self.comfyui = Path(comfyui)
        self.models_dir = Path(models_dir)
        self.base_dir = Path(base_dir)
        self.log_path = Path(log_path)
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._log_file = None

    # -- lifecycle ------------------------------------------------------------------------------
    def _prepare_base_dir(self) -> None:
        for name in ("custom_nodes", "input", "output", "temp", "user/default"):
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        pack_link = self.base_dir / "custom_nodes" / PACK_DIR_NAME
        if not pack_link.exists():
            pack_link.symlink_to(REPO_ROOT, target_is_directory=True)
        models_link = self.base_dir / "models"
        if not models_link.exists():
            models_link.symlink_to(self.models_dir.resolve(), target_is_directory=True)
        settings = self.base_dir / "user" / "default" / "comfy.settings.json"
        settings.write_text(json.dumps(FRONTEND_SETTINGS, indent=2))

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> "ComfyServer":
        """Start the server and return once it answers /object_info (custom nodes loaded)."""
        self._prepare_base_dir()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "w", encoding="utf-8")
        command = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--database-url",
            "sqlite:///:memory:",  # never write ComfyUI's own user/ folder
            "--disable-auto-launch",
            "--disable-api-nodes",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self._log_file.write("$ " + " ".join(command) + f"\n(cwd {self.comfyui})\n")
        self._log_file.flush()
        self.process = subprocess.Popen(
            command,
            cwd=self.comfyui,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"ComfyUI exited with code {self.process.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                status, _ = self.request("GET", "/system_stats", timeout=2)
                if status == 200:
                    return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Ctrl-C the server (its normal shutdown), then terminate/kill if it hangs."""
        if self.process is not None and self.process.poll() is None:
            for sig, wait_s in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                self.process.send_signal(sig)
                try:
                    self.process.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -- HTTP -----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: object | None = None, timeout: float = 120.0) -> tuple[int, object]:
        """One HTTP request; returns (status, parsed JSON or raw bytes). HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"} if data else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        try:
            return status, json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return status, payload

    def get_json(self, path: str) -> object:
        status, payload = self.request("GET", path)
        if status != 200:
            raise ServerError(f"GET {path} -> {status}: {payload!r}")
        return payload

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue_prompt(self, prompt: dict, client_id: str | None = None) -> tuple[int, dict]:
        """POST /prompt; returns (HTTP status, response JSON) without judging it."""
        body = {"prompt": prompt}
        if client_id:
            body["client_id"] = client_id
        return self.request("POST", "/prompt", body)

    def wait_for_history(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history/<id> until the prompt finished (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                history = self.get_json(f"/history/{prompt_id}")
            except (TimeoutError, urllib.error.URLError) as error:
                # While a prompt loads models on a busy machine the server can answer late;
                # a slow poll is not what is being tested, a dead server is.
                if not self.is_alive():
                    raise ServerError(f"ComfyUI died while running prompt {prompt_id}:\n{self.log_tail()}") from error
                continue
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if entry and "status" in entry:  # ComfyUI writes the entry once the prompt is over
                return entry
            if not self.is_alive():
                raise ServerError(f"ComfyUI died while running prompt {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.3)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run_prompt(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue a prompt that must validate, wait for it, and return its /history entry."""
        status, response = self.queue_prompt(prompt)
        if status != 200:
            raise ServerError(f"/prompt refused the prompt ({status}): {json.dumps(response, indent=1)[:4000]}")
        return self.wait_for_history(response["prompt_id"], timeout)

    def output_files(self, entry: dict) -> list[Path]:
        """Files that a finished prompt's SaveImage-like nodes wrote, as paths on disk."""
        files = []
        for node_output in entry.get("outputs", {}).values():
            for image in node_output.get("images", []):
                folder = self.base_dir / image.get("type", "output") / image.get("subfolder", "")
                files.append(folder / image["filename"])
        return files


def history_messages(entry: dict, kind: str) -> list[dict]:
    """The payloads of one kind of execution message ('execution_error', ...) in a /history entry."""
    return [payload for name, payload in entry.get("status", {}).get("messages", []) if name == kind]


# -- the models tree with the names people have ---------------------------------------------------
# (model folder, the file/folder name users have) -> the tiny file/folder (dla_harness.tree) that stands
# in for it. The shipped workflows (workflows/) use the left-hand names.
USER_MODEL_NAMES = {
    ("diffusion_models", "flux1-dev.safetensors"): TINY_FLUX,
    ("vae", "ae.safetensors"): TINY_VAE,
    ("loras", "dla_internvl3-8b_flux1-dev_lora.safetensors"): TINY_LORA,
    ("mllm", "InternVL3-8B-hf"): TINY_MLLM,
    ("dla", "dla_internvl3-8b_flux1-dev.safetensors"): TINY_DLA,
}
# Names in the Qwen-Image-Edit / FLUX Kontext workflows, listed on the server as empty placeholder files so
# the front end offers them (browser tests). Those workflows need ComfyUI's full-size text encoders through
# the stock loaders, so they run on real tiny files in tests/integration/test_qwen_kontext_workflows.py.
LISTED_ONLY_MODEL_NAMES = {
    ("diffusion_models", "qwen_image_edit_2509_fp8_e4m3fn.safetensors"),
    ("diffusion_models", "flux1-dev-kontext_fp8_scaled.safetensors"),
    ("text_encoders", "qwen_2.5_vl_7b_fp8_scaled.safetensors"),
    ("text_encoders", "clip_l.safetensors"),
    ("text_encoders", "t5xxl_fp8_e4m3fn_scaled.safetensors"),
    ("vae", "qwen_image_vae.safetensors"),
    # FLUX.2 [dev] / [klein] and Qwen-Image-Edit-2511 (tests/integration/http/test_flux2_qwen2511_workflows.py runs
    # them on tiny files through the test-only tiny loaders)
    ("diffusion_models", "flux2_dev_fp8mixed.safetensors"),
    ("diffusion_models", "flux-2-klein-4b-fp8.safetensors"),
    ("diffusion_models", "qwen_image_edit_2511_fp8mixed.safetensors"),
    ("text_encoders", "mistral_3_small_flux2_fp8.safetensors"),
    ("text_encoders", "qwen_3_4b.safetensors"),
    ("vae", "flux2-vae.safetensors"),
    # Krea 2 (tests/integration/http/test_krea2_workflows.py runs them on tiny files through the tiny loaders)
    ("diffusion_models", "krea2_turbo_int8_convrot.safetensors"),
    ("text_encoders", "qwen3vl_4b_fp8_scaled.safetensors"),
    # The paper's pipeline on FLUX.2 [klein] (tests/integration/http/test_flux2_trained_dla_http.py runs it on a
    # DLA + LoRA trained on a tiny [klein]); the MLLM folder is listed as a folder with an empty config.json
    ("mllm", "Qwen3-VL-4B-Instruct"),
    ("dla", "dla_qwen3-vl-4b_flux2-klein-4b.safetensors"),
    ("loras", "dla_qwen3-vl-4b_flux2-klein-4b_lora.safetensors"),
}

# The reference images the workflows' LoadImage nodes name (written into the server's input/ folder).
REFERENCE_IMAGE = "dla_subject_reference.png"
SECOND_REFERENCE_IMAGE = "dla_second_reference.png"  # image2 of the FLUX.2 / Qwen-Image-Edit-2511 workflows


def models_tree_with_user_names(tiny_models_dir: Path, dest: Path, user_names: bool = True) -> Path:
    """A models/ tree at ``dest``: every tiny model linked under its own name AND under the user's name.

    ``user_names=False``: the tiny models under their own names only, so none of the files the shipped
    workflows name exists (what a fresh ComfyUI has: the front end's missing-models list shows them).
    """
    tiny_models_dir = Path(tiny_models_dir).resolve()
    for folder in sorted(p for p in tiny_models_dir.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True, exist_ok=True)
        for entry in folder.iterdir():
            (dest / folder.name / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    if not user_names:
        return dest
    for (folder, user_name), tiny_name in USER_MODEL_NAMES.items():
        target = tiny_models_dir / folder / tiny_name
        if not target.exists():
            raise ServerError(f"the tiny models tree has no {folder}/{tiny_name} to stand in for {user_name}")
        (dest / folder).mkdir(parents=True, exist_ok=True)
        (dest / folder / user_name).symlink_to(target, target_is_directory=target.is_dir())
    for folder, user_name in LISTED_ONLY_MODEL_NAMES:
        (dest / folder).mkdir(parents=True, exist_ok=True)
        if folder == "mllm":  # MLLM Loader lists the folders that hold a config.json
            (dest / folder / user_name).mkdir()
            (dest / folder / user_name / "config.json").write_text("{}")
        else:
            (dest / folder / user_name).touch()
    return dest


def write_reference_image(path: Path, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A smooth random RGB picture (PNG, not square so resizing paths are exercised)."""
    import numpy as np
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.5 + 0.4 * np.sin(5 * x + 3 * y + p) for p in rng.uniform(0, 6.28, 3)], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rgb * 255).astype("uint8"), "RGB").save(path)
    return path


# -- one server shared by the whole pytest session ------------------------------------------------
_shared: dict = {"server": None, "users": 0, "tmp": None}


def start_server(comfyui: Path, tiny_models_dir: Path, tmp: Path, user_names: bool = True) -> ComfyServer:
    """A started server under ``tmp`` (models tree, base dir, the workflows' reference images)."""
    models = models_tree_with_user_names(tiny_models_dir, tmp / "models", user_names=user_names)
    log_name = "comfyui-server.log" if user_names else "comfyui-server-without-user-models.log"
    server = ComfyServer(comfyui, models, tmp / "base", ARTIFACTS_DIR / log_name)
    write_reference_image(server.base_dir / "input" / REFERENCE_IMAGE)
    write_reference_image(server.base_dir / "input" / SECOND_REFERENCE_IMAGE, size=(64, 40), seed=1)
    return server.start()


def acquire_server(comfyui: Path, tiny_models_dir: Path, user_names: bool = True) -> ComfyServer:
    """The session's ComfyUI server, started on first use; pair every call with `release_server`."""
    if _shared["server"] is None:
        tmp = Path(tempfile.mkdtemp(prefix="dla-comfy-server-"))
        try:
            server = start_server(comfyui, tiny_models_dir, tmp, user_names=user_names)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _shared.update(server=server, tmp=tmp)
    _shared["users"] += 1
    return _shared["server"]


def release_server() -> None:
    """Stop the shared server once its last user is done with it."""
    _shared["users"] -= 1
    if _shared["users"] <= 0 and _shared["server"] is not None:
        _shared["server"].stop()
        shutil.rmtree(_shared["tmp"], ignore_errors=True)
        _shared.update(server=None, users=0, tmp=None)


def comfy_server_fixture(comfyui_path, tiny_models_dir):
    """Body of the session fixture ``comfy_server`` (HTTP and browser conftests): the shared server."""
    server = acquire_server(comfyui_path, tiny_models_dir)
    try:
        yield server
    finally:
        release_server()


def server_without_user_models_fixture(comfyui_path, tiny_models_dir):
    """Body of a fixture for a second server (not the shared one) without the files the workflows name.

    Its models tree has the tiny models under their own names only (no `USER_MODEL_NAMES`, no
    `LISTED_ONLY_MODEL_NAMES`): a ComfyUI without FLUX.1-dev, ae, Qwen-Image-Edit, ... as a person has
    it before downloading them (tests/integration/browser/test_missing_models.py).
    """
    tmp = Path(tempfile.mkdtemp(prefix="dla-comfy-server-bare-"))
    server = None
    try:
        server = start_server(comfyui_path, tiny_models_dir, tmp, user_names=False)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # serve by hand: PYTHONPATH=tests/lib python -m dla_harness.server [models-dir]
    sys.path.append(str(REPO_ROOT))  # dla_core, to build the tiny models
    # Ctrl-C and `kill` both stop the server cleanly, also when a shell started this script in the
    # background (which leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # --without-user-models: serve the tiny models under their own names only (the workflows' files missing)
    args = [arg for arg in sys.argv[1:] if arg != "--without-user-models"]
    with_user_names = len(args) == len(sys.argv) - 1
    comfyui, reason = find_comfyui()
    if comfyui is None:
        sys.exit(reason)
    if args:
        tiny = Path(args[0])
    else:
        from dla_harness.tree import build_tiny_models_tree, tiny_flux_width

        tiny = build_tiny_models_tree(Path(tempfile.mkdtemp(prefix="dla-tiny-models-")), tiny_flux_width(comfyui))
    server = acquire_server(comfyui, tiny, user_names=with_user_names)
    print(f"ComfyUI with the pack on {server.url} (log: {server.log_path}); Ctrl-C stops it", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        release_server()
