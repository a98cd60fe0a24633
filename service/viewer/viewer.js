// The viewer page: open files, show the frames as the service saw them, run /segment, draw
// and edit lesions, step through slices, download. Plain ES modules, no build step.

import { getJson, post, postJson, rememberKey } from "./api.js";
import { PALETTE, drawFrame } from "./draw.js";
import { wireCanvas } from "./mouse.js";
import { highlight, listLesions, resultJson } from "./panel.js";

const $ = (id) => document.getElementById(id);
const PLAIN_IMAGE = /\.(png|jpe?g|tiff?|bmp|gif|webp)$/i; // no `window` for these
const SERIES_CONCURRENCY = 2; // /segment requests in flight for the files of a series

const state = {
  files: [], // File objects, in frame order (a series: sorted by name)
  kind: null, // "image" | "dicom" | "nifti", from /segment/preview
  frames: [], // {width, height, image, spacing, source, result, lesions: [...]}
  lesions3d: null, // the service's lesions_3d, when it returns them
  models: null,
  frame: 0,
  zoom: 1,
  hover: null,
  selected: null,
  drag: null,
  edited: false, // lesions drawn or deleted since the last /segment
  generation: 0, // of /segment queries: an answer to an older one is dropped
  busy: 0,
  done: 0, // tasks finished (tests wait on it)
};
let nextId = 1;

// For tests and for the curious: window.lesionViewer.state.
window.lesionViewer = { state, colourOf, render, refresh: () => refresh() };

// --- helpers ----------------------------------------------------------------------------------

const isSeries = () => state.files.length > 1;
// Boxes carry a frame index when the request has several frames (README: /segment/boxes).
const boxesWithFrame = () => !isSeries() && state.frames.length > 1;
const allLesions = () => state.frames.flatMap((f) => f.lesions);
const scoreThreshold = () => Number($("score").value);

function windowValue() {
  if (state.files.every((f) => PLAIN_IMAGE.test(f.name))) return null;
  const chosen = $("window").value;
  return chosen === "custom" ? $("window-custom").value.trim() || null : chosen || null;
}

/** A lesion from the service joins the page: an id, its frame, and a colour that stays. */
function adopt(lesion, frame, manual, colour) {
  return Object.assign(lesion, { _id: nextId++, _frame: frame, _manual: manual, _colour: colour });
}

const freeColour = (lesions) => Math.max(-1, ...lesions.map((l) => l._colour)) + 1;

