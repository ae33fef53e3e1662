"""`dvc plots show` draws every plot with no network (issue 16), checked in real headless Chromium.

The page DVC writes is opened from disk with every network request refused (a dead proxy and a resolver
that finds no host): a library loaded from a CDN would not arrive and its plots would stay blank. A probe
script appended to a copy of the page waits for vega-embed and reports, per plot div, whether a canvas or
svg exists and how many coloured pixels / marks it has (axes and labels are grey, so colour means data
marks), and whether each image plot decoded. Chromium prints the DOM after a virtual-time budget
(``--dump-dom``), so no browser driver is needed.

Chromium is required: CI installs it (scripts/test.sh) and this test fails without it. On a developer
machine without Chromium, ``POSESCENE_BROWSER_TESTS=0`` skips it (never under ``CI``).
"""

from __future__ import annotations

import configparser
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))  # the venv's dvc, beside the interpreter running the tests
PROBE_ID = "posescene-plot-probe"

# Appended to a copy of the page: after load, poll until every vega div has drawn (or time runs out in
# virtual time), then write the findings into a <pre> that --dump-dom prints.
PROBE = """
<script>
(function () {
  function colouredPixels(canvas) {
    var ctx = canvas.getContext("2d");
    if (!ctx || !canvas.width || !canvas.height) { return 0; }
    var data = ctx.getImageData(0, 0, canvas.width, canvas.height).data, n = 0;
    for (var i = 0; i < data.length; i += 4) {
      var hi = Math.max(data[i], data[i + 1], data[i + 2]), lo = Math.min(data[i], data[i + 1], data[i + 2]);
      if (data[i + 3] > 0 && hi - lo > 40) { n++; }
    }
    return n;
  }
  function dataMarks(item) {
    // Items of marks whose role is "mark" (the data), ignoring axes, legends and titles.
    var n = 0;
    (item.items || []).forEach(function (child) {
      if (child.marktype !== undefined) {  // a mark: its items are scene items
        if (child.role === "mark" && child.marktype !== "group") {
          // Only items placed inside the chart: a quantitative axis given strings puts them at NaN.
          (child.items || []).forEach(function (it) { if (isFinite(it.x) && isFinite(it.y)) { n++; } });
        }
        else { (child.items || []).forEach(function (it) { n += dataMarks(it); }); }
      } else {
        n += dataMarks(child);
      }
    });
    return n;
  }
  function inspect() {
    var out = [];
    Array.prototype.forEach.call(document.querySelectorAll("body > div[id]"), function (div) {
      // vega-embed replaces the div's content (its own script too) with a canvas or an svg.marks and an
      // svg icon for its menu: only the chart element counts.
      var canvas = div.querySelector("canvas"), svg = div.querySelector("svg.marks"), img = div.querySelector("img");
      var view = window.__probeViews[div.id];
      out.push({
        id: div.id,
        data_marks: view ? dataMarks(view.scenegraph().root) : 0,
        canvas: !!canvas,
        svg: !!svg,
        marks: canvas ? colouredPixels(canvas) : (svg ? svg.querySelectorAll("path, rect, circle, line").length : 0),
        image_ok: img ? (img.complete && img.naturalWidth > 0) : null
      });
    });
    return out;
  }
  var start = Date.now();
  function poll() {
    var found = inspect();
    var done = found.every(function (p) { return p.image_ok !== null || (p.marks > 0 && p.data_marks > 0); });
    if (done || Date.now() - start > 15000) {
      var pre = document.createElement("pre");
      pre.id = "__PROBE_ID__";
      pre.textContent = JSON.stringify({plots: found, errors: window.__probeErrors || []});
      document.body.appendChild(pre);
    } else {
      setTimeout(poll, 100);
    }
  }
  window.addEventListener("load", function () { setTimeout(poll, 50); });
})();
</script>
""".replace("__PROBE_ID__", PROBE_ID)
# Inserted first in <head>: collects page errors, and wraps vegaEmbed when the library defines it so the
# probe can read each chart's scenegraph (data marks, not axes or legends) from the view it resolves to.
ERROR_HOOK = """
<script>
window.__probeErrors = [];
window.__probeViews = {};
window.addEventListener("error", function (e) { window.__probeErrors.push(String(e.message)); });
(function () {
  var embed;
  Object.defineProperty(window, "vegaEmbed", {
    configurable: true,
    get: function () { return embed; },
    set: function (original) {
      embed = function (el, spec, opts) {
        var result = original(el, spec, opts);
        result.then(function (res) { window.__probeViews[String(el).replace(/^#/, "")] = res.view; },
                    function (err) { window.__probeErrors.push(String(err)); });
        return result;
      };
    }
  });
})();
</script>
"""

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
    # No network: every host resolves to nothing and every request goes to a dead proxy.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--virtual-time-budget=20000",
)


