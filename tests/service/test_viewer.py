"""The viewer page in a real browser: Debian's headless Chromium, driven by Selenium through
chromium-driver (`make browser-deps`), against a real `bentoml serve`.

What the page draws is read back from its canvas and compared, pixel by pixel, with the masks
of the service's JSON blended onto the frame the service saw. Screenshots are written to
out/viewer-tests/.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from lesionseg.datasets.examples import write_examples
from lesionseg.io.masks import decode_rle
from lesionseg.measure.evaluation import dice
from service.launcher import REPO_ROOT, running_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = REPO_ROOT / "data" / "examples"
SERIES = [EXAMPLES / "lits117-ct" / f"z{z}.dcm" for z in (109, 110, 111)]
ARTIFACTS = REPO_ROOT / "out" / "viewer-tests"
FILL_ALPHA = 0.35  # service/viewer/draw.js
HIGHLIGHT_ALPHA = 0.6


@pytest.fixture(scope="module")
def server(model_store, lits, tmp_path_factory):
    if not (EXAMPLES / "lits117.nii.gz").exists():  # `make data` writes them; a bare pytest
        write_examples(lits, EXAMPLES, 110)  # run needs them too
    env = {"LESIONSEG_MAX_BATCH_SIZE": "1"}  # the default backend, openvino
    with running_server(env, tmp_path_factory.mktemp("viewer") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("needs Debian's chromium and chromium-driver: run `make browser-deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,960")
    # An explicit driver: Selenium Manager is never asked to download one.
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    browser.get(f"{server}/viewer")
    wait(browser, "window.lesionViewer && document.getElementById('window').options.length > 1")
    return browser


# --- helpers ------------------------------------------------------------------------------------


def js(driver, expression: str):
    return driver.execute_script(f"return {expression};")


STATE = "window.lesionViewer.state"


def wait(driver, condition: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not js(driver, condition):
        if time.monotonic() > deadline:
            error = js(driver, "document.getElementById('error')?.textContent")
            raise TimeoutError(f"{condition!r} not true after {timeout} s; page error: {error!r}")
        time.sleep(0.1)


def settle(driver, done_before: int, tasks: int = 1) -> None:
    """Wait until `tasks` more of the page's tasks have finished and none is running."""
    wait(driver, f"{STATE}.busy === 0 && {STATE}.done >= {done_before + tasks}")


def open_files(driver, paths: list[Path]) -> None:
    done = js(driver, f"{STATE}.done")
    driver.find_element("id", "file").send_keys("\n".join(str(p) for p in paths))
    settle(driver, done, tasks=2)  # the preview, then /segment
    assert not driver.find_element("id", "error").is_displayed(), page_error(driver)


def page_error(driver) -> str:
    return driver.find_element("id", "error").text


def page_lesions(driver, frame: int) -> list[dict]:
    """The lesions the page holds for ``frame``, as JSON, and the colour it draws each in."""
    return js(
        driver,
        f"{STATE}.frames[{frame}].lesions.map(l => ({{box: l.box, mask: l.mask, "
        "manual: l._manual, colour: window.lesionViewer.colourOf(l)}))",
    )


def canvas_image(driver) -> np.ndarray:
    url = js(driver, "document.getElementById('view').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def preview(server: str, paths: list[Path], window: str | None = None) -> list[np.ndarray]:
    """The frames as the service sees them, from /segment/preview."""
    files = [("image", (p.name, p.read_bytes())) for p in paths]
    response = httpx.post(
        f"{server}/segment/preview", files=files, data={"window": window} if window else {}
    )
    assert response.status_code == 200, response.text
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(f["png"]))).convert("RGB"))
        for f in response.json()["frames"]
    ]


def decorations(lesions: list[dict], shape: tuple[int, int], zoom: float) -> np.ndarray:
    """Image pixels the page may draw a label over (above a box, or below it near the top) or
    whose centre a box's stroke may touch (detector boxes are fractional)."""
    covered = np.zeros(shape, bool)
    for lesion in lesions:
        x0, y0, x1, y1 = lesion["box"]
        top = y0 - 19 / zoom if y0 * zoom >= 17 else y1
        rows = slice(max(int(top) - 1, 0), int(top + 19 / zoom) + 2)
        covered[rows, max(int(x0) - 1, 0) : int(x0 + 110 / zoom) + 2] = True
        rows, columns = (
            slice(max(int(y0) - 1, 0), int(y1) + 2),
            slice(max(int(x0) - 1, 0), int(x1) + 2),
        )
        for edge in (x0, x1):
            covered[rows, max(int(edge) - 1, 0) : int(edge) + 2] = True
        for edge in (y0, y1):
            covered[max(int(edge) - 1, 0) : int(edge) + 2, columns] = True
    return covered


