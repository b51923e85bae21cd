"""The web page in a real browser: headless Debian chromium, driven by selenium, against a real TorchServe.

The page must show what TorchServe answers for the same file (checked by posting it directly), the
model and device the management API describes, the server's error message for a corrupt file, a heat
map or a clear "unavailable", face boxes over the picture, and a video's timeline that seeks the video.
Screenshots go to build/test-output/browser/ (kept after a passing run, unlike tmp folders, so CI can
publish them and a developer can look); with WEB_SCREENSHOT=1 (`make screenshot`) the 1280x800 one also
replaces docs/images/web-page.png.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from handler.metadata import EXPLAIN_FILENAME
from scripts.package_model import PackageConfig, package_model
from scripts.serve import Ports, ServeConfig, TorchServe
from scripts.webapp import WebApp, WebAppConfig
from tests.conftest import FACE_MODEL, link_export
from tests.handler.face_images import ONE_FACE_PHOTOS, two_faces

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
README_SCREENSHOT = REPO_ROOT / "docs" / "images" / "web-page.png"
SCREENSHOT_DIR = REPO_ROOT / "build" / "test-output" / "browser"
SCREENSHOT_ENV = "WEB_SCREENSHOT"  # =1: regenerate README_SCREENSHOT (make screenshot)
README_SCREENSHOT_MAX_BYTES = 150_000
DESKTOP, PHONE = (1280, 800), (390, 844)
NO_EXPLAIN_MODEL = "deepfake_no_explain"
WAIT_SECONDS = 90  # the first request to a cold worker on a busy 2-core machine


@pytest.fixture(scope="module")
def no_explain_archive(tiny_export: Path, model_store: Path, one_worker_model_config: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export packaged without model.explain.pt, as an older export would be: it answers explanations 501."""
    export = link_export(tiny_export, tmp_path_factory.mktemp("no_explain") / "export", ignore={EXPLAIN_FILENAME})
    return package_model(PackageConfig(export_dir=export, model_store=model_store, model_name=NO_EXPLAIN_MODEL,
                                       model_config=one_worker_model_config))


@pytest.fixture(scope="module")
def served_page(model_store: Path, face_model_archive: Path, no_explain_archive: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebApp, TorchServe]]:
    """The page on a free port and a TorchServe (dev config) whose CORS allows exactly that page's origin.

    It serves the whole-image model as `deepfake` (the page's default), the face model and the model without
    explanations, which the page uses when opened with ?model=NAME.
    """
    serve = ServeConfig(run_dir=tmp_path_factory.mktemp("web_serve"), model_store=model_store, ports=Ports.free(),
                        models={"deepfake": "deepfake.mar", FACE_MODEL: face_model_archive.name,
                                NO_EXPLAIN_MODEL: no_explain_archive.name})
    app = WebApp(WebAppConfig(port=0, inference=serve.inference_url, management=serve.management_url)).start()
    try:
        server = TorchServe(replace(serve, overrides={"cors_allowed_origin": app.origin})).start()
    except BaseException:
        app.stop()
        raise
    yield app, server
    server.stop()
    app.stop()


# Chromium's own traffic (component updates, sync, field trials, QUIC probes) is off: without these flags it opens
# connections that a closed network (this machine's, CI's) refuses, many at a time at every start.
QUIET_CHROMIUM = ("--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic", "--no-first-run", "--disable-gpu")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    profile = tmp_path_factory.mktemp("chromium_profile")  # a new empty profile: nothing from an earlier run
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}", f"--user-data-dir={profile}", *QUIET_CHROMIUM):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read by javascript_errors
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def viewport(driver: WebDriver, size: tuple[int, int]) -> None:
    """Exactly this CSS-pixel viewport at scale 1, so screenshots have a known size."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size == PHONE})


def open_page(driver: WebDriver, app: WebApp, size: tuple[int, int] = DESKTOP, model: str | None = None) -> None:
    viewport(driver, size)
    driver.get(app.url + (f"?model={model}" if model else ""))
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def wait(driver: WebDriver, condition: Any) -> Any:
    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition)


def upload(driver: WebDriver, path: Path) -> str:
    """Chooses the file in the page's file input; returns the page's state once it has an answer (done/error)."""
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    return wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                if d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error") else None)


def heat_map_state(driver: WebDriver) -> str:
    """The heat map panel's state once the explanation request has been answered: ready or unavailable."""
    controls = driver.find_element(By.ID, "heatmap-controls")
    return wait(driver, lambda d: controls.get_attribute("data-state")
                if controls.get_attribute("data-state") in ("ready", "unavailable") else None)


