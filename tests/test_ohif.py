"""lesionseg's SEG and SR open in OHIF Viewer 3 (npm's prebuilt ``@ohif/app``, tests/ohif.py)
over a real Orthanc, in Debian's headless Chromium driven by Selenium.

The study: pydicom-data's CT_small made into a 9-slice CT series with two synthetic lesions
(tests/test_sr.py), the SEG and the SR written by the library and stored in Orthanc. The
checks: the SEG's segments are listed in OHIF's segmentation panel and painted over the CT
where the lesions are; the SR's measurements (volume, long and short axis per lesion) are shown
by OHIF's SR viewport on the slice where they were measured, the long axis drawn. Screenshots
go to out/ohif-tests/.

OHIF lists an SR's measurements in its "Measurements" side panel only after it re-creates
them as its own Cornerstone tools, which it does for SRs whose tracking identifiers name those
tools (``Cornerstone3DTools@^0.1.0:Length``); ours track lesions (``lesion 1``, as the SEG's
segments), so OHIF shows them in its SR viewport, lesion by lesion (docs/viewer.md).
"""

from __future__ import annotations

import io
import re
import shutil
import time

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from lesionseg.io.dicom import volume_geometry
from lesionseg.measure.lesions3d import link_lesions, measure_lesions
from lesionseg.outputs.dicom_seg import build_seg, seg_to_bytes
from lesionseg.outputs.dicom_sr import build_sr
from service.launcher import REPO_ROOT
from tests.test_sr import ct_series, masks_per_frame

pytestmark = [pytest.mark.integration]

ARTIFACTS = REPO_ROOT / "out" / "ohif-tests"


@pytest.fixture(scope="module")
def study(orthanc):
    """The CT series, its SEG and SR stored in Orthanc; (files, lesions, seg, sr)."""
    files = ct_series(9)  # z = 50 ... 26 mm: a small cube on z = 50, 47; an ellipsoid 26-44
    # A study of its own: the session's Orthanc holds other tests' SEGs of CT_small's study,
    # which OHIF would list beside ours (seen in a fresh-clone CI run).
    study_uid = pydicom.uid.generate_uid()
    for ds in files:
        ds.StudyInstanceUID = study_uid
    results, _ = masks_per_frame(files)
    geometry = volume_geometry(files)
    ids = link_lesions(results, geometry)
    lesions = measure_lesions(results, ids, geometry)
    seg = build_seg(files, results, lesion_ids=ids)
    sr = build_sr(files, seg, lesions)
    for dataset in [*files, seg, sr]:
        stored = httpx.post(f"{orthanc.url}/instances", content=seg_to_bytes(dataset), timeout=30)
        assert stored.status_code == 200, stored.text
    return files, lesions, seg, sr


