"""A web page to try styles on your own photos (Gradio): upload a photo, pick a shipped style or a model
file, set strength and colour preservation, see and download the result.

Runs offline: Gradio's analytics and version check are off, its theme's fonts are bundled with it, and
nothing is fetched from the internet (tests/test_serve.py checks the browser's requests).
gradio is optional: ``pip install 'nst-ff[serve]'``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from PIL import Image, UnidentifiedImageError

from nst_ff.device import resolve_device
from nst_ff.errors import UserError, require
from nst_ff.export import resolve_model, shipped_models
from nst_ff.stylize import Stylizer

MODEL_TYPES = [".safetensors", ".ckpt", ".onnx"]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def shipped_styles() -> list[str]:
    """The names ``model=`` takes, each once (``starry_night`` both shipped and in the user's models folder, or
    as .safetensors and .onnx: the one ``resolve_model`` finds first)."""
    return list(dict.fromkeys(path.stem for path in shipped_models()))


@functools.lru_cache(maxsize=8)
def load_stylizer(path: str, modified_ns: int, device: str, precision: str) -> Stylizer:
    """Each model file is loaded once per process; ``modified_ns`` reloads a file that changed on disk."""
    return Stylizer.from_file(path, device=device, precision=precision)


def stylize_photo(
    photo: Image.Image | None,
    model: str,
    strength: float = 1.0,
    preserve_color: bool = False,
    max_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> Image.Image:
    """What the page's button does: ``model`` is a shipped style's name or a model file's path."""
    if photo is None:
        raise UserError("no photo: upload one first")
    path = resolve_model(model)
    stylizer = load_stylizer(str(path.resolve()), path.stat().st_mtime_ns, device, precision)
    return stylizer.stylize(photo, strength=strength, preserve_color=preserve_color, max_size=max_size)


def _photo_told_on_the_page(gr: Any, preprocess: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The photo's decoding (``gr.Image.preprocess``), with an upload that is no readable image told on the page: in
    Gradio's own, it showed "an exception" there and a traceback on the server's console. Decoded whole here, so
    that a truncated file fails too. (A subclass of gr.Image would do it too, but Gradio writes a ``.pyi`` of
    each subclass beside its source: into the installed package.)"""

    def checked(payload: Any) -> Any:
        try:
            photo = preprocess(payload)
            if photo is not None:
                photo.load()
            return photo
        except (OSError, SyntaxError, ValueError) as error:
            name = getattr(payload, "orig_name", None) or "the photo"
            # Pillow's "cannot identify" names the upload's copy in Gradio's cache, not the user's file.
            what = "not an image file" if isinstance(error, UnidentifiedImageError) else f"unreadable ({error})"
            raise gr.Error(
                f"{name}: {what}; upload a JPEG, PNG, WebP, BMP or TIFF image", print_exception=False
            ) from None

    return checked


def build_app(
    device: str = "auto", precision: str = "auto", max_size: int | None = None, model_paths: bool = True
) -> Any:
    """The Gradio Blocks app. ``model_paths`` shows a box for a model path on the server's disk (only
    sensible when the page is served to this machine)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no analytics, no version check
    gr = require("gradio", "serve", "the web page, nst-serve")
    styles = shipped_styles()

    def run(
        photo: Image.Image | None, style: str, upload: str | None, path: str, strength: float, preserve: bool
    ) -> Image.Image:
        # Served beyond this machine, the path box is hidden, and a path sent to the API all the same is not read
        # (it loaded any file of the server's as a model, and said which ones exist).
        model = upload or ((path or "").strip() if model_paths else "") or style
        # The page shows the mistake; the server's console is not for tracebacks of the page's user's mistakes.
        if not model:
            raise gr.Error("no model: pick a style or give a model file", print_exception=False)
        try:
            return stylize_photo(photo, model, strength, preserve, max_size, device, precision)
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from None

    with gr.Blocks(title="nst-ff: fast neural style transfer") as app:
        gr.Markdown("## nst-ff: fast neural style transfer\nUpload a photo, pick a style, press **Stylise**.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(
                    type="pil",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=360,
                    label="photo",
                    elem_id="photo",
                )
                photo.preprocess = _photo_told_on_the_page(gr, photo.preprocess)
                default = "starry_night" if "starry_night" in styles else (styles[0] if styles else None)
                style = gr.Dropdown(styles, value=default, label="style (shipped)", elem_id="style")
                with gr.Accordion("another model", open=False):
                    upload = gr.File(
                        file_types=MODEL_TYPES,
                        type="filepath",
                        height=120,
                        label="a model file (.safetensors, .ckpt, .onnx)",
                        elem_id="model_file",
                    )
                    path = gr.Textbox(
                        label="or a model path on this machine", visible=model_paths, elem_id="model_path"
                    )
                strength = gr.Slider(0, 1, value=1, step=0.05, label="strength", elem_id="strength")
                preserve = gr.Checkbox(label="preserve the photo's colours", elem_id="preserve_color")
                button = gr.Button("Stylise", variant="primary", elem_id="run")
            result = gr.Image(
                type="pil",
                format="png",
                height=360,
                label="result",
                interactive=False,
                buttons=["download"],
                elem_id="result",
            )
        button.click(run, [photo, style, upload, path, strength, preserve], result)
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    precision: str = "auto",
    max_size: int | None = None,
    block: bool = True,
) -> Any:
    """The nst-serve command: serve the page on ``host:port`` (this machine only by default). ``block=False``
    returns the running app (``app.close()`` stops it)."""
    resolve_device(device)  # a device this machine lacks is refused now, not at every request
    app = build_app(device, precision, max_size, model_paths=host in LOOPBACK)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=not block,
            footer_links=[],
            ssr_mode=False,
            mcp_server=False,
        )
    except OSError:  # Gradio's message blames the port alone and names its own settings
        raise UserError(
            f"host={host} port={port}: cannot serve there (the port is in use or needs root, or the host is not "
            "this machine's); choose another port= or host="
        ) from None
    return app
