"""The web page: in a real browser (Debian's chromium driven by Playwright), upload a photo, stylise it,
get back the image the Stylizer makes; nothing leaves this machine."""

from __future__ import annotations

import inspect
import math
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from nst_ff import serve
from nst_ff.errors import UserError
from nst_ff.paths import PROJECT_ROOT
from tests.conftest import SAMPLES

PHOTO = SAMPLES / "chelsea.jpg"
CHROMIUM = os.environ.get("NST_FF_CHROMIUM", "/usr/bin/chromium")
# No first-run, sync, update or background traffic: the test also checks that the page fetches nothing
# from the internet.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(i.convert("RGB"), dtype=np.float64) / 255 for i in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def test_each_model_is_loaded_once_and_bad_requests_are_clear() -> None:
    serve.load_stylizer.cache_clear()
    photo = Image.open(PHOTO)
    first = serve.stylize_photo(photo, "starry_night", strength=0.5)
    second = serve.stylize_photo(photo, "starry_night", preserve_color=True)
    assert first.size == second.size == photo.size
    assert serve.load_stylizer.cache_info().misses == 1 and serve.load_stylizer.cache_info().hits == 1
    with pytest.raises(UserError, match="no photo"):
        serve.stylize_photo(None, "starry_night")
    with pytest.raises(UserError, match="no such model file or shipped model"):
        serve.stylize_photo(photo, "no_such_style")


def test_a_name_in_two_model_folders_or_two_formats_is_one_style(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NST_FF_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    shipped = serve.shipped_styles()
    shutil.copy(PROJECT_ROOT / "checkpoints" / "the_scream.safetensors", tmp_path / "models" / "the_scream.safetensors")
    (tmp_path / "models" / "starry_night.onnx").write_bytes(b"")  # listed as a name even before it is read
    (tmp_path / "models" / "mine.onnx").write_bytes(b"")
    assert serve.shipped_styles() == [*shipped, "mine"]


def test_missing_gradio_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(UserError) as error:
        serve.build_app()
    assert str(error.value) == (
        "gradio is not installed (needed for the web page, nst-serve); pip install 'nst-ff[serve]'"
    )


@pytest.fixture
def outbound(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Host names this process looks up other than this machine's (Gradio's analytics would show here)."""
    seen: list[str] = []
    lookup = socket.getaddrinfo

    def recording_lookup(host, *args, **kwargs):
        if host not in LOCAL_HOSTS and host not in (None, "", "0.0.0.0"):
            seen.append(str(host))
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording_lookup)
    yield seen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_page_in_a_real_browser(tmp_path: Path, outbound: list[str]) -> None:
    pytest.importorskip("gradio", reason="the web page needs gradio: pip install 'nst-ff[serve]'")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (or set NST_FF_CHROMIUM)")
    port = free_port()
    app = serve.serve(port=port, block=False)
    requests: list[str] = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#photo input[type=file]", str(PHOTO))
            page.locator("#photo img").wait_for(timeout=30_000)  # the upload's preview
            page.click("#run")
            result = page.locator("#result img")
            result.wait_for(timeout=60_000)
            src = result.get_attribute("src")
            png = tmp_path / "result.png"
            png.write_bytes(page.request.get(page.evaluate("s => new URL(s, location.href).href", src)).body())
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(tmp_path / "serve.png"))
            browser.close()
    finally:
        app.close()
    if os.environ.get("NST_FF_SCREENSHOT"):  # how the README's screenshot is made
        shutil.copy(tmp_path / "serve.png", os.environ["NST_FF_SCREENSHOT"])
    got, photo = Image.open(png), Image.open(PHOTO)
    assert got.size == photo.size
    expected = serve.stylize_photo(photo, "starry_night")
    assert psnr(got, expected) > 40
    assert psnr(got, photo) < 20  # stylised, not the photo sent back
    hosts = {urlparse(url).hostname for url in requests if urlparse(url).scheme in ("http", "https", "ws", "wss")}
    assert hosts <= LOCAL_HOSTS, f"the page fetched from {hosts - LOCAL_HOSTS}"
    assert not outbound, f"the server looked up {outbound}"


def test_a_mistake_on_the_page_is_told_there_without_a_traceback_on_the_console(
    capfd: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Before: the page showed the message and the server's console a 30-line traceback of it."""
    client_module = pytest.importorskip(
        "gradio_client", reason="the web page needs gradio: pip install 'nst-ff[serve]'"
    )
    port = free_port()
    app = serve.serve(port=port, block=False)
    try:
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
        photo = client_module.handle_file(str(PHOTO))
        with pytest.raises(Exception, match=r"/no/model\.safetensors: no such model file"):
            client.predict(photo, "starry_night", None, "/no/model.safetensors", 1.0, False, api_name="/run")
        # Before: "The upstream Gradio app has raised an exception" on the page, Gradio's traceback on the console.
        (tmp_path / "notes.jpg").write_text("not a photo")
        (tmp_path / "cut.jpg").write_bytes(PHOTO.read_bytes()[:3000])
        for name, reason in (("notes.jpg", "not an image file"), ("cut.jpg", r"unreadable \(.*\)")):
            with pytest.raises(Exception, match=rf"{name}: {reason}; upload a JPEG, PNG"):
                upload = client_module.handle_file(str(tmp_path / name))
                client.predict(upload, "starry_night", None, "", 1.0, False, api_name="/run")
    finally:
        app.close()
    assert "Traceback" not in capfd.readouterr().err


def test_served_beyond_this_machine_a_model_path_sent_to_the_api_is_not_read() -> None:
    """The page hides the path box off loopback. Before: the API loaded any file of the server's as a model and
    told which ones exist."""
    client_module = pytest.importorskip("gradio_client", reason="the web page needs gradio")
    port = free_port()
    app = serve.build_app(model_paths=False)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False)
    try:
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
        photo = client_module.handle_file(str(PHOTO))
        result = client.predict(photo, "starry_night", None, "/no/model.safetensors", 1.0, False, api_name="/run")
    finally:
        app.close()
    assert psnr(Image.open(result), serve.stylize_photo(Image.open(PHOTO), "starry_night")) > 40  # the style's


def test_a_device_this_machine_lacks_is_refused_before_serving() -> None:
    """Before: the page started and every request failed with the device's error."""
    with pytest.raises(UserError, match="device=cuda:99: no such CUDA GPU here"):
        serve.serve(port=free_port(), device="cuda:99", block=False)


def test_draft_config_has_the_entry_function_options() -> None:
    from hydra import compose, initialize_config_dir

    from nst_ff.paths import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR / "serve"), version_base="1.3"):
        cfg = compose("serve", overrides=["port=8080"])
    options = {key: value for key, value in cfg.items() if key != "hydra"}
    assert set(options) == set(inspect.signature(serve.serve).parameters) - {"block"}
    assert options["host"] == "127.0.0.1" and options["port"] == 8080