function colourOf(lesion) {
  const id = lesion.lesion_id;
  let k = -1;
  if (id !== undefined && id !== null) {
    k = (state.lesions3d ?? []).findIndex((l) => (l.id ?? l.lesion_id) === id);
    if (k < 0 && Number.isInteger(id)) k = id;
  }
  if (k < 0) k = lesion._colour;
  return PALETTE[k % PALETTE.length];
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(error) {
  $("error").hidden = false;
  $("error").textContent = error.message;
  if (error.status === 401) $("api-key").focus();
}

/** Run `fn` with a status line; errors are shown as the service worded them. */
async function task(label, fn) {
  state.busy += 1;
  setStatus(`${label}…`);
  $("error").hidden = true;
  try {
    await fn();
    setStatus(summary());
  } catch (error) {
    setStatus("");
    showError(error);
  } finally {
    state.busy -= 1;
    state.done += 1;
  }
}

function summary() {
  const n = allLesions().length;
  const frames = state.frames.length;
  return `${n} lesion${n === 1 ? "" : "s"} on ${frames} frame${frames === 1 ? "" : "s"}`;
}

function loadImage(png) {
  const image = new Image();
  image.src = `data:image/png;base64,${png}`;
  return image.decode().then(() => image);
}

async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// --- talking to the service -------------------------------------------------------------------

async function loadPreview() {
  const body = await postJson("/segment/preview", state.files, { window: windowValue() });
  const images = await Promise.all(body.frames.map((f) => loadImage(f.png)));
  state.kind = body.kind;
  state.frames = body.frames.map((f, i) => ({
    width: f.width,
    height: f.height,
    image: images[i],
    spacing: f.pixel_spacing_mm ?? null,
    source: f.source ?? null,
    result: null,
    lesions: [],
  }));
  state.lesions3d = null;
  state.frame = Math.min(state.frame, state.frames.length - 1);
  state.hover = state.selected = null;
  const used = body.frames[0].source?.window;
  $("window-used").textContent = used ? `window used: centre ${used[0]}, width ${used[1]}` : "";
  $("window").disabled = state.kind === "image";
  $("download-seg").textContent = state.kind === "nifti" ? "NIfTI mask" : "DICOM SEG";
  for (const id of ["score", "segment", "download-json", "download-png"]) $(id).disabled = false;
  $("download-seg").disabled = state.kind === "image";
  $("slice-row").hidden = state.frames.length < 2;
  $("slice").max = String(state.frames.length - 1);
  $("placeholder").hidden = true;
}

/** /segment on every frame (per file for a series); drawn lesions are kept. */
async function findLesions() {
  const generation = ++state.generation;
  const fields = { score_threshold: scoreThreshold(), window: windowValue() };
  await task("Finding lesions", async () => {
    let results;
    if (isSeries()) {
      let finished = 0;
      results = await mapLimit(state.files, SERIES_CONCURRENCY, async (file) => {
        if (generation !== state.generation) return null; // superseded: send no more
        const body = await postJson("/segment", [file], fields);
        setStatus(`Finding lesions: ${++finished} of ${state.files.length} files…`);
        return body;
      });
      if (generation !== state.generation) return;
      state.models = results[0].models;
      state.lesions3d = null;
    } else {
      const body = await postJson("/segment", state.files, fields);
      if (generation !== state.generation) return;
      results = body.frames ?? [body];
      state.models = body.models;
      state.lesions3d = body.lesions_3d ?? null;
    }
    results.forEach((result, i) => {
      const frame = state.frames[i];
      const drawn = frame.lesions.filter((l) => l._manual);
      frame.result = result;
      const found = result.lesions.map((l, k) => adopt(l, i, false, k));
      // drawn boxes keep theirs unless a found lesion now has it
      for (const l of drawn) if (l._colour < found.length) l._colour = freeColour([...found, ...drawn]);
      frame.lesions = [...found, ...drawn];
    });
    state.edited = false;
    state.hover = state.selected = null;
  });
  refresh();
}

/** /segment/boxes for [{frame, box}]: the lesions, in the same order. */
async function segmentBoxes(items) {
  const fields = { window: windowValue() };
  if (isSeries()) {
    return mapLimit(items, SERIES_CONCURRENCY, async ({ frame, box }) => {
      const body = await postJson("/segment/boxes", [state.files[frame]], { ...fields, boxes: [box] });
      return body.lesions[0];
    });
  }
  const boxes = items.map(({ frame, box }) => (boxesWithFrame() ? [...box, frame] : box));
  const body = await postJson("/segment/boxes", state.files, { ...fields, boxes });
  const perFrame = body.frames ?? [body];
  const taken = perFrame.map(() => 0);
  return items.map(({ frame }) => perFrame[frame].lesions[taken[frame]++]);
}

function iou(a, b) {
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  const inter = Math.max(w, 0) * Math.max(h, 0);
  const area = (r) => (r[2] - r[0]) * (r[3] - r[1]);
  return inter / (area(a) + area(b) - inter);
}

/** A box drawn on the current frame: replaces the selected lesion (or one whose box overlaps
 * it by IoU >= 0.5), else adds a lesion. */
async function boxDrawn(box) {
  const index = state.frame;
  const lesions = state.frames[index].lesions;
  const target =
    (state.selected && state.selected._frame === index && state.selected) ||
    lesions.find((l) => iou(l.box, box) >= 0.5);
  await task("Outlining the box", async () => {
    const [found] = await segmentBoxes([{ frame: index, box }]);
    const at = target ? lesions.indexOf(target) : -1;
    const lesion = adopt(found, index, true, at >= 0 ? target._colour : freeColour(lesions));
    if (at >= 0) lesions.splice(at, 1, lesion);
    else lesions.push(lesion);
    state.selected = lesion;
    state.edited = true;
  });
  refresh();
}

/** The window changed: the frames, the lesions found and the boxes drawn, under the new one. */
async function windowChanged() {
  const drawn = allLesions().filter((l) => l._manual).map((l) => ({ frame: l._frame, box: l.box }));
  await task("Applying the window", loadPreview);
  refresh();
  await findLesions();
  if (!drawn.length) return;
  await task("Outlining the drawn boxes", async () => {
    const found = await segmentBoxes(drawn);
    found.forEach((l, i) => {
      const lesions = state.frames[drawn[i].frame].lesions;
      lesions.push(adopt(l, drawn[i].frame, true, freeColour(lesions)));
    });
    state.edited = true;
  });
  refresh();
}

async function openFiles(fileList) {
  const files = [...fileList].sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  if (!files.length) return;
  state.files = files;
  state.frame = 0;
  state.frames = [];
  $("file-name").textContent =
    files.length > 1 ? `${files.length} files: ${files[0].name} … ${files.at(-1).name}` : files[0].name;
  await task("Reading", loadPreview);
  refresh();
  if (state.frames.length) await findLesions();
}

// --- downloads --------------------------------------------------------------------------------

function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function downloadSeg() {
  const lesions = allLesions();
  if (!lesions.length) {
    showError(new Error("nothing to export: there are no lesions"));
    return;
  }
  const boxes = lesions.map((l) => (state.frames.length > 1 ? [...l.box, l._frame] : l.box));
  const nifti = state.kind === "nifti";
  await task(nifti ? "Writing the NIfTI mask" : "Writing the DICOM SEG", async () => {
    const route = nifti ? "/segment/nifti" : "/segment/dicom-seg";
    const response = await post(route, state.files, { boxes, window: windowValue() });
    save(await response.blob(), nifti ? "lesionseg-mask.nii.gz" : "lesionseg-seg.dcm");
  });
}

// --- drawing and the lesion list --------------------------------------------------------------

function axesOn(index) {
  const axes = [];
  const add = (obj, colour, fallbackFrame) => {
    for (const which of ["long", "short"]) {
      const points = obj[`${which}_axis_points`] ?? obj[`${which}_axis_endpoints`];
      if (!Array.isArray(points) || points.length !== 2) continue;
      const frame = obj[`${which}_axis_frame`] ?? obj.axis_frame ?? obj.frame ?? fallbackFrame;
      if (frame === index) axes.push({ points, which, mm: obj[`${which}_axis_mm`], colour });
    }
  };
  state.frames[index].lesions.forEach((l) => add(l, colourOf(l), index));
  (state.lesions3d ?? []).forEach((l, k) => add(l, PALETTE[k % PALETTE.length], undefined));
  return axes;
}

function render() {
  const frame = state.frames[state.frame];
  const canvas = $("view");
  if (!frame) return;
  const wrap = $("canvas-wrap");
  const fit = Math.min((wrap.clientWidth - 8) / frame.width, (wrap.clientHeight - 8) / frame.height);
  state.zoom = fit >= 1 ? Math.floor(fit) : fit; // whole canvas pixels per image pixel
  canvas.width = Math.round(frame.width * state.zoom);
  canvas.height = Math.round(frame.height * state.zoom);
  const d = state.drag;
  drawFrame(canvas.getContext("2d"), frame, frame.lesions, {
    zoom: state.zoom,
    colourOf,
    hover: state.hover,
    selected: state.selected,
    axes: axesOn(state.frame),
    rubber: d && d.moved ? [d.x0, d.y0, d.x1, d.y1] : null,
  });
}

function refresh() {
  $("slice").value = String(state.frame);
  $("slice-label").textContent = `${state.frame + 1} / ${state.frames.length}`;
  render();
  listLesions(state, colourOf, {
    hover: hoverOn,
    select: (lesion) => select(state.selected === lesion ? null : lesion),
    remove: deleteLesion,
    frame: showFrame,
  });
}

function hoverOn(lesion) {
  if (state.hover === lesion) return;
  state.hover = lesion;
  render();
  highlight(state);
}

function select(lesion) {
  state.selected = lesion;
  render();
  highlight(state);
}

function deleteLesion(lesion) {
  const lesions = state.frames[lesion._frame].lesions;
  lesions.splice(lesions.indexOf(lesion), 1);
  if (state.selected === lesion) state.selected = null;
  if (state.hover === lesion) state.hover = null;
  state.edited = true;
  refresh();
  setStatus(summary());
}

function showFrame(index) {
  const clamped = Math.max(0, Math.min(state.frames.length - 1, index));
  if (clamped === state.frame) return;
  state.frame = clamped;
  state.hover = null;
  refresh();
}

function wireFiles() {
  $("file").addEventListener("change", (event) => openFiles(event.target.files));
  for (const zone of [$("drop"), $("stage")]) {
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      openFiles(event.dataTransfer.files);
    });
  }
}

