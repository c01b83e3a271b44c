"""``python -m vae_attention.data download``: every byte comes from a local HTTP server on 127.0.0.1.

The server serves tiny files in the official formats and can cut a transfer half-way, ignore Range
requests or serve wrong content; the tests assert on the files left on disk and on the error lines.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from vae_attention.data import MVTecAD, UCSDPed1
from vae_attention.data.__main__ import main
from vae_attention.data.download import (
    DSPRITES_IMAGES,
    MVTEC_LICENCE,
    MVTEC_URLS,
    download,
    download_dsprites,
    download_mnist,
    fetch,
)
from vae_attention.data.dsprites import NPZ_NAME, DSprites
from vae_attention.data.mnist import load_mnist_split
from vae_attention.data.mvtec import MVTEC_CATEGORIES
from vae_attention.errors import ConfigError, DataError

TINY_IMAGES = 384  # conftest's TINY_DSPRITES_SIZES: 1 x 3 x 2 x 4 x 4 x 4
TINY_UCSD_CLIPS = {"train": 1, "test": 2, "gt": 1}


class _Handler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` support; per-path flags 'cut_once', 'cut_always', 'no_range'."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        state = self.server.state
        asked = self.headers.get("Range")
        state.requests.append((self.path, asked))
        body, flags = state.files.get(self.path), state.flags.get(self.path, set())
        if body is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", asked)[1]) if asked and "no_range" not in flags else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if "cut_always" in flags or ("cut_once" in flags and self.path not in state.cut):
            state.cut.add(self.path)
            payload = payload[: len(payload) // 2]  # then the connection closes (HTTP/1.0)
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class _State:
    def __init__(self, port):
        self.url = f"http://127.0.0.1:{port}"
        self.files, self.flags, self.requests, self.cut = {}, {}, [], set()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def dead_url():
    """A 127.0.0.1 URL where nothing listens (the port was bound, then released)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    httpd.server_close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory):
    from helpers.datasets import write_dsprites_npz

    return write_dsprites_npz(tmp_path_factory.mktemp("npz") / NPZ_NAME).read_bytes()


def _npz_variant(npz: bytes, **replace) -> bytes:
    with np.load(io.BytesIO(npz), allow_pickle=True) as f:
        arrays = {k: f[k] for k in f.files}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{**arrays, **replace})
    return buffer.getvalue()


def _nothing_left(folder: Path, name: str) -> bool:
    return not (folder / name).exists() and not (folder / f"{name}.part").exists()


# ----------------------------------------------------------------------------------------------------
# dSprites and the transfer itself
# ----------------------------------------------------------------------------------------------------

def test_dsprites_downloaded_validated_and_readable(server, npz_bytes, tmp_path, capsys):
    server.files[f"/{NPZ_NAME}"] = npz_bytes
    paths = download("dsprites", tmp_path, base_url=server.url, expected_images=TINY_IMAGES, progress=True)
    assert paths == [tmp_path / NPZ_NAME] and paths[0].read_bytes() == npz_bytes
    assert not (tmp_path / f"{NPZ_NAME}.part").exists()
    assert DSprites(tmp_path, cache_dir=tmp_path / "cache").source == "npz"
    assert "already present" not in capsys.readouterr().err
    download("dsprites", tmp_path, base_url=server.url)  # present: no second request
    assert len(server.requests) == 1 and "already present" in capsys.readouterr().err


