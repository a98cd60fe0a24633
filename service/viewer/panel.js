// The lesion list beside the image (per-frame lesions, and the service's 3-D lesions when it
// returns them), and the JSON download of what the page shows.

import { PALETTE } from "./draw.js";

const $ = (id) => document.getElementById(id);

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function swatch(colour) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = `rgb(${colour.join(",")})`;
  return span;
}

function item(lesion, colour, on) {
  const li = document.createElement("li");
  li.dataset.id = lesion._id;
  const text = document.createElement("span");
  text.className = "lesion-text";
  const area = lesion.area_mm2 != null ? `${fmt(lesion.area_mm2, 1)} mm²` : "mm² unknown";
  const extra = [
    lesion._manual ? "drawn box" : `score ${fmt(lesion.score, 2)}`,
    lesion.lesion_id != null ? `3-D #${lesion.lesion_id}` : null,
  ].filter(Boolean);
  for (const [tag, content] of [["b", lesion.label], ["small", `${lesion.area_px} px · ${area}`], ["small", extra.join(" · ")]]) {
    const part = document.createElement(tag);
    part.textContent = content;
    text.append(part);
  }
  const remove = document.createElement("button");
  remove.className = "delete";
  remove.type = "button";
  remove.title = "delete this lesion";
  remove.textContent = "×";
  remove.addEventListener("click", (event) => {
    event.stopPropagation();
    on.remove(lesion);
  });
  li.append(swatch(colour), text, remove);
  li.addEventListener("mouseenter", () => on.hover(lesion));
  li.addEventListener("mouseleave", () => on.hover(null));
  li.addEventListener("click", () => on.select(lesion));
  return li;
}

/** Fill the lists; `on`: {hover(lesion), select(lesion), remove(lesion), frame(index)}. */
export function listLesions(state, colourOf, on) {
  const frame = state.frames[state.frame];
  const lesions = frame ? frame.lesions : [];
  $("lesions").replaceChildren(...lesions.map((l) => item(l, colourOf(l), on)));
  const total = state.frames.reduce((n, f) => n + f.lesions.length, 0);
  $("lesion-count").textContent =
    state.frames.length > 1 ? `${lesions.length} on this slice, ${total} in all` : `${total}`;
  const lesions3d = state.lesions3d ?? [];
  $("lesions-3d-panel").hidden = !lesions3d.length;
  $("lesions-3d").replaceChildren(
    ...lesions3d.map((l, k) => {
      const li = document.createElement("li");
      const text = document.createElement("span");
      text.className = "lesion-text";
      const frames = Array.isArray(l.frames) ? l.frames : [];
      const span = frames.length ? ` · frames ${frames[0]}–${frames.at(-1)}` : "";
      text.textContent =
        `#${l.id ?? l.lesion_id}${span} · ${fmt(l.volume_mm3, 0)} mm³ · ` +
        `long ${fmt(l.long_axis_mm, 1)} mm · short ${fmt(l.short_axis_mm, 1)} mm`;
      li.append(swatch(PALETTE[k % PALETTE.length]), text, document.createElement("span"));
      li.addEventListener("click", () => frames.length && on.frame(frames[0]));
      return li;
    }),
  );
  highlight(state);
}

/** Mark the hovered and the selected lesion in the list. */
export function highlight(state) {
  for (const li of $("lesions").children) {
    li.classList.toggle("hover", state.hover?._id === Number(li.dataset.id));
    li.classList.toggle("selected", state.selected?._id === Number(li.dataset.id));
  }
}

const plain = (lesion) => Object.fromEntries(Object.entries(lesion).filter(([k]) => !k.startsWith("_")));

/** The lesions the page shows (edits included), in the service's JSON layout. */
export function resultJson(state) {
  const frames = state.frames.map((f, i) => {
    const { models, ...result } = f.result ?? {
      width: f.width, height: f.height, pixel_spacing_mm: f.spacing,
    };
    return { ...result, frame: i, lesions: f.lesions.map(plain) };
  });
  if (frames.length === 1 && state.kind !== "nifti") {
    const { frame, ...single } = frames[0];
    return { ...single, models: state.models };
  }
  const body = { number_of_frames: frames.length, frames, models: state.models };
  // lesions_3d describes what the service found; after edits it would no longer match.
  if (state.lesions3d && !state.edited) body.lesions_3d = state.lesions3d;
  return body;
}
