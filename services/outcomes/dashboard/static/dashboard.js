// Draws the dashboard's charts from the page's JSON, then refreshes the page's panels in place.
(function () {
  "use strict";
  const RED = "#d9480f", GREEN = "#2b8a3e", BLUE = "#1c7ed6", GREY = "#868e96";
  const charts = {};

  function data() {
    const el = document.getElementById("chart-data");
    return el ? JSON.parse(el.textContent) : null;
  }

  const pct = { beginAtZero: true, suggestedMax: 40, ticks: { callback: (v) => v + "%" } };
  const quiet = { animation: false, responsive: true, maintainAspectRatio: false };
  const FEW = 30; // fewer answered calls than this: the bar is drawn faint, its interval is wide

  // Each bar's 95% interval as an error bar (the dataset's `low` and `high`, in percent).
  const errorBars = {
    id: "errorBars",
    afterDatasetsDraw(chart) {
      const set = chart.data.datasets[0], y = chart.scales.y, ctx = chart.ctx;
      if (!set || !set.low) return;
      ctx.save();
      ctx.strokeStyle = "#212529";
      ctx.lineWidth = 1.5;
      chart.getDatasetMeta(0).data.forEach((bar, i) => {
        if (set.low[i] === null || set.high[i] === null) return;
        const top = y.getPixelForValue(set.high[i]), bottom = y.getPixelForValue(set.low[i]), cap = 5;
        ctx.beginPath();
        ctx.moveTo(bar.x, top); ctx.lineTo(bar.x, bottom);
        ctx.moveTo(bar.x - cap, top); ctx.lineTo(bar.x + cap, top);
        ctx.moveTo(bar.x - cap, bottom); ctx.lineTo(bar.x + cap, bottom);
        ctx.stroke();
      });
      ctx.restore();
    },
  };

  // A rate chart's dataset: the bars, their intervals, and faint colour where n is small.
  function rateSet(d, colour) {
    return { label: "refusal rate %", data: d.rate, low: d.low, high: d.high, n: d.n,
      backgroundColor: d.rate.map((r, i) => colour(r) + (d.n[i] < FEW ? "55" : "")) };
  }

  function rateOptions(d) {
    return { ...quiet, plugins: { legend: { display: false }, tooltip: { callbacks: {
        afterLabel: (item) => `95% interval ${d.low[item.dataIndex]}–${d.high[item.dataIndex]}%, n = ${d.n[item.dataIndex]}`,
      } } },
      scales: { y: { ...pct, suggestedMax: Math.max(40, ...d.high.filter((v) => v !== null)) } } };
  }
  const agentColour = (r) => (r > 30 ? RED : GREY);
  const branchColour = () => BLUE;

  function build(d) {
    charts.trend = new Chart(document.getElementById("chart-trend"), {
      data: {
        labels: d.trend.labels,
        datasets: [
          { type: "line", label: "refusal rate %", data: d.trend.rate, borderColor: RED, backgroundColor: RED,
            yAxisID: "rate", spanGaps: true, tension: 0.25, pointRadius: 2 },
          { type: "bar", label: "completed", data: d.trend.completed, backgroundColor: GREEN + "88", yAxisID: "calls", stack: "c" },
          { type: "bar", label: "refused", data: d.trend.refused, backgroundColor: RED + "88", yAxisID: "calls", stack: "c" },
        ],
      },
      options: { ...quiet, interaction: { mode: "index", intersect: false },
        scales: { rate: { ...pct, position: "left" },
                  calls: { beginAtZero: true, position: "right", stacked: true, grid: { drawOnChartArea: false } },
                  x: { stacked: true } } },
    });
    charts.reasons = new Chart(document.getElementById("chart-reasons"), {
      type: "bar",
      data: { labels: d.reasons.labels, datasets: [{ label: "refusals", data: d.reasons.refused, backgroundColor: RED }] },
      options: { ...quiet, indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    charts.branches = new Chart(document.getElementById("chart-branches"), {
      type: "bar", plugins: [errorBars],
      data: { labels: d.branches.labels, datasets: [rateSet(d.branches, branchColour)] },
      options: rateOptions(d.branches),
    });
    charts.agents = new Chart(document.getElementById("chart-agents"), {
      type: "bar", plugins: [errorBars],
      data: { labels: d.agents.labels, datasets: [rateSet(d.agents, agentColour)] },
      options: rateOptions(d.agents),
    });
  }

  function update(d) {
    const c = charts;
    c.trend.data.labels = d.trend.labels;
    [d.trend.rate, d.trend.completed, d.trend.refused].forEach((v, i) => { c.trend.data.datasets[i].data = v; });
    c.reasons.data.labels = d.reasons.labels; c.reasons.data.datasets[0].data = d.reasons.refused;
    [[c.branches, d.branches, branchColour], [c.agents, d.agents, agentColour]].forEach(([chart, fresh, colour]) => {
      chart.data.labels = fresh.labels;
      chart.data.datasets[0] = rateSet(fresh, colour);
      chart.options = rateOptions(fresh);
    });
    Object.values(c).forEach((chart) => chart.update("none"));
  }

  async function refresh() {
    let page;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      page = new DOMParser().parseFromString(await response.text(), "text/html");
    } catch (err) {
      return; // the service is restarting: try again at the next tick
    }
    const panels = page.querySelectorAll("[data-panel]");
    if (!panels.length) { location.reload(); return; } // the session ended: show the login form
    panels.forEach((fresh) => { const old = document.getElementById(fresh.id); if (old) old.replaceWith(fresh); });
    update(data());
  }

  const initial = data();
  if (!initial) return;
  build(initial);
  const seconds = Number(document.getElementById("refresh").dataset.seconds || 15);
  setInterval(refresh, seconds * 1000);
})();
