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
      type: "bar",
      data: { labels: d.branches.labels, datasets: [{ label: "refusal rate %", data: d.branches.rate, backgroundColor: BLUE }] },
      options: { ...quiet, plugins: { legend: { display: false } }, scales: { y: pct } },
    });
    charts.agents = new Chart(document.getElementById("chart-agents"), {
      type: "bar",
      data: { labels: d.agents.labels, datasets: [{ label: "refusal rate %", data: d.agents.rate,
        backgroundColor: d.agents.rate.map((r) => (r > 30 ? RED : GREY)) }] },
      options: { ...quiet, plugins: { legend: { display: false } }, scales: { y: pct } },
    });
  }

  function update(d) {
    const c = charts;
    c.trend.data.labels = d.trend.labels;
    [d.trend.rate, d.trend.completed, d.trend.refused].forEach((v, i) => { c.trend.data.datasets[i].data = v; });
    c.reasons.data.labels = d.reasons.labels; c.reasons.data.datasets[0].data = d.reasons.refused;
    c.branches.data.labels = d.branches.labels; c.branches.data.datasets[0].data = d.branches.rate;
    c.agents.data.labels = d.agents.labels; c.agents.data.datasets[0].data = d.agents.rate;
    c.agents.data.datasets[0].backgroundColor = d.agents.rate.map((r) => (r > 30 ? RED : GREY));
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