def javascript_errors(driver: WebDriver) -> list[str]:
    """Uncaught exceptions and console.error lines since the last call (network failures are logged apart)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("source") == "javascript"
            or (entry.get("source") == "console-api" and entry.get("level") == "SEVERE")]


def text(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def post(server: TorchServe, path: Path, api: str = "predictions", model: str = "deepfake") -> requests.Response:
    return requests.post(f"{server.config.inference_url}/{api}/{model}", data=path.read_bytes(), timeout=120)


def save_screenshot(driver: WebDriver, name: str) -> Image.Image:
    """Writes the page as SCREENSHOT_DIR/name and returns it."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / name
    path.write_bytes(base64.b64decode(driver.get_screenshot_as_base64()))
    return Image.open(path)


def small_png(screenshot: Image.Image) -> bytes:
    """The screenshot as a 256-colour palette PNG: about 80 KB instead of 300 KB for the README."""
    buffer = io.BytesIO()
    screenshot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def face_video(faces_dir: Path, folder: Path) -> Path:
    """A 1.5 s, 10 fps WebM (VP8, which chromium plays) showing three real face photos, half a second each."""
    path = folder / "faces.webm"
    size = (320, 400)  # width, height: every photo resized to it
    frames = [cv2.resize(cv2.imread(str(faces_dir / name)), size, interpolation=cv2.INTER_AREA)
              for name in ONE_FACE_PHOTOS]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), 10, size)
    assert writer.isOpened(), "OpenCV cannot write VP8 WebM here"
    for frame in frames:
        for _ in range(5):
            writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return path


def test_image_verdict_model_info_heat_map_and_screenshots(served_page, browser, tiny_dataset):
    app, server = served_page
    image = tiny_dataset / "fake" / "fake_00003.jpg"
    expected = post(server, image)
    assert expected.status_code == 200, expected.text
    answer = expected.json()
    open_page(browser, app)

    assert upload(browser, image) == "done"
    label = browser.find_element(By.ID, "verdict-label")
    assert label.get_attribute("data-label") == answer["label"]
    assert label.text == answer["label"].capitalize()
    probability = browser.find_element(By.ID, "probability-fake")
    assert float(probability.get_attribute("data-value")) == answer["probability_fake"]
    assert probability.text == f"{answer['probability_fake'] * 100:.1f} %"
    assert text(browser, "confidence") == f"{answer['confidence'] * 100:.1f} %"
    assert text(browser, "threshold") == f"{answer['threshold'] * 100:.1f} %"
    assert browser.find_element(By.ID, "borderline").is_displayed() == answer["borderline"]
    assert browser.find_element(By.ID, "uncalibrated").is_displayed() == (not answer["calibrated"])
    assert answer["request_id"] not in text(browser, "status")  # a new request: the page made its own
    assert "Answered in" in text(browser, "status")

    # Model name/version from the management API, device/architecture/calibration from its customized description.
    description = requests.get(f"{server.config.management_url}/models/deepfake?customized=true", timeout=60).json()[0]
    handler_model = description["customizedMetadata"]["model"]
    model_info = text(browser, "model-info")
    assert f"Model deepfake v{description['modelVersion']}" in model_info
    assert handler_model["architecture"] in model_info and handler_model["calibration"] in model_info
    assert browser.find_element(By.ID, "device-info").get_attribute("data-device") == handler_model["device"] == "cpu"
    assert "Device: cpu" in text(browser, "device-info")

    # Heat map: the explanation of the same bytes, laid over the picture in the same box when toggled on.
    explained = post(server, image, api="explanations")
    assert explained.status_code == 200, explained.text
    explanation = explained.json()["explanation"]
    assert heat_map_state(browser) == "ready"
    assert explanation["layer"] in text(browser, "heatmap-status")
    heatmap = browser.find_element(By.ID, "heatmap")
    assert not heatmap.is_displayed()
    browser.find_element(By.ID, "heatmap-toggle").click()
    assert heatmap.is_displayed()
    assert int(heatmap.get_attribute("naturalWidth")) == explanation["heatmap_size"][0]
    assert int(heatmap.get_attribute("naturalHeight")) == explanation["heatmap_size"][1]
    shown, picture = heatmap.rect, browser.find_element(By.ID, "preview-image").rect
    assert (shown["x"], shown["y"], shown["width"], shown["height"]) == pytest.approx(
        (picture["x"], picture["y"], picture["width"], picture["height"]), abs=1)

    screenshot = save_screenshot(browser, "web-page-image.png")
    assert screenshot.size == DESKTOP
    if os.environ.get(SCREENSHOT_ENV) == "1":
        README_SCREENSHOT.write_bytes(small_png(screenshot))
    assert README_SCREENSHOT.is_file(), "generate it: make screenshot"
    assert README_SCREENSHOT.stat().st_size < README_SCREENSHOT_MAX_BYTES
    assert Image.open(README_SCREENSHOT).size == DESKTOP

    # A phone-width viewport: one column, nothing wider than the screen.
    viewport(browser, PHONE)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    assert label.is_displayed()
    save_screenshot(browser, "web-page-phone.png")
    assert javascript_errors(browser) == []


