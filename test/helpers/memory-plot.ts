/**
 * Memory against time, per node, as a PNG (the seed's Tests A/B/C figures): one coloured line per node,
 * axes with tick labels in a small built-in font, the unit (MiB) and a legend naming each node beside its
 * colour. pngjs only: no native canvas to build on a fresh machine.
 */
import { writeFileSync } from 'node:fs';
import { PNG } from 'pngjs';

/** One node's samples: seconds since the start, memory in MiB. */
export interface MemorySeries {
  node: string;
  points: Array<[number, number]>;
}

const W = 960;
const H = 420;
const M = { left: 70, right: 20, top: 30, bottom: 40 };
const COLOURS: Array<[number, number, number]> = [
  [31, 119, 180],
  [214, 39, 40],
  [44, 160, 44],
  [148, 103, 189],
  [255, 127, 14],
];

/** 3×5 glyphs: digits, lower-case letters (node names), `M`, `B` (MiB), `.`, `-`, `_`. */
const GLYPHS: Record<string, string[]> = {
  '0': ['111', '101', '101', '101', '111'],
  '1': ['010', '110', '010', '010', '111'],
  '2': ['111', '001', '111', '100', '111'],
  '3': ['111', '001', '111', '001', '111'],
  '4': ['101', '101', '111', '001', '001'],
  '5': ['111', '100', '111', '001', '111'],
  '6': ['111', '100', '111', '101', '111'],
  '7': ['111', '001', '010', '010', '010'],
  '8': ['111', '101', '111', '101', '111'],
  '9': ['111', '101', '111', '001', '111'],
  '.': ['000', '000', '000', '000', '010'],
  '-': ['000', '000', '111', '000', '000'],
  _: ['000', '000', '000', '000', '111'],
  M: ['101', '111', '111', '101', '101'],
  B: ['110', '101', '110', '101', '110'],
  a: ['000', '110', '011', '101', '111'],
  b: ['100', '100', '111', '101', '111'],
  c: ['000', '111', '100', '100', '111'],
  d: ['001', '001', '111', '101', '111'],
  e: ['000', '111', '111', '100', '111'],
  f: ['011', '100', '110', '100', '100'],
  g: ['000', '111', '101', '111', '011'],
  h: ['100', '100', '111', '101', '101'],
  i: ['010', '000', '010', '010', '010'],
  j: ['001', '000', '001', '101', '111'],
  k: ['100', '101', '110', '101', '101'],
  l: ['110', '010', '010', '010', '111'],
  m: ['000', '111', '111', '101', '101'],
  n: ['000', '110', '101', '101', '101'],
  o: ['000', '111', '101', '101', '111'],
  p: ['000', '111', '101', '111', '100'],
  q: ['000', '111', '101', '111', '001'],
  r: ['000', '111', '100', '100', '100'],
  s: ['000', '111', '100', '011', '111'],
  t: ['010', '111', '010', '010', '011'],
  u: ['000', '101', '101', '101', '111'],
  v: ['000', '101', '101', '101', '010'],
  w: ['000', '101', '101', '111', '111'],
  x: ['000', '101', '010', '101', '101'],
  y: ['000', '101', '111', '001', '111'],
  z: ['000', '111', '011', '100', '111'],
};

/** A rounded step for about `n` ticks over `span`. */
function niceStep(span: number, n: number): number {
  const raw = span / n;
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? raw;
}

/** Draws `series` to a PNG file; answers its width and height. */
export function plotMemoryPng(file: string, series: MemorySeries[]): { width: number; height: number } {
  const png = new PNG({ width: W, height: H });
  png.data.fill(255);
  const set = (x: number, y: number, [r, g, b]: [number, number, number]) => {
    if (x < 0 || y < 0 || x >= W || y >= H) return;
    const i = (Math.round(y) * W + Math.round(x)) * 4;
    png.data[i] = r;
    png.data[i + 1] = g;
    png.data[i + 2] = b;
    png.data[i + 3] = 255;
  };
  const line = (x0: number, y0: number, x1: number, y1: number, c: [number, number, number], thick = 1) => {
    const steps = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
    for (let i = 0; i <= steps; i++) {
      const x = x0 + ((x1 - x0) * i) / steps;
      const y = y0 + ((y1 - y0) * i) / steps;
      for (let d = 0; d < thick; d++) set(x, y + d, c);
    }
  };
  const text = (s: string, x: number, y: number, scale = 2) => {
    let cx = x;
    for (const ch of s) {
      const g = GLYPHS[ch];
      g?.forEach((row, ry) =>
        [...row].forEach((bit, rx) => {
          if (bit !== '1') return;
          for (let dx = 0; dx < scale; dx++) for (let dy = 0; dy < scale; dy++) set(cx + rx * scale + dx, y + ry * scale + dy, [0, 0, 0]);
        }),
      );
      cx += 4 * scale;
    }
  };

  const all = series.flatMap((s) => s.points);
  const tMax = Math.max(1, ...all.map(([t]) => t));
  const values = all.map(([, v]) => v);
  let vMin = values.length ? Math.min(...values) : 0;
  let vMax = values.length ? Math.max(...values) : 1;
  const pad = Math.max(16, (vMax - vMin) * 0.1);
  vMin = Math.max(0, vMin - pad);
  vMax += pad;
  const px = (t: number) => M.left + ((W - M.left - M.right) * t) / tMax;
  const py = (v: number) => H - M.bottom - ((H - M.top - M.bottom) * (v - vMin)) / (vMax - vMin);

  const grey: [number, number, number] = [200, 200, 200];
  const black: [number, number, number] = [0, 0, 0];
  const vStep = niceStep(vMax - vMin, 6);
  for (let v = Math.ceil(vMin / vStep) * vStep; v <= vMax; v += vStep) {
    line(M.left, py(v), W - M.right, py(v), grey);
    text(String(Math.round(v)), 4, py(v) - 5);
  }
  const tStep = niceStep(tMax, 10);
  for (let t = 0; t <= tMax; t += tStep) {
    line(px(t), M.top, px(t), H - M.bottom, grey);
    text(`${Math.round(t)}s`, px(t) - 8, H - M.bottom + 8);
  }
  line(M.left, M.top, M.left, H - M.bottom, black);
  line(M.left, H - M.bottom, W - M.right, H - M.bottom, black);

  series.forEach((s, i) => {
    const c = COLOURS[i % COLOURS.length];
    // Memory holds its value until the next sample: a step line, as a monitor sees it.
    s.points.forEach(([t, v], j) => {
      const next = s.points[j + 1];
      if (!next) return;
      line(px(t), py(v), px(next[0]), py(v), c, 2);
      line(px(next[0]), py(v), px(next[0]), py(next[1]), c, 2);
    });
  });
  // The unit, and a legend naming each node beside its colour (other characters are drawn as spaces).
  text('MiB', 4, 10);
  let lx = M.left + 10;
  series.forEach((s, i) => {
    const c = COLOURS[i % COLOURS.length];
    for (let dx = 0; dx < 14; dx++) for (let dy = 0; dy < 10; dy++) set(lx + dx, 10 + dy, c);
    text(s.node.toLowerCase(), lx + 20, 10);
    lx += 20 + s.node.length * 8 + 24;
  });
  writeFileSync(file, PNG.sync.write(png));
  return { width: W, height: H };
}
