// Small SVG charts for the console, built with h() (no library, no innerHTML).  Every chart is a <figure> whose
// SVG is one labelled image (role="img" + <title>) for screen readers, followed by a visually hidden table with
// the same numbers, and a visible legend when it has several series.
//
// Layout is in percentages of the figure's width and fixed pixel heights, so the text stays crisp and readable
// at every screen width (a scaled viewBox would shrink the labels to nothing on a phone).

import { h } from "./dom.js";

const ROW = 26;        // px per bar in the horizontal charts
const LABEL_W = 30;    // % of the width kept for the labels of horizontal bars
const VALUE_W = 14;    // % kept at the right for the value text
let serial = 0;

const seriesClass = (i) => `s${(i % 5) + 1}`;
const fmtDefault = (v) => String(Math.round(v * 10) / 10);

function frame(kind, title, svg, tableNode, legend) {
  const id = `chart-${++serial}`;
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-labelledby", `${id}-title`);
  svg.prepend(h("title", { id: `${id}-title` }, title));
  return h(`figure.chart.chart-${kind}`, { dataset: { chart: kind } },
    h("figcaption", title), svg, legend, h("div.visually-hidden", tableNode));
}

function legendOf(names) {
  if (names.length < 2) return null;
  return h("ul.chart-legend", { "aria-hidden": "true" },
    names.map((name, i) => h("li", h(`span.swatch.${seriesClass(i)}`), name)));
}

function dataTable(caption, head, rows) {
  return h("table", h("caption", caption),
    h("thead", h("tr", head.map((cell) => h("th", { scope: "col" }, cell)))),
    h("tbody", rows.map((cells) => h("tr", cells.map((cell, i) => (i ? h("td", cell) : h("th", { scope: "row" }, cell)))))));
}

/**
 * Horizontal bars, one per item: barChart("Busiest agents", [{label, value}], {format}).
 * An empty list (or all zero) shows `empty` instead of an empty frame.
 */
export function barChart(title, items, { format = fmtDefault, empty = "No data yet." } = {}) {
  if (!items.length || items.every((item) => !item.value)) return h("figure.chart.chart-empty", h("figcaption", title), h("p.empty", empty));
  const max = Math.max(...items.map((item) => item.value));
  const span = 100 - LABEL_W - VALUE_W;
  const svg = h("svg.chart-svg", { width: "100%", height: items.length * ROW + 4 },
    items.map((item, i) => {
      const y = i * ROW + 2;
      const width = max ? (item.value / max) * span : 0;
      return h("g", { class: "bar" },
        h("text.chart-label", { x: "0", y: y + ROW / 2 + 4 }, clip(item.label)),
        h(`rect.${seriesClass(0)}`, { x: `${LABEL_W}%`, y: y + 3, width: `${Math.max(width, 0.4)}%`, height: ROW - 8, rx: 3 }),
        h("text.chart-value", { x: `${LABEL_W + width + 1}%`, y: y + ROW / 2 + 4 }, format(item.value)));
    }));
  const table = dataTable(title, ["", "Value"], items.map((item) => [item.label, format(item.value)]));
  return frame("bar", title, svg, table, null);
}

/**
 * Horizontal stacked bars: stackedBars("Stage timings", ["STT", "LLM", ...], [{label, values: [..], cells}]).
 * `values` are the segments' lengths (null: not measured, drawn as nothing); the table shows `cells` when
 * given (e.g. cumulative times) or the values.  `labelWidth`: % of the width for the row labels.
 */
export function stackedBars(title, names, rows,
  { format = fmtDefault, empty = "No data yet.", head = names, labelWidth = LABEL_W } = {}) {
  if (!rows.length) return h("figure.chart.chart-empty", h("figcaption", title), h("p.empty", empty));
  const totals = rows.map((row) => row.values.reduce((sum, v) => sum + (v || 0), 0));
  const max = Math.max(...totals, 1);
  const span = 100 - labelWidth - VALUE_W;
  const svg = h("svg.chart-svg", { width: "100%", height: rows.length * ROW + 4 },
    rows.map((row, r) => {
      const y = r * ROW + 2;
      let x = labelWidth;
      const segments = row.values.map((value, i) => {
        if (!value) return null;
        const width = (value / max) * span;
        const rect = h(`rect.${seriesClass(i)}`, { x: `${x}%`, y: y + 3, width: `${width}%`, height: ROW - 8 },
          h("title", `${names[i]}: ${format(value)}`));
        x += width;
        return rect;
      });
      return h("g", { class: "bar", dataset: { label: row.label } },
        h("text.chart-label", { x: "0", y: y + ROW / 2 + 4 }, clip(row.label)), segments,
        h("text.chart-value", { x: `${x + 1}%`, y: y + ROW / 2 + 4 }, format(totals[r])));
    }));
  const table = dataTable(title, ["", ...head],
    rows.map((row) => [row.label, ...(row.cells || row.values.map((v) => (v === null || v === undefined ? "—" : format(v))))]));
  return frame("stacked", title, svg, table, legendOf(names));
}

/**
 * Vertical stacked columns, one per label (e.g. per day): columnChart("Calls per day", ["Mon", ...],
 * [{name: "Answered", values: [...]}, ...]).
 */
export function columnChart(title, labels, series, { format = fmtDefault, height = 150 } = {}) {
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const max = Math.max(...totals, 1);
  const plot = height - 34;  // room for the value above and the label below
  const step = 100 / labels.length;
  const svg = h("svg.chart-svg", { width: "100%", height },
    h("line.chart-axis", { x1: "0", x2: "100%", y1: plot + 14, y2: plot + 14 }),
    labels.map((label, i) => {
      let top = plot + 14;
      const x = i * step + step * 0.2;
      const parts = series.map((s, k) => {
        const value = s.values[i] || 0;
        if (!value) return null;
        const size = (value / max) * plot;
        top -= size;
        return h(`rect.${seriesClass(k)}`, { x: `${x}%`, y: top, width: `${step * 0.6}%`, height: size },
          h("title", `${label}, ${s.name}: ${format(value)}`));
      });
      return h("g", { class: "column" }, parts,
        h("text.chart-value", { x: `${i * step + step / 2}%`, y: top - 4, "text-anchor": "middle" }, format(totals[i])),
        h("text.chart-label", { x: `${i * step + step / 2}%`, y: height - 4, "text-anchor": "middle" }, label));
    }));
  const table = dataTable(title, ["", ...series.map((s) => s.name)],
    labels.map((label, i) => [label, ...series.map((s) => format(s.values[i] || 0))]));
  return frame("columns", title, svg, table, legendOf(series.map((s) => s.name)));
}

function clip(text) {
  const s = String(text);
  return s.length > 18 ? `${s.slice(0, 17)}…` : s;
}