def test_model_without_explanations_keeps_its_verdict_and_says_heat_map_unavailable(served_page, browser,
                                                                                      tiny_dataset):
    app, server = served_page
    image = tiny_dataset / "real" / "real_00002.jpg"
    refused = post(server, image, api="explanations", model=NO_EXPLAIN_MODEL)
    assert refused.status_code == 501 and refused.json()["error"]["code"] == "explanations_unavailable"
    open_page(browser, app, model=NO_EXPLAIN_MODEL)

    assert upload(browser, image) == "done"
    assert heat_map_state(browser) == "unavailable"
    assert text(browser, "heatmap-status") == f"Heat map unavailable: {refused.json()['error']['message']}"
    assert browser.find_element(By.ID, "heatmap-toggle").get_attribute("disabled") is not None
    assert browser.find_element(By.ID, "verdict").is_displayed()  # the verdict stays
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert javascript_errors(browser) == []


def test_corrupt_file_shows_the_servers_error(served_page, browser, tmp_path):
    app, server = served_page
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(range(256)))
    expected = post(server, corrupt)
    assert expected.status_code in (400, 415, 422), expected.text
    error = expected.json()["error"]
    open_page(browser, app)

    assert upload(browser, corrupt) == "error"
    shown = text(browser, "error")
    assert error["message"] in shown and error["accepted"] in shown and error["code"] in shown
    assert not browser.find_element(By.ID, "verdict").is_displayed()
    save_screenshot(browser, "web-page-error.png")


def test_unreachable_torchserve_is_named(browser, tmp_path):
    dead = Ports.free()  # nothing listens there
    app = WebApp(WebAppConfig(port=0, inference=f"http://127.0.0.1:{dead.inference}",
                              management=f"http://127.0.0.1:{dead.management}")).start()
    try:
        open_page(browser, app)
        assert f"http://127.0.0.1:{dead.management}" in text(browser, "model-info")
        image = tmp_path / "grey.png"
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
        assert upload(browser, image) == "error"
        shown = text(browser, "error")
        assert f"Could not reach TorchServe's inference API at http://127.0.0.1:{dead.inference}" in shown
        assert f"cors_allowed_origin={app.origin}" in shown
    finally:
        app.stop()


