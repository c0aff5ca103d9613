"""Videos: clips with sound round-trip through every output type, bad files give one line, interruptions
leave nothing behind."""

from __future__ import annotations

import itertools
import resource
import shutil
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from PIL import Image

from nst_ff.images import load_image
from nst_ff.paths import PROJECT_ROOT
from nst_ff.temporal import MOTIONS, synthetic_clip
from nst_ff.video import VideoError, _gif_frame, stylize_video
from tests.conftest import SAMPLES
from tests.test_infer import infer, model  # noqa: F401 (the tiny model fixture)

FPS = 25
SAMPLE_RATE = 48000


def make_clip(
    path: Path,
    seconds: int = 2,
    size: tuple[int, int] = (120, 160),
    audio: bool = True,
    rotation: int = 0,
    pixel_aspect: Fraction | None = None,
) -> None:
    """A pan over a sample photo, H.264 at 25 frames/s, with a 440 Hz stereo AAC tone as long as the video;
    ``rotation``: a display rotation, as phones record; ``pixel_aspect``: non-square pixels' width / height."""
    photo = load_image(SAMPLES / "rocket.jpg")[0]
    frames, _ = synthetic_clip(photo, MOTIONS["pan"], seconds * FPS, size)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.height, video.width = size
        video.pix_fmt = "yuv444p" if size[0] % 2 or size[1] % 2 else "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        if pixel_aspect:
            video.codec_context.sample_aspect_ratio = pixel_aspect
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="stereo") if audio else None
        for i, frame in enumerate(frames):
            rgb = frame.mul(255).round().byte().permute(1, 2, 0).numpy()
            picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if sound is not None:
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(seconds * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = tone[start : start + 1024]
                samples = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                samples.sample_rate, samples.pts = SAMPLE_RATE, start
                out.mux(sound.encode(samples))
            out.mux(sound.encode(None))


def describe(path: Path) -> dict[str, Any]:
    """Decoded to the end: size, frames, rate, codec, the audio's codec and duration, and the frames."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio
        frames, samples, rotations = [], 0, set()
        for packet in container.demux(video, *audio):
            for decoded in packet.decode():
                if packet.stream.type == "video":
                    frames.append(decoded.to_ndarray(format="rgb24"))
                    rotations.add(decoded.rotation)
                else:
                    samples += decoded.samples
        return {
            "rotations": rotations,
            "size": (video.codec_context.height, video.codec_context.width),
            "frames": len(frames),
            "rate": video.average_rate,
            "codec": video.codec_context.name,
            "audio": [(a.codec_context.name, round(samples / a.sample_rate, 2)) for a in audio],
            "pixels": np.stack(frames).astype(np.float64),
        }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    make_clip(path)
    return path


def identity(frames: torch.Tensor) -> torch.Tensor:
    return frames


def test_clip_with_sound_round_trips_through_infer(model: Path, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    source = tmp_path / "clip.mp4"
    shutil.copy(clip, source)
    result = infer(f"model={model}", f"input={source}", "video.batch_size=3")  # 50 frames: a partial last batch
    out = tmp_path / "clip_tiny.mp4"
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    before, after = describe(source), describe(out)
    assert after["size"] == before["size"] == (120, 160)
    assert after["frames"] == before["frames"] == 2 * FPS
    assert after["rate"] == before["rate"] == FPS
    assert after["codec"] == "h264"
    assert after["audio"] == before["audio"] == [("aac", 2.01)]  # copied: AAC's 1024-sample frames end at 2.005 s
    assert psnr(after["pixels"], before["pixels"]) < 20  # stylised, not copied


@pytest.mark.parametrize(
    ("name", "size", "codec", "audio"),
    [
        ("out.mov", (120, 160), "h264", True),
        ("out.mkv", (121, 161), "h264", True),  # odd sizes kept exactly (4:4:4)
        ("out.avi", (120, 160), "h264", True),
        ("out.webm", (121, 161), "vp9", False),  # WebM cannot hold AAC
        ("out.gif", (120, 160), "gif", False),
    ],
)
def test_every_output_type_keeps_size_rate_frames_and_pixels(
    tmp_path: Path, name: str, size: tuple[int, int], codec: str, audio: bool
) -> None:
    source = tmp_path / "in.mp4"
    make_clip(source, seconds=1, size=size)
    assert stylize_video(source, tmp_path / name, identity, audio=audio, progress=False) == FPS
    before, after = describe(source), describe(tmp_path / name)
    assert (after["size"], after["frames"], after["rate"], after["codec"]) == (size, FPS, FPS, codec)
    if audio:
        # The same packets; MP4 trims AAC's 1024 priming samples (an edit list), Matroska and AVI play them.
        (codec_in, seconds_in), (codec_out, seconds_out) = before["audio"][0], after["audio"][0]
        assert codec_out == codec_in and abs(seconds_out - seconds_in) <= 1024 / SAMPLE_RATE + 0.01
    else:
        assert after["audio"] == []
    assert psnr(after["pixels"], before["pixels"]) > 30  # colours and orientation survive the conversions


@pytest.mark.parametrize("name", ["out.mp4", "out.webm", "out.gif"])
def test_frames_whose_timestamps_go_back_are_written_in_order(tmp_path: Path, name: str) -> None:
    # A broken file: the fourth frame is stamped before the third (MPEG-4 part 2, no reordering, in Matroska).
    stamps = [0, 5, 6, 3, 7, 8]
    with av.open(str(tmp_path / "broken.mkv"), "w") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        packets = []
        for i in range(len(stamps)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            packets += video.encode(frame.reformat(format="yuv420p"))
        for i, packet in enumerate(packets + video.encode(None)):
            ticks = round(1 / (FPS * packet.time_base))
            packet.pts, packet.dts = stamps[i] * ticks, i * ticks
            out.mux(packet)
    # It was stylised to its end, then the encoder refused the stamps ("cannot write the video (Invalid argument)").
    assert stylize_video(tmp_path / "broken.mkv", tmp_path / name, identity, progress=False) == len(stamps)
    with av.open(str(tmp_path / name)) as written:
        frames = list(written.decode(video=0))
    assert len(frames) == len(stamps) and all(a.pts < b.pts for a, b in itertools.pairwise(frames))
    assert [round(float(frame.to_ndarray(format="rgb24").mean()) / 40) for frame in frames] == list(range(len(stamps)))


def test_webm_with_aac_sound_says_what_to_do(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"aac audio may not fit: write \.mkv, or video\.audio=false"):
        stylize_video(clip, tmp_path / "out.webm", identity, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_broken_empty_and_unsupported_files_give_one_line(clip: Path, tmp_path: Path) -> None:
    cases = {
        "empty.mp4": b"",
        "truncated.mp4": clip.read_bytes()[: len(clip.read_bytes()) // 2],
        "noise.mkv": np.random.default_rng(0).integers(0, 256, 10000, dtype=np.uint8).tobytes(),
        "text.avi": b"not a video at all\n" * 100,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    sound_only = tmp_path / "sound.mkv"
    with av.open(str(sound_only), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        samples.sample_rate = 8000
        out.mux(stream.encode(samples))
    messages = {}
    for source in [*(tmp_path / name for name in cases), sound_only, tmp_path / "missing.mp4"]:
        target = tmp_path / f"{source.stem}_out.mp4"
        with pytest.raises(VideoError) as error:
            stylize_video(source, target, identity, progress=False)
        messages[source.name] = message = str(error.value)
        assert message.startswith(f"{source}: ") and "\n" not in message, message
        assert not target.exists()
    assert "has no video stream" in messages["sound.mkv"] and "no such file" in messages["missing.mp4"]
    unwritable = Path("/proc/forbidden/out.mp4")  # before: a FileNotFoundError traceback
    with pytest.raises(VideoError, match=r"^/proc/forbidden/out\.mp4: cannot write \(No such file or directory\)"):
        stylize_video(clip, unwritable, identity, progress=False)


@pytest.mark.parametrize(
    "stylize",
    [
        lambda frames: frames[..., ::2, ::2],  # before: scaled back up by the encoder without a word
        lambda frames: frames.mul(255).byte(),  # before: encoded anyway, values wrapped around
        lambda frames: frames[:1],  # before: a zip() ValueError
        lambda frames: frames.mean(1, keepdim=True),  # before: a numpy array shape ValueError
        lambda frames: None,  # before: an AttributeError
    ],
)
def test_a_stylize_function_returning_other_frames_is_told_so(clip: Path, tmp_path: Path, stylize: Any) -> None:
    with pytest.raises(ValueError, match=r"^stylize returned .*; it must return float frames in \[0, 1\] of the shape"):
        stylize_video(clip, tmp_path / "out.mp4", stylize, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_leaves_no_output_and_keeps_an_old_one(clip: Path, tmp_path: Path) -> None:
    calls = 0

    def interrupted(frames: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return frames

    target = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        stylize_video(clip, target, interrupted, batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file
    target.write_bytes(b"previous result")
    calls = 0
    with pytest.raises(KeyboardInterrupt):
        stylize_video(clip, target, interrupted, batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"previous result"


def test_phone_rotation_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "portrait.mp4"
    make_clip(source, seconds=1, audio=False, rotation=-90)
    stylize_video(source, tmp_path / "out.mkv", identity, progress=False)
    after = describe(tmp_path / "out.mkv")
    assert (after["size"], after["frames"], after["rotations"]) == ((120, 160), FPS, {-90})


@pytest.mark.parametrize("name", ["out.gif", "out.avi"])
def test_phone_rotation_turns_the_frames_where_the_file_cannot_record_it(tmp_path: Path, name: str) -> None:
    """Before: GIF and AVI outputs of a phone's portrait clip played sideways."""
    source = tmp_path / "portrait.mp4"
    make_clip(source, seconds=1, audio=False, rotation=-90)  # shown turned a quarter clockwise
    stylize_video(source, tmp_path / name, identity, audio=False, progress=False)
    before, after = describe(source), describe(tmp_path / name)
    assert (after["size"], after["frames"], after["rotations"]) == ((160, 120), FPS, {0})
    assert psnr(after["pixels"], np.rot90(before["pixels"], -1, axes=(1, 2))) > 30


def test_a_folder_run_stylises_videos_as_videos_beside_photos(model: Path, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "holiday"
    (folder / "day2").mkdir(parents=True)
    shutil.copy(clip, folder / "day2" / "clip.mp4")
    shutil.copy(clip, folder / "CAMERA.MTS")  # a type FFmpeg reads and the output is not (before: refused as images)
    shutil.copy(SAMPLES / "coffee.jpg", folder / "coffee.jpg")
    (folder / "broken.mov").write_bytes(b"not a video")
    result = infer(f"model={model}", f"input={folder}")
    out = tmp_path / "holiday_tiny"
    assert result.returncode == 1 and "broken.mov: not a readable video" in result.stderr
    assert "1 of 4 file(s) failed" in result.stderr and "Traceback" not in result.stderr
    assert (out / "coffee.jpg").is_file() and not (out / "broken.mov").exists()
    assert describe(out / "day2" / "clip.mp4")["frames"] == describe(out / "CAMERA.mp4")["frames"] == 2 * FPS


def test_gif_frames_keep_few_colours_exactly() -> None:
    """Before: a frame of two greys became one flat grey (the fast octree's coarse buckets)."""
    two_greys = np.full((48, 64, 3), 19, np.uint8)
    two_greys[:, 32:] = 30
    ramp = np.repeat(np.repeat(np.linspace(0, 60, 64).astype(np.uint8)[None, :, None], 48, 0), 3, 2)  # 61 levels
    photo = load_image(SAMPLES / "chelsea.jpg")[0, :, :96, :128].mul(255).round().byte().permute(1, 2, 0).numpy()
    for rgb in (two_greys, ramp):
        assert np.array_equal(_gif_frame(rgb).to_ndarray(format="rgb24"), rgb)
    assert psnr(_gif_frame(photo).to_ndarray(format="rgb24").astype(np.float64), photo.astype(np.float64)) > 30


@pytest.mark.parametrize("loop", [None, 0, 2])  # plays once, forever, three times
def test_a_gif_keeps_its_frame_delays_and_loop_count(tmp_path: Path, loop: int | None) -> None:
    """Before: the long last frame (a pause before the GIF starts again) became 600 ms, and every GIF looped."""
    delays = [100, 200, 100, 2000]
    frames = [Image.fromarray(np.full((32, 48, 3), 60 * i, np.uint8)) for i in range(len(delays))]
    saved = {} if loop is None else {"loop": loop}
    frames[0].save(tmp_path / "in.gif", save_all=True, append_images=frames[1:], duration=delays, **saved)
    assert stylize_video(tmp_path / "in.gif", tmp_path / "out.gif", identity, progress=False) == len(delays)
    with Image.open(tmp_path / "out.gif") as out:
        assert out.info.get("loop") == loop
        assert [(out.seek(i), out.info["duration"])[1] for i in range(out.n_frames)] == delays


def test_a_crf_above_h264_s_scale_is_refused_not_clamped(model: Path, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    """Before: video.crf=60 passed the option check (VP9 goes to 63) and FFmpeg wrote H.264 at 51 without a word."""
    result = infer(f"model={model}", f"input={clip}", f"output={tmp_path / 'styled.mp4'}", "video.crf=60")
    assert result.returncode == 2 and "video.crf=60: H.264" in result.stderr and "takes 0 to 51" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "styled.mp4").exists()
    with pytest.raises(VideoError, match="takes 0 to 51"):
        stylize_video(clip, tmp_path / "styled.mkv", identity, crf=52, progress=False)
    assert stylize_video(clip, tmp_path / "styled.gif", identity, crf=60, progress=False) > 0  # GIF has no scale


def test_an_output_type_only_read_is_an_option_mistake(model: Path, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    """Before: .m4v passed the option check as a video type FFmpeg reads, then failed after the model loaded
    (exit 1); the input itself as the output likewise."""
    result = infer(f"model={model}", f"input={clip}", f"output={tmp_path / 'styled.m4v'}")
    assert result.returncode == 2 and "styled.m4v: not a video file type written here" in result.stderr
    assert ".mp4, .mov, .mkv, .webm, .avi, .gif" in result.stderr and not (tmp_path / "styled.m4v").exists()
    result = infer(f"model={model}", f"input={clip}", f"output={clip}", "overwrite=true")
    assert result.returncode == 2 and "is the input" in result.stderr


def test_a_full_disk_fails_each_file_in_one_line_and_leaves_nothing(model: Path, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    """Before: PyAV's write error (it writes through the Python file) was a traceback that ended the run, and the
    photos that had failed before it were never listed."""
    folder = tmp_path / "trip"
    folder.mkdir()
    shutil.copy(clip, folder / "clip.mp4")
    shutil.copy(SAMPLES / "coffee.jpg", folder / "coffee.jpg")

    def small_files() -> None:  # writes past 4 KB fail, as on a full disk ("File too large")
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    command = [sys.executable, str(PROJECT_ROOT / "infer.py"), f"model={model}", f"input={folder}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    for name in ("coffee.jpg", "clip.mp4"):
        assert f"trip_tiny/{name}: cannot write (File too large); choose a writable output" in result.stderr
    assert "2 of 2 file(s) failed" in result.stderr
    assert [p.name for p in (tmp_path / "trip_tiny").iterdir()] == [".nst-ff-output"]  # no temporaries


def test_non_square_pixels_are_kept(tmp_path: Path) -> None:
    """Before: a clip of DV's or an anamorphic camera's wide pixels came out squeezed (square pixels)."""
    source = tmp_path / "wide.mp4"
    make_clip(source, seconds=1, audio=False, pixel_aspect=Fraction(2))
    for name in ("out.mp4", "out.mkv"):  # H.264's own header; .webm keeps square pixels (PyAV 18 sets no DisplayWidth)
        stylize_video(source, tmp_path / name, identity, progress=False)
        with av.open(str(tmp_path / name)) as container:
            assert container.streams.video[0].sample_aspect_ratio == 2, name


def test_photo_jobs_and_option_checks_do_not_import_pyav() -> None:
    code = "import sys, nst_ff.infer, nst_ff.schema; print('av' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
