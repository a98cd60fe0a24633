"""lesionseg's SEG and SR open in OHIF Viewer 3 (npm's prebuilt ``@ohif/app``, tests/ohif.py)
over a real Orthanc, in Debian's headless Chromium driven by Selenium.

The study: pydicom-data's CT_small made into a 9-slice CT series with two synthetic lesions
(tests/test_sr.py), the SEG and the SR written by the library and stored in Orthanc. What a
user does and sees: the SEG's segments are listed in OHIF's segmentation panel and painted over
the CT where the lesions are; opening the SR, OHIF's SR viewport shows the first lesion's
volume, long and short axis on the slice where they were measured, and asks whether to track
the SR's measurements; after "Yes", the "Measurements" panel lists each lesion's RECIST axes as
one measurement named ``lesion <id>``, long (L) and short (W) axis in mm as the SR has them,
and a click on one shows its slice with both axes drawn. OHIF makes its own measurements only of
what a Cornerstone tool can draw: the axes, tracked as its Bidirectional tool
(lesionseg/outputs/dicom_sr.py says why); the volume, which measures a SEG segment, is shown by
the SR viewport only. Screenshots go to out/ohif-tests/.
"""

from __future__ import annotations

import io
import re
import shutil
import time

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes
from selenium.common.exceptions import StaleElementReferenceException
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
    sr = hd.sr.srread(io.BytesIO(seg_to_bytes(build_sr(files, seg, lesions))))  # as read
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
    """``find(driver)`` once it is truthy; fails with a screenshot's path after ``timeout``.
    An element that React replaced while ``find`` read it (stale) counts as not found yet."""
    deadline = time.monotonic() + timeout
    while not (found := _found(driver, find)):
        if time.monotonic() > deadline:
            name = re.sub(r"\W+", "-", what)
            shot = ARTIFACTS / f"timeout-{name}.png"
            driver.save_screenshot(str(shot))
            pytest.fail(f"OHIF did not show {what} in {timeout}s (see {shot})")
        time.sleep(0.3)
    return found


def _found(driver, find):
    try:
        return find(driver)
    except StaleElementReferenceException:
        return None


def click(driver, find, what: str) -> None:
    """Click the first element ``find`` gives, once there; again if React replaced it first."""

    def clicked(d) -> bool:
        if found := find(d):
            found[0].click()
        return bool(found)

    wait_for(driver, clicked, what)


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


def sr_labels(text: str) -> dict[str, float]:
    """The values of an SR viewport's label, e.g. {"Volume": 63.01, "L": 4.44, "W": 2.96} of
    "lesion 1: L: : 4.44 mm W: : 2.96 mm Volume: 63.01 mm3" (OHIF's shorthands and colons)."""
    return {k: float(v) for k, v in re.findall(r"(Volume|L|W): (?:: )?([\d.]+)", text)}


def shown_as(shown: str, value: float) -> bool:
    """True if ``shown`` (OHIF's rounding, e.g. "40.0" or "4.44") is ``value`` (mm, 3 decimals as
    in the SR) to the digits shown; OHIF measures anew from the end points (float32)."""
    decimals = len(shown.partition(".")[2])
    return abs(float(shown) - value) <= 0.5 * 10.0**-decimals + 1e-3


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