@pytest.fixture(scope="module")
def ohif(orthanc):
    from tests.ohif import fetch_ohif, serve_ohif

    try:
        dist = fetch_ohif()
    except RuntimeError as exc:  # no npm, or the registry did not answer
        pytest.skip(f"OHIF is not here and could not be fetched (`make ohif-deps`): {exc}")
    with serve_ohif(dist, orthanc.dicomweb_url) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("needs Debian's chromium and chromium-driver: run `make browser-deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # WebGL on the CPU (SwiftShader): OHIF renders with WebGL; CI machines have no GPU.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,960", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_for(driver, find, what: str, timeout: float = 60):
    """``find(driver)`` once it is truthy; fails with a screenshot's path after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (found := find(driver)):
        if time.monotonic() > deadline:
            name = re.sub(r"\W+", "-", what)
            shot = ARTIFACTS / f"timeout-{name}.png"
            driver.save_screenshot(str(shot))
            pytest.fail(f"OHIF did not show {what} in {timeout}s (see {shot})")
        time.sleep(0.3)
    return found


def by_text(text: str):
    return lambda d: d.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")


def by_css(selector: str):
    return lambda d: d.find_elements(By.CSS_SELECTOR, selector)


def displayed(find):
    """``find``, keeping only the elements on screen."""
    return lambda d: [e for e in find(d) if e.is_displayed()]


def showing_image(position: str):
    """True once the viewport's corner says it shows image ``position``, e.g. "(1/9)"."""
    corner = by_css("[data-cy='viewport-overlay-bottom-right']")
    return lambda d: any(position in x.text for x in corner(d))


def open_series(driver, description: str) -> None:
    """Double-click the study browser's thumbnail of the series called ``description``."""
    xpath = (
        f"//*[@data-cy='study-browser-thumbnail-no-image'][.//*[contains(text(), '{description}')]]"
    )
    # OHIF may render a series' thumbnail twice while its study browser re-renders (a fresh
    # clone's CI run saw two): every one on screen opens the same series, so take the first.
    thumbnails = wait_for(
        driver, displayed(lambda d: d.find_elements(By.XPATH, xpath)), description
    )
    ActionChains(driver).double_click(thumbnails[0]).perform()


def _measured(text: str) -> dict[str, float]:
    """The values of an SR label, e.g. {"Volume": 63.01, "Long axis": 4.44, ...}."""
    return {k: float(v) for k, v in re.findall(r"(Volume|Long axis|Short axis): ([\d.]+)", text)}


def viewport_pixels(driver) -> np.ndarray:
    """(H, W, 3) uint8 of what the viewport's canvas shows now."""
    (canvas,) = by_css("[data-cy='viewport-pane'] canvas")(driver)
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB"))


def painted_in(pixels: np.ndarray, colour: list[int]) -> np.ndarray:
    """(H, W) bool: where (H, W, 3) ``pixels`` are grey tinted towards ``colour`` (RGB), as a
    segment's fill blended over a grey CT is; the UI's blues and whites are not."""
    tint = pixels.astype(float) - pixels.mean(axis=2, keepdims=True)  # away from grey
    hue = np.asarray(colour, float) - np.mean(colour)
    strength = np.linalg.norm(tint, axis=2)
    cosine = (tint @ hue) / np.maximum(strength * np.linalg.norm(hue), 1e-9)
    return (strength > 15) & (cosine > 0.95)


def test_ohif_lists_and_paints_the_seg_and_shows_the_sr_measurements(browser, ohif, study):
    files, lesions, seg, _ = study
    d = browser
    d.get(f"{ohif}/viewer?StudyInstanceUIDs={files[0].StudyInstanceUID}")
    wait_for(d, showing_image("(1/9)"), "the CT's first image")
    for button in ("Skip all", "Confirm and hide"):  # the first visit's tour and notice
        element = wait_for(d, displayed(by_text(button)), button)[0]  # one, or twice mid-render
        d.execute_script("arguments[0].click()", element)  # even while it slides in

    # The SEG: OHIF asks before it adds a SEG to the CT's viewport.
    open_series(d, "lesionseg lesions")
    wait_for(d, by_text("Yes"), "the question to load the SEG")[0].click()
    wait_for(d, by_css("[data-cy='panelSegmentation-btn']"), "the segmentation panel")[0].click()
    rows = wait_for(d, by_css("[data-cy='data-row']"), "the SEG's segments")
    labels = [re.sub(r"\s+", " ", r.text).strip() for r in rows]
    assert labels == [f"{s.SegmentNumber} {s.SegmentLabel}" for s in seg.SegmentSequence], labels
    # Each segment, clicked, is shown on its slice, painted in its colour over the grey CT.
    for index, (lesion, where) in enumerate(zip(lesions, ("corner", "centre"), strict=True)):
        by_css("[data-cy='data-row']")(d)[index].click()  # the panel is drawn anew each click
        swatch = by_css("[data-cy='data-row-colorhex']")(d)[index]
        colour = [
            int(v) for v in re.findall(r"\d+", swatch.value_of_css_property("background-color"))[:3]
        ]

        def shown(d, colour=colour):  # [(H, W) bool] once 20 pixels have the segment's colour
            painted = painted_in(viewport_pixels(d), colour)
            return [painted] if painted.sum() > 20 else []

        (painted,) = wait_for(d, shown, f"lesion {lesion.id} painted in {colour}")
        d.save_screenshot(str(ARTIFACTS / f"seg-lesion-{lesion.id}.png"))
        rows_, cols_ = np.nonzero(painted)
        centre = np.array([rows_.mean() / painted.shape[0], cols_.mean() / painted.shape[1]])
        if where == "corner":  # the cube: rows 2-6, columns 2-8 of 128
            assert (centre < 0.25).all(), centre
        else:  # the ellipsoid, centred near the image's middle
            assert np.abs(centre - 0.5).max() < 0.1, centre

    # The SR: its viewport shows each lesion's measurements on the slice they were measured on.
    open_series(d, "lesionseg measurements")
    order = sorted(range(len(files)), key=lambda i: -float(files[i].ImagePositionPatient[2]))
    lengths = []
    for lesion in lesions:
        if lesion is not lesions[0]:
            by_css("[data-cy='viewport-action-arrows-right']")(d)[0].click()
        image = f"({order.index(lesion.long_axis_frame) + 1}/9)"  # OHIF's 1-based, head first
        wait_for(d, showing_image(image), f"lesion {lesion.id}'s slice {image}")
        expected = {
            "Volume": pytest.approx(lesion.volume_mm3, abs=0.006),
            "Long axis": pytest.approx(lesion.long_axis_mm, abs=0.006),
            "Short axis": pytest.approx(lesion.short_axis_mm, abs=0.006),
        }

        def lesion_text(d, expected=expected):
            # The text layer may still hold the previous lesion's labels for a moment after the
            # image changed (seen under load): wait for this lesion's, or fail with a screenshot.
            texts = [t.text for t in by_css("svg.svg-layer text")(d) if "Volume" in t.text]
            return [t for t in texts if _measured(t) == expected]

        wait_for(d, lesion_text, f"lesion {lesion.id}'s measurements {expected}")
        d.save_screenshot(str(ARTIFACTS / f"sr-lesion-{lesion.id}.png"))

        def one_long_axis(d):  # the drawn long axis (dashed), once the layer shows only it
            dashed = [
                x
                for x in by_css("svg.svg-layer line")(d)
                if x.get_attribute("stroke-dasharray") == "4,4"
            ]
            return dashed if len(dashed) == 1 else []

        (axis,) = wait_for(d, one_long_axis, f"lesion {lesion.id}'s long axis drawn")
        ends = np.array(
            [[float(axis.get_attribute(k)) for k in (f"x{i}", f"y{i}")] for i in (1, 2)]
        )
        lengths.append(float(np.linalg.norm(ends[1] - ends[0])))
    # The long axes as drawn (screen pixels, one zoom) keep the ratio of their lengths in mm.
    ratio = lesions[1].long_axis_mm / lesions[0].long_axis_mm
    assert lengths[1] / lengths[0] == pytest.approx(ratio, rel=0.03), lengths
