// Charts drawn from the tables beside them, with Apache ECharts (vendor/echarts, served by the app).
//
// The contract (the dashboard's templates emit it):
//   <figure class="chart" data-chart="line|bar|stack" data-table="TABLE_ID"></figure>
//   <table id="TABLE_ID">…</table>
// The table's first column is the x axis (category labels); each further column is a series
// named by its <th>. A cell's number is its data-value attribute if present, else its text
// parsed as a number; a column with a cell that is not a number is left out. "stack" draws
// stacked bars. The table stays on the page: the chart only repeats what it says.
"use strict";

(function () {
  const KINDS = new Set(["line", "bar", "stack"]);

  function cellNumber(cell) {
    if (!cell) return null;
    const raw = (cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent)
      .trim()
      .replace(/[,，\s]/g, "")
      .replace(/%$/, "");
    if (raw === "" || raw === "-" || raw === "—") return null;
    const value = Number(raw);
    return Number.isFinite(value) ? value : NaN;
  }

  function readTable(table) {
    const header = table.tHead && table.tHead.rows.length ? table.tHead.rows[0] : table.rows[0];
    if (!header) return null;
    const rows = [];
    for (const body of table.tBodies) {
      for (const row of body.rows) {
        if (row !== header && row.cells.length) rows.push(row);
      }
    }
    const labels = rows.map((row) => row.cells[0].textContent.trim());
    const series = [];
    for (let column = 1; column < header.cells.length; column += 1) {
      const values = rows.map((row) => cellNumber(row.cells[column]));
      if (values.some((value) => Number.isNaN(value)) || values.every((value) => value === null)) continue;
      series.push({ name: header.cells[column].textContent.trim(), values });
    }
    return { labels, series };
  }

  function option(kind, data) {
    return {
      animation: false,
      // Drawn on the canvas: ECharts' HTML tooltip writes style attributes, which the console's
      // CSP (no inline styles) refuses.
      tooltip: { trigger: "axis", renderMode: "richText" },
      legend: { type: "scroll", top: 0 },
      grid: { left: 8, right: 16, top: 36, bottom: 8, containLabel: true },
      xAxis: { type: "category", data: data.labels, axisLabel: { hideOverlap: true } },
      yAxis: { type: "value" },
      series: data.series.map((one) => ({
        name: one.name,
        type: kind === "line" ? "line" : "bar",
        stack: kind === "stack" ? "total" : undefined,
        data: one.values,
      })),
    };
  }

  function draw(figure) {
    const kind = figure.dataset.chart;
    const table = document.getElementById(figure.dataset.table || "");
    if (!KINDS.has(kind) || !table || table.tagName !== "TABLE") return null;
    const data = readTable(table);
    if (!data || !data.series.length || !data.labels.length) {
      figure.hidden = true;
      return null;
    }
    const chart = echarts.init(figure, null, { renderer: "canvas" });
    chart.setOption(option(kind, data));
    figure.setAttribute("role", "img");
    figure.setAttribute("aria-label", "图表：数据见下表");
    figure.dataset.rendered = String(data.series.length);
    return chart;
  }

  function start() {
    if (typeof echarts === "undefined") return;
    const charts = Array.from(document.querySelectorAll("figure.chart[data-chart][data-table]"))
      .map(draw)
      .filter(Boolean);
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => charts.forEach((chart) => chart.resize()), 150);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
