// Drawing one frame: the image as the service saw it, then per lesion a semi-transparent mask,
// its outline along pixel edges, its box and label; RECIST axes; the box being drawn.

import { decodeRle, maskOutline } from "./rle.js";

export const PALETTE = [
  [255, 64, 64], [64, 200, 255], [255, 200, 0], [120, 255, 120],
  [255, 100, 255], [255, 150, 70], [160, 130, 255], [0, 220, 180],
];
export const FILL_ALPHA = 0.35;
export const HIGHLIGHT_ALPHA = 0.6;

const css = (colour, alpha = 1) => `rgba(${colour.join(",")},${alpha})`;

/** The lesion's mask, decoded once: Uint8Array(h * w), row-major. */
export function maskOf(lesion) {
  if (!lesion._mask) lesion._mask = decodeRle(lesion.mask);
  return lesion._mask;
}

/** An image-sized canvas holding the mask in `colour` (opaque) and transparent elsewhere. */
function layerOf(lesion, colour) {
  const key = colour.join(",");
  if (lesion._layer && lesion._layerKey === key) return lesion._layer;
  const [h, w] = lesion.mask.size;
  const mask = maskOf(lesion);
  const layer = document.createElement("canvas");
  layer.width = w;
  layer.height = h;
  const context = layer.getContext("2d");
  const pixels = context.createImageData(w, h);
  for (let i = 0; i < mask.length; i += 1) {
    if (mask[i]) pixels.data.set([colour[0], colour[1], colour[2], 255], 4 * i);
  }
  context.putImageData(pixels, 0, 0);
  lesion._layer = layer;
  lesion._layerKey = key;
  return layer;
}

function outline(ctx, lesion, zoom) {
  if (!lesion._edges) lesion._edges = maskOutline(maskOf(lesion), lesion.mask.size[1], lesion.mask.size[0]);
  ctx.beginPath();
  for (const [x0, y0, x1, y1] of lesion._edges) {
    ctx.moveTo(x0 * zoom, y0 * zoom);
    ctx.lineTo(x1 * zoom, y1 * zoom);
  }
  ctx.stroke();
}

function label(ctx, text, x, y, boxBottom, colour) {
  ctx.font = "12px system-ui, sans-serif";
  const width = ctx.measureText(text).width + 6;
  const top = y >= 17 ? y - 17 : boxBottom + 2; // above the box, else below it
  ctx.fillStyle = "rgba(0,0,0,0.65)";
  ctx.fillRect(x, top, width, 15);
  ctx.fillStyle = css(colour);
  ctx.fillText(text, x + 3, top + 11.5);
}

/**
 * Draw `frame` ({image, width, height}) and its `lesions` on `ctx`, `zoom` canvas pixels per
 * image pixel. `axes`: [{points: [[x, y], [x, y]], which: "long" | "short", mm, colour}].
 */
export function drawFrame(ctx, frame, lesions, { zoom, colourOf, hover, selected, axes, rubber }) {
  const { width: W, height: H } = ctx.canvas;
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1;
  ctx.drawImage(frame.image, 0, 0, W, H);
  for (const lesion of lesions) {
    const strong = lesion === hover || lesion === selected;
    ctx.globalAlpha = strong ? HIGHLIGHT_ALPHA : FILL_ALPHA;
    ctx.drawImage(layerOf(lesion, colourOf(lesion)), 0, 0, W, H);
  }
  ctx.globalAlpha = 1;
  for (const lesion of lesions) {
    const colour = colourOf(lesion);
    const strong = lesion === hover || lesion === selected;
    ctx.strokeStyle = css(colour);
    ctx.lineWidth = strong ? 2.5 : 1.5;
    outline(ctx, lesion, zoom);
    const [x0, y0, x1, y1] = lesion.box.map((v) => v * zoom);
    ctx.lineWidth = 1;
    ctx.setLineDash(lesion._manual ? [] : [4, 3]);
    ctx.strokeRect(x0 + 0.5, y0 + 0.5, x1 - x0 - 1, y1 - y0 - 1);
    ctx.setLineDash([]);
    label(ctx, `${lesion.label} ${lesion.score.toFixed(2)}`, x0, y0, y1, colour);
  }
  for (const axis of axes) {
    const [[ax, ay], [bx, by]] = axis.points.map(([x, y]) => [x * zoom, y * zoom]);
    ctx.setLineDash(axis.which === "long" ? [] : [5, 3]);
    for (const [colour, width] of [["#000", 4], ["#fff", 2]]) { // white on a dark edge
      ctx.strokeStyle = colour;
      ctx.lineWidth = axis.which === "long" ? width : width - 0.5;
      ctx.beginPath();
      ctx.moveTo(ax, ay);
      ctx.lineTo(bx, by);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    if (axis.mm != null) {
      label(ctx, `${axis.which === "long" ? "L" : "S"} ${axis.mm.toFixed(1)} mm`, bx + 4, by + 8, by + 8, axis.colour);
    }
  }
  if (rubber) {
    const [x0, y0, x1, y1] = rubber.map((v) => v * zoom);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 1.5;
    ctx.setLineDash([6, 4]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
}
