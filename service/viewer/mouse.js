// Mouse and keyboard on the image: hover and click pick a lesion, a drag draws a box, the wheel
// and the arrow keys step through slices, Delete removes the selected lesion.

import { maskOf } from "./draw.js";

const $ = (id) => document.getElementById(id);

function imagePoint(state, event) {
  const rect = $("view").getBoundingClientRect();
  const frame = state.frames[state.frame];
  const clamp = (v, max) => Math.max(0, Math.min(max, v));
  return [
    clamp((event.clientX - rect.left) / state.zoom, frame.width),
    clamp((event.clientY - rect.top) / state.zoom, frame.height),
  ];
}

/** The topmost lesion whose mask holds the image point. */
function lesionAt(state, [x, y]) {
  const frame = state.frames[state.frame];
  const at = Math.floor(y) * frame.width + Math.floor(x);
  return [...frame.lesions].reverse().find((l) => maskOf(l)[at] === 1) ?? null;
}

/** `on`: {render, hover(lesion), select(lesion), box([x0, y0, x1, y1]), frame(index),
 * remove(lesion)}. */
export function wireCanvas(state, on) {
  const canvas = $("view");
  canvas.addEventListener("mousedown", (event) => {
    if (event.button !== 0 || !state.frames.length) return;
    const [x, y] = imagePoint(state, event);
    state.drag = { x0: x, y0: y, x1: x, y1: y, sx: event.clientX, sy: event.clientY, moved: false };
  });
  canvas.addEventListener("mousemove", (event) => {
    if (!state.frames.length) return;
    const d = state.drag;
    if (!d) {
      on.hover(lesionAt(state, imagePoint(state, event)));
      return;
    }
    [d.x1, d.y1] = imagePoint(state, event);
    d.moved ||= Math.hypot(event.clientX - d.sx, event.clientY - d.sy) > 3;
    on.render();
  });
  window.addEventListener("mouseup", (event) => {
    const d = state.drag;
    if (!d) return;
    state.drag = null;
    if (!d.moved) {
      if (event.target === canvas) on.select(lesionAt(state, imagePoint(state, event)));
      return;
    }
    const box = [
      Math.floor(Math.min(d.x0, d.x1)), Math.floor(Math.min(d.y0, d.y1)),
      Math.ceil(Math.max(d.x0, d.x1)), Math.ceil(Math.max(d.y0, d.y1)),
    ];
    on.render();
    if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) on.box(box);
  });
  canvas.addEventListener("mouseleave", () => on.hover(null));
  canvas.addEventListener(
    "wheel",
    (event) => {
      if (state.frames.length < 2) return;
      event.preventDefault();
      on.frame(state.frame + Math.sign(event.deltaY));
    },
    { passive: false },
  );
  document.addEventListener("keydown", (event) => {
    if (["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName)) return;
    if ((event.key === "Delete" || event.key === "Backspace") && state.selected) {
      on.remove(state.selected);
    } else if (event.key === "ArrowUp" || event.key === "PageUp") {
      on.frame(state.frame - 1);
    } else if (event.key === "ArrowDown" || event.key === "PageDown") {
      on.frame(state.frame + 1);
    }
  });
  window.addEventListener("resize", on.render);
}