def test_face_boxes_are_drawn_over_the_image(served_page, browser, face_photos_dir, tmp_path):
    app, server = served_page
    photo = tmp_path / "two_faces.png"  # built from the shared photos in tmp, never kept
    Image.fromarray(two_faces(face_photos_dir)).save(photo)
    answer = post(server, photo, model=FACE_MODEL).json()
    assert len(answer["faces"]) == 2, answer
    open_page(browser, app, model=FACE_MODEL)

    assert upload(browser, photo) == "done"
    assert browser.find_element(By.ID, "verdict-label").get_attribute("data-label") == answer["label"]
    assert text(browser, "verdict-kind") == "image \u00b7 2 faces"
    assert wait(browser, lambda d: d.find_element(By.ID, "overlay").get_attribute("data-boxes")) == "2"
    items = browser.find_elements(By.CSS_SELECTOR, "#faces-list li")
    assert [item.text.split(" fake")[0].split()[-2] for item in items] == [
        f"{face['probability_fake'] * 100:.1f}" for face in answer["faces"]]
    assert "decides the verdict" in items[answer["decided_by_face"]].text
    # The canvas covers the displayed picture and each box is stroked where its face is, scaled to the display.
    canvas, picture = (browser.find_element(By.ID, name).rect for name in ("overlay", "preview-image"))
    assert (canvas["width"], canvas["height"]) == pytest.approx((picture["width"], picture["height"]), abs=1)
    width, height = Image.open(photo).size
    for face in answer["faces"]:
        x, y, w, h = face["box"]
        left_edge, centre = browser.execute_script(
            "const c = document.getElementById('overlay'); const g = c.getContext('2d');"
            "const sx = c.width / arguments[4], sy = c.height / arguments[5];"
            "const alpha = (px, py) => g.getImageData(Math.round(px * sx), Math.round(py * sy), 1, 1).data[3];"
            "return [alpha(arguments[0], arguments[1] + arguments[3] / 2),"
            "        alpha(arguments[0] + arguments[2] / 2, arguments[1] + arguments[3] / 2)];",
            x, y, w, h, width, height)
        assert left_edge > 200 and centre == 0, face
    save_screenshot(browser, "web-page-faces.png")


def test_video_timeline_seek_and_frame_boxes(served_page, browser, face_photos_dir, tmp_path):
    app, server = served_page
    video = face_video(face_photos_dir, tmp_path)
    expected = post(server, video, model=FACE_MODEL)
    assert expected.status_code == 200, expected.text
    answer = expected.json()
    assert answer["scored"] == "video"
    open_page(browser, app, model=FACE_MODEL)

    assert upload(browser, video) == "done"
    assert wait(browser, lambda d: d.execute_script("return document.getElementById('preview-video').readyState")
                >= 1)  # chromium plays the VP8 preview
    assert browser.find_element(By.ID, "verdict-label").get_attribute("data-label") == answer["label"]
    points = browser.find_elements(By.CSS_SELECTOR, "#timeline .point")
    assert [int(point.get_attribute("data-frame")) for point in points] == [e["frame"] for e in answer["timeline"]]
    aggregation = answer["video"]["aggregation"]
    assert (f"the mean of the {aggregation['k']} most fake of {answer['video']['frames_scored']} scored frames"
            in text(browser, "aggregation"))
    with_faces = [index for index, entry in enumerate(answer["timeline"]) if entry.get("faces")]
    assert with_faces, "no face found in any frame of a video of face photos"
    index = with_faces[-1]
    entry = answer["timeline"][index]
    points[index].click()
    wait(browser, lambda d: d.execute_script(
        "const v = document.getElementById('preview-video'); return v.paused && !v.seeking && "
        f"Math.abs(v.currentTime - {entry['time_s']}) < 0.06"))
    assert wait(browser, lambda d: d.find_element(By.ID, "overlay").get_attribute("data-boxes")
                if d.find_element(By.ID, "overlay").get_attribute("data-boxes") != "0" else None
                ) == str(len(entry["faces"]))
    assert "current" in points[index].get_attribute("class")
    save_screenshot(browser, "web-page-video.png")
    assert javascript_errors(browser) == []