def _chromium() -> str:
    """The Chromium binary; fails (skips only when POSESCENE_BROWSER_TESTS=0 outside CI) when absent."""
    for name in (os.environ.get("POSESCENE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    if os.environ.get("POSESCENE_BROWSER_TESTS") == "0" and not os.environ.get("CI"):
        pytest.skip("no Chromium and POSESCENE_BROWSER_TESTS=0")
    pytest.fail(
        "Chromium not found (chromium, chromium-browser, google-chrome or $POSESCENE_CHROMIUM): the offline plot "
        "test needs a real browser. Install it with `apt-get install -y chromium` (scripts/test.sh does this as root), "
        "or set POSESCENE_BROWSER_TESTS=0 to skip it on a developer machine."
    )


def _project_html_template() -> Path:
    """The template .dvc/config names (plots.html_template, relative to .dvc/), as DVC resolves it."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    value = config.get("plots", "html_template", fallback=None)
    assert value, ".dvc/config has no [plots] html_template: dvc plots show would load vega from a CDN"
    path = (REPO_ROOT / ".dvc" / value).resolve()
    assert path.is_file(), f".dvc/config plots.html_template -> {path}: not found"
    return path


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# Plots shaped like the pipeline's: the training loss curves (several y columns of build/train/loss.csv),
# drift per model and the drift-vs-fidelity frontier (reports/plots/*.csv), and a PNG figure.
DVC_YAML = """\
plots:
  - build/train/loss.csv:
      x: step
      y: [j, l_diff, l_bal]
  - reports/plots/drift_by_model.csv:
      template: bar_horizontal
      x: drift_rmse
      y: model
  - reports/plots/frontier.csv:
      template: scatter
      x: pck
      y: drift_rmse
  - reports/plots/drift.png
"""


def _make_plot_repo(root: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=root, check=True)
    _write_csv(
        root / "build/train/loss.csv",
        [
            {
                "step": s,
                "l_diff": 0.5 / s,
                "l_bal": 0.3 / s,
                "j": 0.8 / s,
                "scale_diff": 1.0,
                "scale_bal": 1.2,
                "lr": 1e-4 * min(1.0, s / 5),
            }
            for s in range(1, 21)
        ],
    )
    _write_csv(
        root / "reports/plots/drift_by_model.csv",
        [
            {"model": "base", "drift_rmse": 0.024, "pck": 0.05},
            {"model": "primary", "drift_rmse": 0.019, "pck": 0.10},
            {"model": "secondary", "drift_rmse": 0.012, "pck": 0.07},
        ],
    )
    _write_csv(
        root / "reports/plots/frontier.csv",
        [
            {"model": m, "scale": s, "drift_rmse": 0.01 + 0.004 * s, "pck": 0.05 + 0.02 * s}
            for m in ("primary", "secondary")
            for s in (0.5, 1.0, 1.5)
        ],
    )
    Image.new("RGB", (32, 24), (200, 40, 40)).save(root / "reports/plots/drift.png")
    (root / "dvc.yaml").write_text(DVC_YAML)


def _render(chromium: str, page: Path, profile: Path) -> dict[str, list[dict[str, object]]]:
    probed = page.with_name("probed.html")
    html = page.read_text(encoding="utf-8")
    # The inlined libraries contain "</body>" in strings: insert the probe before the page's last one.
    head, tail = html.rsplit("</body>", 1)
    html = head.replace("<head>", "<head>" + ERROR_HOOK, 1) + PROBE + "</body>" + tail
    probed.write_text(html, encoding="utf-8")
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probed.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    match = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the probe never reported (chromium exit {done.returncode}): {done.stderr[-2000:]}"
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text)


@pytest.mark.e2e  # a real headless Chromium
def test_dvc_plots_show_draws_every_plot_offline(tmp_path: Path) -> None:
    chromium = _chromium()
    template = _project_html_template()
    repo = tmp_path / "repo"
    repo.mkdir()
    _make_plot_repo(repo)
    out = repo / "dvc_plots"
    subprocess.run(
        [DVC, "plots", "show", "--html-template", str(template), "-o", str(out)],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    page = out / "index.html"
    html = page.read_text(encoding="utf-8")
    remote = re.findall(r"<script[^>]+src=[\"']?(https?://[^\"' >]+)", html)
    assert not remote, f"{page} loads scripts from the network: {remote}"

    vega_ids = re.findall(r"vegaEmbed\('#([^']+)'", html)
    # One div per plot definition: the loss curves (3 y columns in one plot), drift by model, the frontier.
    assert vega_ids == ["build_train_loss_csv", "reports_plots_drift_by_model_csv", "reports_plots_frontier_csv"]

    report = _render(chromium, page, tmp_path / "chromium-profile")
    plots = {str(p["id"]): p for p in report["plots"]}
    missing = [i for i in vega_ids if i not in plots]
    assert not missing, f"plot divs missing from the rendered page: {missing}; found {list(plots)}"
    # Drawn: the chart element exists, has coloured pixels, and its scenegraph holds data marks (a legend
    # swatch alone would colour pixels of an otherwise empty chart).
    blank = [
        i
        for i in vega_ids
        if not (plots[i]["canvas"] or plots[i]["svg"]) or not plots[i]["marks"] or not plots[i]["data_marks"]
    ]
    assert not blank, f"plots that drew no marks offline: {blank}; page errors: {report['errors']}; all: {plots}"
    assert plots["reports_plots_drift_png"]["image_ok"], plots