def test_ohif_lists_the_seg_and_the_sr_measurements(browser, ohif, study):
    files, lesions, seg, sr = study
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

    # The SR: OHIF's SR viewport shows the first lesion's name and measurements, the volume with
    # them, on the slice they were measured on. (The other lesions are behind the viewport's
    # arrows, but a click outside OHIF's question, next, answers it "No".)
    recist = {  # "lesion <id>": (long, short) mm, as the SR has them
        group[0].ContentSequence.find(codes.DCM.Comment)[0].value: tuple(
            m.value for m in group.get_measurements()
        )
        for group in sr.content.get_image_measurement_groups()
    }
    open_series(d, "lesionseg measurements")
    order = sorted(range(len(files)), key=lambda i: -float(files[i].ImagePositionPatient[2]))
    first = lesions[0]
    image = f"({order.index(first.long_axis_frame) + 1}/9)"  # OHIF's 1-based, head first
    wait_for(d, showing_image(image), f"lesion {first.id}'s slice {image} in the SR viewport")
    expected = {
        "Volume": pytest.approx(first.volume_mm3, abs=0.006),
        "L": pytest.approx(first.long_axis_mm, abs=0.006),
        "W": pytest.approx(first.short_axis_mm, abs=0.006),
    }

    def first_lesion_text(d):
        texts = [t.text for t in by_css("svg.svg-layer text")(d) if "Volume" in t.text]
        return [t for t in texts if sr_labels(t) == expected and f"lesion {first.id}" in t]

    wait_for(d, first_lesion_text, f"lesion {first.id}'s measurements {expected}")
    d.save_screenshot(str(ARTIFACTS / f"sr-lesion-{first.id}.png"))

    # OHIF asks whether to track the SR's measurements: yes, and its Measurements panel lists
    # one measurement per lesion, its long (L) and short (W) axis.
    click(d, displayed(by_text("Yes")), "the question to track the SR's measurements")
    click(d, by_css("[data-cy='trackedMeasurements-btn']"), "the measurements tab")

    def listed(d):  # [{title: its detail lines}] once every lesion's row has its values
        rows = {}
        for row in displayed(by_css("[data-cy^='measurement-table-row-']"))(d):
            (title,) = row.find_elements(By.CSS_SELECTOR, "[data-cy='data-row-title']")
            lines = row.find_elements(By.CSS_SELECTOR, "[data-cy='data-row-detail-line']")
            rows[title.text.strip()] = " ".join(x.text.strip() for x in lines)
        return [rows] if len(rows) == len(recist) and all("W:" in v for v in rows.values()) else []

    (rows,) = wait_for(d, listed, f"{len(recist)} measurements in the Measurements panel")
    d.save_screenshot(str(ARTIFACTS / "measurements-panel.png"))
    assert set(rows) == set(recist), list(rows)  # the volumes are not there: no tool draws them
    for title, (long_mm, short_mm) in recist.items():
        text = rows[title]
        (long_shown,) = re.findall(r"L: ([\d.]+) mm", text)
        (short_shown,) = re.findall(r"W: ([\d.]+) mm", text)
        assert shown_as(long_shown, long_mm) and shown_as(short_shown, short_mm), (title, text)

    # Each measurement, clicked, is shown on its slice, its two axes drawn to scale.
    long_px = []
    for lesion in lesions:
        title = f"lesion {lesion.id}"

        def row(d, title=title):  # found anew: the panel is drawn anew each click
            return [
                r.find_element(By.CSS_SELECTOR, "[data-cy='data-row']")
                for r in by_css("[data-cy^='measurement-table-row-']")(d)
                if r.find_element(By.CSS_SELECTOR, "[data-cy='data-row-title']").text == title
            ]

        click(d, row, f"{title}'s row in the Measurements panel")
        image = f"({order.index(lesion.long_axis_frame) + 1}/9)"  # OHIF's 1-based, head first
        wait_for(d, showing_image(image), f"lesion {lesion.id}'s slice {image}")

        def two_axes(d, title=title):  # its axes' solid lines (its text box's link is dashed)
            if not any(title in t.text for t in by_css("svg.svg-layer text")(d)):
                return []  # the layer may still show the previous lesion for a moment
            solid = [
                [[float(x.get_attribute(k)) for k in (f"x{i}", f"y{i}")] for i in (1, 2)]
                for x in by_css("svg.svg-layer line")(d)
                if not x.get_attribute("stroke-dasharray")
            ]
            return [np.array(solid)] if len(solid) == 2 else []

        (ends,) = wait_for(d, two_axes, f"lesion {lesion.id}'s axes drawn")
        d.save_screenshot(str(ARTIFACTS / f"measurement-lesion-{lesion.id}.png"))
        drawn = sorted(np.linalg.norm(ends[:, 1] - ends[:, 0], axis=1))  # short, long (px)
        ratio = lesion.short_axis_mm / lesion.long_axis_mm
        assert drawn[0] / drawn[1] == pytest.approx(ratio, rel=0.03), drawn
        long_px.append(drawn[1])
    # The long axes as drawn (screen pixels, one zoom) keep the ratio of their lengths in mm.
    ratio = lesions[1].long_axis_mm / lesions[0].long_axis_mm
    assert long_px[1] / long_px[0] == pytest.approx(ratio, rel=0.03), long_px
