"""ferlab.serve as people use it: the real server on loopback, real photos, every bad input
answered with a JSON 4xx (or 503/504), never a 500, and the server serving on afterwards; and the
web page in a real browser (Debian's chromium through Selenium)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi", reason="ferlab.serve needs the serve extra (make install)")

from ferlab import EmotionRecognizer  # noqa: E402
from ferlab.inference.images import decode_image  # noqa: E402
from ferlab.serve import launch  # noqa: E402
from tests.conftest import doc_commands  # noqa: E402


def _start(tmp: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """The server in ``tmp``, with its temp dir there (to see that nothing is written) and its
    log beside it (``<tmp>.log``)."""
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    return launch(list(args), cwd=tmp, env={**os.environ, "TMPDIR": str(tmp / "tmp")},
                  log=tmp.with_suffix(".log"))


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real photograph shipped inside matplotlib (Grace Hopper, 512x600 JPEG)."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    process, url = _start(tmp, "--model", "cpu-trained", "--workers", "1", "--queue", "1")
    yield url, tmp
    _stop(process)
    log = tmp.with_suffix(".log").read_text()
    assert "Traceback" not in log and "200 OK" in log, log


def _error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]


def test_health_model_and_schema(server):
    url, _ = server
    assert requests.get(f"{url}/v1/health", timeout=10).json()["status"] == "ok"
    model = requests.get(f"{url}/v1/model", timeout=10).json()
    assert model["name"] == "cpu-trained" and model["privatetest_acc"] == 0.7225
    assert model["classes"][3] == "happy" and model["backend"] == "onnxruntime"
    assert len(model["version"]) == 12 and model["prior"] == "uniform"  # the default
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/v1/analyze", "/v1/faces", "/v1/health", "/v1/model"} <= set(schema["paths"])
    analyze = schema["paths"]["/v1/analyze"]["post"]
    assert "multipart/form-data" in analyze["requestBody"]["content"]
    assert {p["name"] for p in analyze["parameters"]} == {"annotate", "top_k"}
    page = requests.get(url, timeout=10)
    assert page.ok and "<canvas" in page.text
    assert "http" not in page.text.split("<script>")[1].replace("http://", "")  # no outside URL


def test_analyze_a_photo_as_upload_and_as_raw_body(server, photo):
    url, _ = server
    expected = EmotionRecognizer("cpu-trained").analyze(decode_image(photo))
    upload = requests.post(f"{url}/v1/analyze?top_k=3&annotate=true",
                           files={"image": ("photo.jpg", photo, "image/jpeg")}, timeout=60)
    raw = requests.post(f"{url}/v1/analyze", data=photo, timeout=60)
    for response in (upload, raw):
        assert response.status_code == 200, response.text
        faces = response.json()["faces"]
        assert [f["box"] for f in faces] == [f["box"] for f in expected]
        assert faces[0]["label"] == expected[0]["label"]
        assert faces[0]["probabilities"] == pytest.approx(expected[0]["probabilities"], abs=1e-5)
    answer = upload.json()
    assert [k["label"] for k in answer["faces"][0]["top_k"]][0] == expected[0]["label"]
    assert len(answer["faces"][0]["top_k"]) == 3 and answer["time_ms"] > 0
    assert answer["model"]["name"] == "cpu-trained"
    annotated = decode_image(base64.b64decode(answer["annotated_png"]))
    assert annotated.shape == (600, 512, 3)
    assert "annotated_png" not in raw.json()


def test_faces_endpoint_matches_the_recognizer(server, photo):
    url, _ = server
    image = decode_image(photo)
    x, y, w, h = EmotionRecognizer("cpu-trained").analyze(image)[0]["box"]
    crops = [image[y:y + h, x:x + w], image[y + 5:y + h - 5, x + 5:x + w - 5]]
    import cv2

    pngs = [cv2.imencode(".png", c)[1].tobytes() for c in crops]
    files = [("faces", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    response = requests.post(f"{url}/v1/faces", files=files, timeout=60)
    assert response.status_code == 200, response.text
    got = np.array([[f["probabilities"][c] for c in f["probabilities"]]
                    for f in response.json()["faces"]])
    # the same pixels as the server decodes them (a colour PNG decoded straight to grey differs
    # from OpenCV's colour-to-grey by a grey level here and there)
    expected = EmotionRecognizer("cpu-trained").predict_faces(
        [decode_image(png, grey=True) for png in pngs])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    close = EmotionRecognizer("cpu-trained").predict_faces(crops)  # from the colour crops
    np.testing.assert_allclose(got, close, atol=2e-3)


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, "PNG")
    return out.getvalue()


def _files(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


def test_every_bad_input_gets_a_json_4xx_and_the_server_serves_on(server, photo):
    url, tmp = server
    post = f"{url}/v1/analyze"
    before = _files(tmp)  # the server's own start-up files (ONNX Runtime's session id)
    cases = [
        (requests.post(post, data=b"", timeout=30), 400, "empty"),
        (requests.post(post, data=photo[: len(photo) // 3], timeout=30), 400, "bad_image"),
        (requests.post(post, data=b"hello, world\n", timeout=30), 400, "bad_image"),
        (requests.post(post, json={"image": "photo.jpg"}, timeout=30), 400, "bad_image"),
        (requests.post(post, files={"picture": ("a.jpg", photo)}, timeout=30), 400,
         "missing_field"),
        (requests.post(post, data=_png(8000, 6000), timeout=30), 413, "too_many_pixels"),
        (requests.post(post, data=b"\0" * (10 * 1024 * 1024 + 1), timeout=60), 413,
         "too_large"),
        (requests.post(f"{post}?top_k=-1", data=photo, timeout=30), 422, "invalid_request"),
        (requests.get(post, timeout=30), 405, "method_not_allowed"),
        (requests.get(f"{url}/etc/passwd", timeout=30), 404, "not_found"),
        (requests.post(f"{url}/v1/faces", files=[("faces", ("f.png", _png(48, 48)))] * 257,
                       timeout=60), 413, "too_many_faces"),
    ]
    for response, status, code in cases:
        _error(response, status, code)
    # a name is never a path on the server: a text body naming a file is just bad image data
    _error(requests.post(post, data=str(tmp / "photo.jpg").encode(), timeout=30), 400,
           "bad_image")
    assert requests.post(post, data=photo, timeout=60).json()["faces"]
    # nothing a request sent was written to disk (a 2 MB upload would spool to a temp file)
    big = requests.post(post, files={"image": ("big.bmp", _bmp(1200, 600))}, timeout=60)
    assert big.status_code == 200, big.text
    assert _files(tmp) == before


def test_hosts_headers_and_no_outside_docs(server):
    """DNS rebinding: a request naming another host is refused; every answer carries the
    security headers; no page loads code from a CDN (/docs is not served, the schema is)."""
    url, _ = server
    port = url.rsplit(":", 1)[1]
    _error(requests.get(f"{url}/v1/health", headers={"Host": "attacker.example"}, timeout=10),
           400, "bad_host")
    _error(requests.get(f"{url}/", headers={"Host": f"attacker.example:{port}"}, timeout=10),
           400, "bad_host")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert requests.get(f"{url}/v1/health", headers={"Host": host}, timeout=10).ok, host
    for path in ("/", "/v1/health", "/v1/model", "/nowhere"):
        response = requests.get(f"{url}{path}", timeout=10)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
    _error(requests.get(f"{url}/docs", timeout=10), 404, "not_found")
    assert requests.get(f"{url}/openapi.json", timeout=10).ok


def test_a_body_of_many_parts_is_refused_before_it_is_parsed(server, photo):
    """~190k tiny parts in 10 MB: counted, refused with 413, never parsed on the event loop."""
    url, _ = server
    boundary = "b"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=faces\r\n\r\nx\r\n" * 180_000
            + f"--{boundary}--\r\n").encode()
    assert len(body) < 10 * 1024 * 1024
    kind = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    for endpoint in ("analyze", "faces"):
        _error(requests.post(f"{url}/v1/{endpoint}", data=body, headers=kind, timeout=60), 413,
               "too_many_parts")
    assert requests.post(f"{url}/v1/analyze", data=photo, timeout=60).ok


def test_the_pixel_limit_is_per_request(server):
    """Each image under the limit, together over it: refused, one decoded at a time."""
    url, _ = server
    big = _png(5000, 5000)  # 25 MP each, 40 MP a request
    _error(requests.post(f"{url}/v1/faces", files=[("faces", ("f.png", big))] * 2, timeout=60),
           413, "too_many_pixels")
    assert "--max-pixels" in requests.post(f"{url}/v1/faces", files=[(
        "faces", ("f.png", big))] * 2, timeout=60).json()["error"]["message"]
    assert requests.post(f"{url}/v1/faces", files=[("faces", ("f.png", big))],
                         timeout=60).ok


def test_a_timed_out_job_stops_at_its_next_step():
    """After a 504 the worker does not run the request to its end."""
    import asyncio

    from ferlab.serve import ApiError, Limits, Service

    service = Service([EmotionRecognizer("cpu-trained")], "cpu-trained",
                      Limits(timeout_s=0.2))
    steps = []

    def slow(recognizer, job):
        for step in range(100):
            job.check()
            steps.append(step)
            time.sleep(0.05)
        return "finished"

    with pytest.raises(ApiError, match="longer than"):
        asyncio.run(service.run(slow))
    service.pool.shutdown(wait=True)  # the job has stopped, not run its 100 steps
    assert len(steps) < 100, len(steps)


def _bmp(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 110, 100)).save(out, "BMP")
    return out.getvalue()


def test_requests_beyond_the_queue_get_503_with_retry_after(server, photo):
    """One worker and a queue of one: of 12 photos sent at once, those beyond the two the
    server holds are refused with 503 and Retry-After, the rest answered; never a 500."""
    url, _ = server
    big = _bmp(2000, 1600)  # a slow request: the queue fills while it runs
    for _ in range(5):  # waves until one overlaps enough (the first almost always does)
        gate, answers = threading.Barrier(12), []

        def send(gate=gate, answers=answers) -> None:
            gate.wait()
            answers.append(requests.post(f"{url}/v1/analyze", data=big, timeout=120))

        threads = [threading.Thread(target=send) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses
        if 503 in statuses:
            busy = next(a for a in answers if a.status_code == 503)
            _error(busy, 503, "busy")
            assert busy.headers["retry-after"] == "1"
            break
    else:
        pytest.fail("no request was refused in five waves of 12 with room for 2")
    assert requests.post(f"{url}/v1/analyze", data=photo, timeout=60).ok


def test_slow_requests_time_out_with_504(tmp_path, photo):
    process, url = _start(tmp_path, "--model", "cpu-trained", "--timeout", "0.001")
    try:
        _error(requests.post(f"{url}/v1/analyze", data=_bmp(2000, 1600), timeout=60), 504,
               "timeout")
        assert requests.get(f"{url}/v1/health", timeout=10).ok
    finally:
        _stop(process)


def test_serve_refuses_a_bad_model_with_a_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ferlab.serve", "--model",
                             str(tmp_path / "none.pt")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "No model file" in result.stderr


def _browser():
    """Debian's chromium, headless, through chromium-driver; None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1100,800", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_web_page_in_a_real_browser(server, photo, tmp_path):
    """Open the page, upload the portrait, find the label drawn for its face; the screenshot
    is saved as a test artifact (FERLAB_SCREENSHOT names where to copy it)."""
    pytest.importorskip("selenium")
    url, _ = server
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium + chromium-driver here (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "photo.jpg").write_bytes(photo)
    try:
        browser.set_page_load_timeout(60)
        browser.get(url)
        WebDriverWait(browser, 60).until(
            lambda b: "cpu-trained" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "photo.jpg"))
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".label"))
        label = browser.find_element(By.CSS_SELECTOR, ".label").text
        expected = EmotionRecognizer("cpu-trained").analyze(decode_image(photo))[0]["label"]
        assert label == f"Face 1: {expected}"
        assert browser.find_element(By.ID, "error").text == ""
        assert len(browser.find_elements(By.CSS_SELECTOR, ".bar")) == 7
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("FERLAB_SCREENSHOT"):
            shutil.copy(shot, os.environ["FERLAB_SCREENSHOT"])
        # an error from the API is shown to the person
        (tmp_path / "notes.jpg").write_text("not a photo")
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.jpg"))
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "error").text)
        assert "bad_image" in browser.find_element(By.ID, "error").text
    finally:
        browser.quit()


def test_readme_serving_commands_as_written(tmp_path, photo):
    """The serving guide's server command exactly as written (port 8000), then its curl call."""
    import json
    import shlex

    serve, call = doc_commands("docs/serving.md")
    if shutil.which("curl") is None:
        pytest.skip("no curl here")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000 is taken on this machine; the guide's command needs it")
    (tmp_path / "photo.jpg").write_bytes(photo)
    words = shlex.split(serve)
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, *words[1:]], cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if requests.get("http://127.0.0.1:8000/v1/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        result = subprocess.run(shlex.split(call), cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
        answer = json.loads(result.stdout)
        assert answer["model"]["name"] == "ensemble-int8"
        assert len(answer["faces"][0]["top_k"]) == 2
    finally:
        _stop(server)