@pytest.mark.parametrize("variant, message", [
    ({}, f"holds {TINY_IMAGES} images, expected {DSPRITES_IMAGES}"),
    ({"imgs": np.zeros((TINY_IMAGES, 64, 64), np.int64)}, "imgs is (384, 64, 64) int64, expected (384, 64, 64) uint8"),
    ({"latents_values": np.zeros((TINY_IMAGES, 6), np.float32)}, "latents_values is (384, 6) float32"),
    ({"imgs": np.zeros((TINY_IMAGES, 32, 32), np.uint8)}, "expected (384, 64, 64) integers"),
])
def test_dsprites_wrong_count_shape_or_dtype_refused(server, npz_bytes, tmp_path, variant, message):
    server.files[f"/{NPZ_NAME}"] = _npz_variant(npz_bytes, **variant) if variant else npz_bytes
    expected = DSPRITES_IMAGES if not variant else TINY_IMAGES
    with pytest.raises(DataError, match="served a file that is not the expected one") as err:
        download_dsprites(tmp_path, base_url=server.url, expected_images=expected, progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert _nothing_left(tmp_path, NPZ_NAME)


def _corrupt_imgs(npz: bytes) -> bytes:
    damaged = bytearray(npz)
    damaged[2000:2008] = bytes(b ^ 0xFF for b in damaged[2000:2008])  # inside the deflated imgs member
    return bytes(damaged)


@pytest.mark.parametrize("content, message", [
    (lambda npz: npz[: len(npz) // 2], "unreadable"),  # a complete transfer of a cut-off file
    (lambda npz: b"<html>Too many requests</html>", "unreadable"),
    (_corrupt_imgs, "imgs.npy"),  # central directory intact, the bytes of imgs are not
])
def test_truncated_or_wrong_content_refused(server, npz_bytes, tmp_path, content, message):
    server.files[f"/{NPZ_NAME}"] = content(npz_bytes)
    with pytest.raises(DataError, match=re.escape(f"{server.url}/{NPZ_NAME} served a file")) as err:
        download_dsprites(tmp_path, base_url=server.url, expected_images=TINY_IMAGES, progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert _nothing_left(tmp_path, NPZ_NAME)


@pytest.mark.parametrize("flags, second_range", [
    ({"cut_once"}, "resumed"),  # the server honours Range: the second request continues the .part
    ({"cut_once", "no_range"}, "restarted"),  # it ignores Range (200, whole file): the .part starts again
])
def test_interrupted_transfer_completed_in_one_call(server, npz_bytes, tmp_path, capsys, flags, second_range):
    server.files[f"/{NPZ_NAME}"], server.flags[f"/{NPZ_NAME}"] = npz_bytes, flags
    download_dsprites(tmp_path, base_url=server.url, expected_images=TINY_IMAGES, progress=False)
    assert (tmp_path / NPZ_NAME).read_bytes() == npz_bytes
    assert _nothing_left(tmp_path, f"{NPZ_NAME}.part")
    half = len(npz_bytes) // 2
    assert [r for _, r in server.requests] == [None, f"bytes={half}-"]  # the client asks to resume either way
    assert f"broke off at {half} of {len(npz_bytes)} bytes; resuming" in capsys.readouterr().err


def test_interrupted_download_resumed_by_the_next_call(server, npz_bytes, tmp_path):
    path = f"/{NPZ_NAME}"
    server.files[path], server.flags[path] = npz_bytes, {"cut_always"}
    half = len(npz_bytes) // 2
    with pytest.raises(DataError) as err:
        download_dsprites(tmp_path, base_url=server.url, expected_images=TINY_IMAGES, progress=False, retries=0)
    part = tmp_path / f"{NPZ_NAME}.part"
    assert str(err.value) == (f"download of {server.url}{path} broke off at {half} of {len(npz_bytes)} bytes "
                              f"(kept {part}); run the same command again to resume")
    assert part.read_bytes() == npz_bytes[:half] and not (tmp_path / NPZ_NAME).exists()

    server.flags[path] = set()  # the network is back
    download_dsprites(tmp_path, base_url=server.url, expected_images=TINY_IMAGES, progress=False)
    assert server.requests[-1] == (path, f"bytes={half}-")
    assert (tmp_path / NPZ_NAME).read_bytes() == npz_bytes and not part.exists()


def test_stale_part_longer_than_the_file_restarts(server, npz_bytes, tmp_path):
    server.files[f"/{NPZ_NAME}"] = npz_bytes
    (tmp_path / f"{NPZ_NAME}.part").write_bytes(b"x" * (len(npz_bytes) + 10))  # server answers 416
    download_dsprites(tmp_path, base_url=server.url, expected_images=TINY_IMAGES, progress=False)
    assert (tmp_path / NPZ_NAME).read_bytes() == npz_bytes
    assert [r for _, r in server.requests] == [f"bytes={len(npz_bytes) + 10}-", None]


def test_unreachable_server_is_one_line_naming_url_and_destination(dead_url, tmp_path):
    with pytest.raises(DataError) as err:
        download_dsprites(tmp_path / "data", base_url=dead_url, progress=False)
    message = str(err.value)
    assert message.startswith(f"cannot download {dead_url}/{NPZ_NAME} (") and "\n" not in message
    assert message.endswith(f"download it by hand and put it at {tmp_path / 'data' / NPZ_NAME}")
    assert _nothing_left(tmp_path / "data", NPZ_NAME)


def test_http_error_names_status(server, tmp_path):
    with pytest.raises(DataError, match=re.escape(f"cannot download {server.url}/{NPZ_NAME} (HTTP 404")):
        download_dsprites(tmp_path, base_url=server.url, progress=False)


def test_environment_variable_overrides_the_base_url(server, npz_bytes, tmp_path, monkeypatch):
    server.files[f"/mirror/{NPZ_NAME}"] = npz_bytes
    monkeypatch.setenv("VAE_ATTENTION_DSPRITES_URL", f"{server.url}/mirror/")
    download_dsprites(tmp_path, expected_images=TINY_IMAGES, progress=False)
    assert (tmp_path / NPZ_NAME).read_bytes() == npz_bytes


# ----------------------------------------------------------------------------------------------------
# MNIST: md5 table
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory):
    """{official .gz name: bytes} of a tiny MNIST, and its arrays."""
    from helpers.datasets import tiny_mnist_arrays, write_mnist_raw

    arrays = tiny_mnist_arrays()
    raw = write_mnist_raw(tmp_path_factory.mktemp("mnist_src"), arrays, gz=True) / "MNIST" / "raw"
    return {p.name: p.read_bytes() for p in sorted(raw.iterdir())}, arrays


def test_mnist_checksummed_into_torchvision_layout(server, dead_url, mnist_files, tmp_path):
    files, arrays = mnist_files
    table = [(name, hashlib.md5(data).hexdigest()) for name, data in files.items()]
    server.files.update({f"/mnist/{name}": data for name, data in files.items()})
    paths = download_mnist(tmp_path, mirrors=[f"{dead_url}/", f"{server.url}/mnist/"], resources=table,
                           progress=False)  # the first mirror is down: the next one is tried, as torchvision does
    assert sorted(p.name for p in paths) == sorted(files) and len(files) == 4
    assert sorted(os.listdir(tmp_path / "MNIST" / "raw")) == sorted(files)  # no .part left
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = load_mnist_split(tmp_path, split)
        np.testing.assert_array_equal(images, arrays[prefix][0])
        np.testing.assert_array_equal(labels, arrays[prefix][1])


def test_mnist_checksum_mismatch_refused(server, mnist_files, tmp_path):
    files, _ = mnist_files
    name = "train-images-idx3-ubyte.gz"
    server.files[f"/{name}"] = gzip.compress(b"not mnist")
    with pytest.raises(DataError, match=f"has md5 {hashlib.md5(server.files['/' + name]).hexdigest()}, "
                                        f"expected {'0' * 32}"):
        download_mnist(tmp_path, base_url=server.url, resources=[(name, "0" * 32)], progress=False)
    assert _nothing_left(tmp_path / "MNIST" / "raw", name)


def test_mnist_defaults_are_torchvisions_published_mirrors_and_checksums(dead_url, tmp_path):
    from torchvision.datasets import MNIST

    with pytest.raises(DataError) as err:  # nothing listens on the mirror; only the first file is tried
        download_mnist(tmp_path, mirrors=[dead_url], progress=False)
    assert f"{dead_url}/{MNIST.resources[0][0]}" in str(err.value)
    assert MNIST.mirrors[0].startswith("https://") and len(MNIST.resources[0][1]) == 32


# ----------------------------------------------------------------------------------------------------
# Archives: UCSD Ped1 and MVTec AD
# ----------------------------------------------------------------------------------------------------

def _tar(source: Path, top: str, mode: str, drop: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        tf.add(source / top, arcname=top, filter=lambda m: None if any(d in m.name for d in drop) else m)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ucsd_tree(tmp_path_factory):
    from helpers.datasets import write_ucsd_ped1

    root = tmp_path_factory.mktemp("ucsd_src")
    write_ucsd_ped1(root)  # Train001 (3), Test001 (3) + Test001_gt (3), Test002 (2); AppleDouble junk
    return root


def test_ucsd_archive_checked_and_unpacked(server, ucsd_tree, tmp_path):
    server.files["/UCSD_Anomaly_Dataset.tar.gz"] = _tar(ucsd_tree, "UCSD_Anomaly_Dataset.v1p2", "w:gz")
    paths = download("ucsd", tmp_path, base_url=server.url, min_clips=TINY_UCSD_CLIPS, progress=False)
    assert paths == [tmp_path / "UCSD_Anomaly_Dataset.v1p2"]
    assert sorted(os.listdir(tmp_path)) == ["UCSD_Anomaly_Dataset.v1p2"]  # archive, .part, staging all gone
    test = UCSDPed1(tmp_path, "test", image_size=16)
    assert test.clips == ["Test001"] and len(test) == 3 and len(UCSDPed1(tmp_path, "train", image_size=16)) == 3


@pytest.mark.parametrize("drop, min_clips, message", [
    ((), None, "holds 1 UCSD Ped1 train clips, expected at least 34"),  # the official counts by default
    (("Test001_gt/003.bmp",), TINY_UCSD_CLIPS, "Test001_gt holds 2 masks but Test001 3 frames"),
    (("Test001_gt",), TINY_UCSD_CLIPS, "holds 0 UCSD Ped1 gt clips, expected at least 1"),
])
def test_ucsd_archive_without_the_loaders_members_refused(server, ucsd_tree, tmp_path, drop, min_clips, message):
    server.files["/UCSD_Anomaly_Dataset.tar.gz"] = _tar(ucsd_tree, "UCSD_Anomaly_Dataset.v1p2", "w:gz", drop)
    with pytest.raises(DataError, match=re.escape(message)):
        download("ucsd", tmp_path, base_url=server.url, min_clips=min_clips, progress=False)
    assert os.listdir(tmp_path) == []


def test_hand_placed_archive_is_checked_and_unpacked_without_network(dead_url, ucsd_tree, tmp_path):
    (tmp_path / "UCSD_Anomaly_Dataset.tar.gz").write_bytes(_tar(ucsd_tree, "UCSD_Anomaly_Dataset.v1p2", "w:gz"))
    download("ucsd", tmp_path, base_url=dead_url, min_clips=TINY_UCSD_CLIPS, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["UCSD_Anomaly_Dataset.tar.gz", "UCSD_Anomaly_Dataset.v1p2"]  # kept
    assert len(UCSDPed1(tmp_path, "train", image_size=16)) == 3


@pytest.fixture(scope="module")
def mvtec_tree(tmp_path_factory):
    from helpers.datasets import write_mvtec_category

    root = tmp_path_factory.mktemp("mvtec_src")
    write_mvtec_category(root, "bottle", "RGB", n_train=2, n_good=1, side=8)
    return root


def test_mvtec_category_licence_then_layout(server, mvtec_tree, tmp_path, capsys):
    server.files["/bottle.tar.xz"] = _tar(mvtec_tree, "bottle", "w:xz")
    assert main(["download", "mvtec", "--category", "bottle", "--to", str(tmp_path), "--base-url", server.url,
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith(MVTEC_LICENCE) and "CC BY-NC-SA 4.0" in MVTEC_LICENCE
    assert out == f"mvtec: {tmp_path / 'bottle'}\n" and sorted(os.listdir(tmp_path)) == ["bottle"]
    test = MVTecAD(tmp_path, "bottle", "test", image_size=8)
    assert len(test) == 3 and int(test.labels.sum()) == 2
    assert len(MVTecAD(tmp_path, "bottle", "train", image_size=8)) == 2


def test_mvtec_archive_missing_a_mask_refused(server, mvtec_tree, tmp_path):
    server.files["/bottle.tar.xz"] = _tar(mvtec_tree, "bottle", "w:xz", drop=("001_mask.png",))
    with pytest.raises(DataError, match=re.escape("lacks the mask bottle/ground_truth/broken_large/001_mask.png")):
        download("mvtec", tmp_path, categories=["bottle"], base_url=server.url, progress=False)
    assert os.listdir(tmp_path) == []


def test_mvtec_licence_printed_before_fetching_and_official_urls(dead_url, tmp_path, capsys):
    with pytest.raises(DataError, match=re.escape(f"cannot download {dead_url}/grid.tar.xz")):
        download("mvtec", tmp_path, categories=["grid"], base_url=dead_url, progress=False)
    assert capsys.readouterr().err.startswith(MVTEC_LICENCE)
    assert sorted(MVTEC_URLS) == sorted(MVTEC_CATEGORIES)
    assert all(url.startswith("https://") and url.endswith(f"/{c}.tar.xz") for c, url in MVTEC_URLS.items())
    with pytest.raises(ConfigError, match="unknown MVTec AD categories"):
        download("mvtec", tmp_path, categories=["bottel"])


def test_fetch_tries_mirrors_in_order_and_names_all(dead_url, tmp_path):
    with pytest.raises(DataError) as err:
        fetch([f"{dead_url}/a", f"{dead_url}/b"], tmp_path / "f", lambda p: None, progress=False)
    assert re.fullmatch(rf"cannot download {dead_url}/a \(.+\); {dead_url}/b \(.+\): download it by hand and put "
                        rf"it at {re.escape(str(tmp_path / 'f'))}", str(err.value))


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

def test_cli_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as done:
        main(["download", "--help"])
    assert done.value.code == 0 and "--to DIR" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["download", "imagenet", "--to", "x"])
    assert done.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_cli_prints_one_line_when_offline(dead_url, tmp_path, monkeypatch, capsys):
    # In-process (the module's ``__main__`` guard is sys.exit(main())): a subprocess would spend ~8 s importing
    # torch through the package's __init__.
    monkeypatch.setenv("VAE_ATTENTION_DSPRITES_URL", dead_url)
    assert main(["download", "dsprites", "--to", str(tmp_path), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: cannot download {dead_url}/{NPZ_NAME} (")
    assert err.endswith(f"put it at {tmp_path / NPZ_NAME}\n") and err.count("\n") == 1