def expected_canvas(
    base: np.ndarray, lesions: list[dict], strong: int | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The frame with each mask blended in its colour, as the page composites them."""
    expected = base.astype(np.float64)
    masks = [decode_rle(lesion["mask"]) for lesion in lesions]
    for k, (lesion, mask) in enumerate(zip(lesions, masks, strict=True)):
        alpha = HIGHLIGHT_ALPHA if k == strong else FILL_ALPHA
        expected[mask] = (1 - alpha) * expected[mask] + alpha * np.asarray(lesion["colour"])
    return expected, masks


def check_drawn(driver, base: np.ndarray, lesions: list[dict], strong: int | None = None):
    """Every pixel centre of the canvas (labels aside) is the frame with the JSON's masks
    blended in; each mask is visibly tinted. Box and outline strokes lie on pixel edges, which
    a zoom of >= 4 keeps >= 2 canvas pixels away from every centre."""
    zoom = js(driver, f"{STATE}.zoom")
    assert zoom == int(zoom) and zoom >= 4, zoom
    zoom = int(zoom)
    canvas = canvas_image(driver).astype(np.float64)
    h, w = base.shape[:2]
    assert canvas.shape[:2] == (h * zoom, w * zoom)
    centres = canvas[zoom // 2 :: zoom, zoom // 2 :: zoom]  # (h, w, 3): one sample per pixel
    expected, masks = expected_canvas(base, lesions, strong)
    free = ~decorations(lesions, (h, w), zoom)
    close = (np.abs(centres - expected) <= 3).all(axis=-1)
    wrong = np.argwhere(~close & free)  # (row, column) of pixels drawn otherwise
    assert close[free].mean() >= 0.998, f"{len(wrong)} pixels differ, e.g. {wrong[:5].tolist()}"
    for mask in masks:
        assert mask.any()
        inside = mask & free
        assert close[inside].mean() >= 0.99
        tinted = (np.abs(centres - base) > 8).any(axis=-1)
        assert tinted[inside].mean() >= 0.9, "a mask is not visible"


def shot(driver, name: str) -> Path:
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def drag_box(driver, box: list[int]) -> None:
    """Press at (x0, y0) and release at (x1, y1), image pixels, on the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    zoom = js(driver, f"{STATE}.zoom")
    canvas = driver.find_element("id", "view")
    rect = js(driver, "document.getElementById('view').getBoundingClientRect().toJSON()")
    # Selenium offsets are from the element's centre.
    cx, cy = rect["width"] / 2, rect["height"] / 2
    x0, y0, x1, y1 = (round(v * zoom) for v in box)
    actions = ActionChains(driver)
    actions.move_to_element_with_offset(canvas, round(x0 - cx) + 1, round(y0 - cy) + 1)
    actions.click_and_hold()
    for _ in range(3):  # a drag the page sees move
        actions.move_by_offset((x1 - x0) // 3, (y1 - y0) // 3)
    actions.move_to_element_with_offset(canvas, round(x1 - cx) - 1, round(y1 - cy) - 1)
    actions.release().perform()


def move_away(driver) -> None:
    """The mouse to the page's title: no lesion hovered."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(driver.find_element("tag name", "h1")).perform()


def downloaded(directory: Path, name: str, timeout: float = 60) -> Path:
    path = directory / name
    deadline = time.monotonic() + timeout
    while not path.exists() or list(directory.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"{name} was not downloaded"
        time.sleep(0.1)
    return path


# --- tests --------------------------------------------------------------------------------------


def test_root_and_api_page(browser, server):
    """`/` opens the viewer; BentoML's API page, moved to /docs, still lists every route."""
    assert httpx.get(f"{server}/").headers["location"].endswith("/viewer")
    assert "/segment/preview" in httpx.get(f"{server}/docs.json").json()["paths"]
    browser.get(f"{server}/docs")
    wait(browser, "document.querySelectorAll('.opblock').length >= 6", timeout=60)
    assert "/segment/preview" in browser.find_element("id", "swagger-ui").text
    browser.get(f"{server}/")
    wait(browser, "location.pathname === '/viewer' && !!window.lesionViewer")
    # What the page offers comes from the running service's settings.
    config = httpx.get(f"{server}/viewer/config.json").json()
    assert "abdomen" in config["window_presets"]
    wait(browser, "document.getElementById('window').options.length > 1")
    assert float(browser.find_element("id", "score").get_attribute("value")) == pytest.approx(
        config["score_threshold"]
    )


def test_readme_example_masks_are_drawn_where_the_json_says(page, server):
    example = EXAMPLES / "lits117-z110.png"
    open_files(page, [example])
    expected = httpx.post(
        f"{server}/segment", files={"image": example.read_bytes()}, timeout=120
    ).json()
    lesions = page_lesions(page, 0)
    assert [lesion["box"] for lesion in lesions] == [e["box"] for e in expected["lesions"]]
    assert [lesion["mask"] for lesion in lesions] == [e["mask"] for e in expected["lesions"]]
    (base,) = preview(server, [example])
    check_drawn(page, base, lesions)
    items = page.find_elements("css selector", "#lesions li")
    assert len(items) == len(lesions) and "px" in items[0].text
    shot(page, "readme-example.png")

    # Hovering a lesion in the list draws it stronger.
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(page).move_to_element(items[0]).perform()
    wait(page, "document.querySelector('#lesions li').classList.contains('hover')")
    check_drawn(page, base, lesions, strong=0)
    shot(page, "readme-example-hover.png")

    # The score threshold slider asks /segment again: only the lesions scoring above it stay.
    threshold = np.floor(max(e["score"] for e in expected["lesions"]) * 100) / 100  # step 0.01
    done = js(page, f"{STATE}.done")
    page.execute_script(
        "const s = document.getElementById('score'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'))",
        threshold,
    )
    settle(page, done)
    kept = [e["box"] for e in expected["lesions"] if e["score"] >= threshold]
    assert [lesion["box"] for lesion in page_lesions(page, 0)] == kept and kept


def test_delete_then_draw_a_box(page, server, downloads):
    example = EXAMPLES / "lits117-z110.png"
    open_files(page, [example])
    (base,) = preview(server, [example])
    before = page_lesions(page, 0)
    biggest = max(range(len(before)), key=lambda k: decode_rle(before[k]["mask"]).sum())
    page.find_elements("css selector", "#lesions li .delete")[biggest].click()
    move_away(page)
    remaining = page_lesions(page, 0)
    assert len(remaining) == len(before) - 1
    check_drawn(page, base, remaining)

    # Draw a box around the deleted lesion: SAM outlines it again, as /segment/boxes would.
    x0, y0, x1, y1 = before[biggest]["box"]
    box = [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]
    done = js(page, f"{STATE}.done")
    drag_box(page, box)
    settle(page, done)
    after = page_lesions(page, 0)
    assert len(after) == len(before), page_error(page)
    drawn = after[-1]
    assert drawn["manual"] and np.abs(np.subtract(drawn["box"], box)).max() <= 1, drawn["box"]
    reference = httpx.post(
        f"{server}/segment/boxes",
        files={"image": example.read_bytes()},
        data={"boxes": json.dumps([drawn["box"]])},
        timeout=120,
    ).json()["lesions"][0]
    assert drawn["mask"] == reference["mask"]
    assert dice(decode_rle(drawn["mask"]), decode_rle(before[biggest]["mask"])) >= 0.7
    page.execute_script(f"{STATE}.selected = null; window.lesionViewer.render()")
    check_drawn(page, base, after)
    shot(page, "box-drawn.png")

    # Download the edited result as JSON and as a PNG of the canvas.
    page.find_element("id", "download-json").click()
    body = json.loads(downloaded(downloads, "lesionseg.json").read_text())
    assert [lesion["box"] for lesion in body["lesions"]] == [a["box"] for a in after]
    page.find_element("id", "download-png").click()
    png = Image.open(downloaded(downloads, "lesionseg-frame-0.png"))
    assert png.size == (base.shape[1] * js(page, f"{STATE}.zoom"),) * 2


def test_series_window_slices_and_dicom_seg(page, server, downloads):
    open_files(page, SERIES[::-1])  # opened in any order, shown in file-name order
    assert js(page, f"{STATE}.files.map(f => f.name)") == [p.name for p in SERIES]
    assert page.find_element("id", "slice-row").is_displayed()

    # A window preset: the frames as the service saw them under it, lesions found again.
    from selenium.webdriver.support.select import Select

    done = js(page, f"{STATE}.done")
    Select(page.find_element("id", "window")).select_by_value("abdomen")
    settle(page, done, tasks=2)
    assert "centre 40" in page.find_element("id", "window-used").text
    bases = preview(server, SERIES, window="abdomen")

    # Step through the slices: the slider, then the keyboard.
    slider = page.find_element("id", "slice")
    for frame in range(3):
        if frame == 1:
            page.execute_script(
                "arguments[0].value = 1; arguments[0].dispatchEvent(new Event('input'))", slider
            )
        elif frame == 2:
            page.find_element("tag name", "body").send_keys("\ue015")  # arrow down
        assert js(page, f"{STATE}.frame") == frame
        assert page.find_element("id", "slice-label").text == f"{frame + 1} / 3"
        check_drawn(page, bases[frame], page_lesions(page, frame))
    shot(page, "series-slice-3.png")
    total = js(page, f"{STATE}.frames.reduce((n, f) => n + f.lesions.length, 0)")
    assert total >= 1

    # The DICOM SEG of the current boxes.
    page.find_element("id", "download-seg").click()
    seg = pydicom.dcmread(downloaded(downloads, "lesionseg-seg.dcm"))
    assert (
        seg.Modality == "SEG"
        and len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 3
    )


def test_nifti_volume_and_3d_lesions(page):
    open_files(page, [EXAMPLES / "lits117.nii.gz"])
    assert js(page, f"{STATE}.kind") == "nifti" and js(page, f"{STATE}.frames.length") == 3
    assert page.find_element("id", "download-seg").text == "NIfTI mask"
    # The service's 3-D lesions reach the page: listed, and each frame lesion coloured by its.
    found = js(page, f"{STATE}.lesions3d")
    assert found and all(x["volume_mm3"] > 0 and x["long_axis_points"] for x in found), found
    ids = js(page, f"{STATE}.frames.flatMap((f) => f.lesions.map((l) => l.lesion_id))")
    assert sorted(set(ids)) == [x["id"] for x in found]
    assert f"#{found[0]['id']} · frames" in page.find_element("id", "lesions-3d").text
    # The drawing of the axes, on lesions set here (known end points).
    page.execute_script(
        f"const s = {STATE}; s.frames[0].lesions[0].lesion_id = 'b';"
        "s.lesions3d = [{id: 'a', frames: [1, 2]}, {id: 'b', frames: [0, 1], volume_mm3: 1234,"
        " long_axis_mm: 21.5, short_axis_mm: 9.8, long_axis_points: [[10, 100], [60, 100]],"
        " short_axis_points: [[30, 90], [30, 110]], long_axis_frame: 0, short_axis_frame: 0}];"
        "window.lesionViewer.refresh();"
    )
    lesion = page_lesions(page, 0)[0]
    assert lesion["colour"] == js(page, "window.lesionViewer.colourOf({lesion_id: 'b'})")
    assert lesion["colour"] != js(page, "window.lesionViewer.colourOf({lesion_id: 'a'})")
    listed = page.find_element("id", "lesions-3d").text
    assert "#b · frames 0–1 · 1234 mm³ · long 21.5 mm · short 9.8 mm" in listed, listed
    zoom = int(js(page, f"{STATE}.zoom"))
    row = canvas_image(page)[100 * zoom, 12 * zoom : 58 * zoom]  # along the long axis
    assert (row == 255).all(axis=-1).mean() >= 0.9, "the RECIST long axis is not drawn"
    shot(page, "nifti-3d-lesions.png")


def test_errors_as_the_service_words_them_and_the_api_key(page, tmp_path):
    page.execute_script(
        "window.sentAuth = []; const f = window.fetch;"
        "window.fetch = (url, init) => { window.sentAuth.push((init?.headers || {}).Authorization);"
        " return f(url, init); }"
    )
    key = page.find_element("id", "api-key")
    key.send_keys("test-key-123")
    bogus = tmp_path / "not-an-image.png"
    bogus.write_bytes(b"nope")
    done = js(page, f"{STATE}.done")
    page.find_element("id", "file").send_keys(str(bogus))
    settle(page, done)
    message = page_error(page)
    assert message.startswith("400: ") and "not a readable image" in message, message
    assert js(page, "window.sentAuth") == ["Bearer test-key-123"]
    shot(page, "error.png")


VIEWER_KEY = "viewer-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_server(model_store, lits, tmp_path_factory):
    """A server with an API key whose page is public (LESIONSEG_VIEWER_PUBLIC)."""
    if not (EXAMPLES / "lits117.nii.gz").exists():
        write_examples(lits, EXAMPLES, 110)
    root = tmp_path_factory.mktemp("viewer-keyed")
    env = {
        "LESIONSEG_MAX_BATCH_SIZE": "1",
        "LESIONSEG_API_KEYS": VIEWER_KEY,
        "LESIONSEG_VIEWER_PUBLIC": "true",
        "LESIONSEG_JOBS_DIR": str(root / "jobs"),
    }
    with running_server(env, root / "serve.log") as url:
        yield url


@pytest.mark.timeout(600)
def test_with_api_keys_the_public_page_works_once_the_key_is_typed_in(browser, keyed_server):
    assert httpx.get(f"{keyed_server}/viewer/config.json").status_code == 401
    browser.get(f"{keyed_server}/viewer")
    wait(browser, "window.lesionViewer && document.getElementById('error').textContent !== ''")
    assert page_error(browser).startswith("401: "), page_error(browser)
    assert js(browser, "document.getElementById('window').options.length") == 1  # no config
    browser.find_element("id", "api-key").send_keys(VIEWER_KEY + "\t")  # tab: 'change'
    wait(browser, "document.getElementById('window').options.length > 1")
    open_files(browser, [EXAMPLES / "lits117-z110.png"])
    assert page_lesions(browser, 0), "no lesion found with the key"
    shot(browser, "api-key-public-page.png")