function wireControls() {
  let pending = null;
  $("score").addEventListener("input", () => {
    $("score-value").textContent = scoreThreshold().toFixed(2);
    clearTimeout(pending); // re-query once the slider rests
    pending = setTimeout(findLesions, 250);
  });
  $("segment").addEventListener("click", findLesions);
  $("window").addEventListener("change", () => {
    const custom = $("window").value === "custom";
    $("window-custom").hidden = !custom;
    if (!custom && state.files.length) windowChanged();
  });
  $("window-custom").addEventListener("change", () => state.files.length && windowChanged());
  $("slice").addEventListener("input", () => showFrame(Number($("slice").value)));
  $("download-json").addEventListener("click", () => {
    const text = JSON.stringify(resultJson(state), null, 1);
    save(new Blob([text], { type: "application/json" }), "lesionseg.json");
  });
  $("download-seg").addEventListener("click", downloadSeg);
  $("download-png").addEventListener("click", () => {
    const [hover, selected] = [state.hover, state.selected];
    state.hover = state.selected = null; // the picture without the page's highlights
    render();
    $("view").toBlob((blob) => save(blob, `lesionseg-frame-${state.frame}.png`));
    [state.hover, state.selected] = [hover, selected];
    render();
  });
}

let configured = false;

/** Window presets and the score threshold from the service (again once a key is entered, if
 * the service refused the page's first request). */
async function loadConfig() {
  try {
    const config = await getJson("/viewer/config.json");
    const select = $("window");
    if (config.default_window) select.options[0].text = `service default (${config.default_window})`;
    for (const [name, [centre, width]] of Object.entries(config.window_presets)) {
      select.add(new Option(`${name} (${centre}/${width})`, name));
    }
    select.add(new Option("custom…", "custom"));
    $("score").min = String(config.score_floor);
    $("score").value = String(config.score_threshold);
    configured = true;
    $("error").hidden = true;
  } catch (error) {
    showError(error);
  }
  $("score-value").textContent = scoreThreshold().toFixed(2);
}

rememberKey();
wireFiles();
wireControls();
wireCanvas(state, {
  render,
  hover: hoverOn,
  select,
  box: boxDrawn,
  frame: showFrame,
  remove: deleteLesion,
});
loadConfig();
$("api-key").addEventListener("change", () => configured || loadConfig());
