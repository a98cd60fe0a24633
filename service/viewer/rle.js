// COCO compressed RLE, as pycocotools writes it (lesionseg/io/masks.py encode_rle), decoded to a
// row-major Uint8Array of 0/1, and the outline of such a mask along pixel edges.
// Format: maskApi.c rleToString / rleFrString in github.com/cocodataset/cocoapi (read, not copied).

/** Run lengths of a compressed RLE string; runs alternate 0, 1, 0, ... in column-major order. */
export function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k); // arithmetic, not <<: runs may pass 2^31 bits of shift
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10) !== 0) x -= 2 ** (5 * k); // sign of the last 5-bit group
    }
    if (counts.length > 2) x += counts[counts.length - 2]; // delta to the run two back
    counts.push(x);
  }
  return counts;
}

/** {size: [h, w], counts} -> Uint8Array(h * w), row-major (index y * w + x). */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  let pos = 0; // column-major position: x * h + y
  rleCounts(rle.counts).forEach((run, i) => {
    if (i % 2 === 1) {
      for (let q = pos; q < pos + run; q += 1) mask[(q % h) * w + Math.floor(q / h)] = 1;
    }
    pos += run;
  });
  if (pos !== h * w) throw new Error(`RLE covers ${pos} pixels, the mask has ${h * w}`);
  return mask;
}

/** Edges [x0, y0, x1, y1] (pixel-edge coordinates) between mask and non-mask pixels. */
export function maskOutline(mask, w, h) {
  const inside = (x, y) => x >= 0 && y >= 0 && x < w && y < h && mask[y * w + x] === 1;
  const edges = [];
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      if (!inside(x, y)) continue;
      if (!inside(x, y - 1)) edges.push([x, y, x + 1, y]);
      if (!inside(x, y + 1)) edges.push([x, y + 1, x + 1, y + 1]);
      if (!inside(x - 1, y)) edges.push([x, y, x, y + 1]);
      if (!inside(x + 1, y)) edges.push([x + 1, y, x + 1, y + 1]);
    }
  }
  return edges;
}
