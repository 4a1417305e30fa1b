"""`dvc plots show` / `dvc plots diff` as a user sees them: the real dvc writes the page with the project's
template (.dvc/plots/page.html, vega inlined) and a real headless Chromium draws it with every network request
sent to a dead proxy. Skipped without Chromium (Debian: apt-get install chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import copy_project
from palbert.metrics import DEV_METRICS
from palbert.train.loop import write_plots
from test_dvc_views import PLOTS, dvc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
#: Test-only: draw as SVG (the page's default is canvas) and note each finished or failed plot in the DOM.
PROBE = """<script>
const palbertEmbed = window.vegaEmbed;
window.vegaEmbed = (el, spec, opt) => palbertEmbed(el, spec, Object.assign({}, opt, {renderer: 'svg'})).then(
  r => { document.body.insertAdjacentHTML('beforeend', '<p class="probe">' + 'DRAWN'.toUpperCase() + '</p>'); return r; },
  e => { document.body.insertAdjacentHTML('beforeend', '<p class="probe">' + 'FAILED '.toUpperCase() + e + '</p>'); });
</script>
</head>
<body>"""


def _history(steps: list[int], epochs: int, offset: float = 0.0) -> dict[str, list]:
    return {
        "loss_sst": [[s, 1.6 - s / 10_000 + offset] for s in steps], "loss_para": [[s, 0.7 - s / 20_000] for s in steps],
        "loss_sts": [[s, 2.0 - s / 5_000] for s in steps], "loss_simcse": [[s, 0.01] for s in steps],
        "lr": [[s, 2e-5] for s in steps], "sampling": [[s, {"sst": 0.3, "quora": 0.45, "sts": 0.25}] for s in steps],
        "dev": [{"epoch": e, "sst_acc": 0.4 + e / 100, "para_acc": 0.8, "sts_pearson": 0.85, "overall": 0.7 + e / 100}
                for e in range(1, epochs + 1)],
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """HEAD: a 3 x 1800-step run; the workspace: the README's 1-epoch, 100-step quick look on top of it."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    write_plots(_history(list(range(10, 5401, 10)), epochs=3), project / "metrics/plots/train")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], cwd=project,
                   check=True)
    write_plots(_history(list(range(10, 101, 10)), epochs=1, offset=0.3), project / "metrics/plots/train")
    return project


def chromium(page: Path, profile: Path, *args: str) -> str:
    """Headless Chromium on ``page``; every request outside the file goes to a closed port (no network)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=20000",
         *args, page.as_uri()], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _probes(dom: str) -> list[str]:
    """What each plot's ``vegaEmbed`` said (PROBE): DRAWN, or FAILED and the error."""
    return re.findall(r'<p class="probe">([^<\']*)</p>', dom)


def _svg_of(dom: str, title: str) -> str:
    [svg] = [part for part in dom.split("<svg")[1:] if f">{title}<" in part]
    return svg


def _marks(svg: str, kind: str) -> int:
    """How many items of one vega mark type (``line``, ``symbol``) the SVG holds."""
    return sum(group.count("<path") for group in re.findall(rf'class="mark-{kind} role-mark[^"]*"[^>]*>(.*?)</g>', svg))


def test_plots_diff_draws_every_plot_offline_with_both_runs_whole(project, tmp_path):
    out = project / "page"
    dvc(project, "plots", "diff", "HEAD", "-o", str(out))
    page = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", page), "the page loads a script from elsewhere"
    (out / "probe.html").write_text(page.replace("</head>\n<body>", PROBE, 1), encoding="utf-8")

    dom = chromium(out / "probe.html", tmp_path / "profile", "--dump-dom")
    assert _probes(dom) == ["DRAWN"] * len(PLOTS)
    # dev scores per epoch: 4 metrics x (3 epochs of HEAD + the workspace's single epoch), each a point
    dev = _svg_of(dom, "Dev metrics per epoch")
    assert _marks(dev, "symbol") >= len(DEV_METRICS) * (3 + 1)
    assert ">1.5<" not in dev and ">1.2<" not in dev  # whole-number epoch ticks only
    # one legend for the revisions, a marker shape each (a one-epoch run is a lone point: it has no dash to show)
    legends = re.findall(r'aria-label="Symbol legend ([^"]*)"', dev)
    assert [legend for legend in legends if "revision" in legend] == [
        "titled 'revision' for shape with 2 values: HEAD, workspace"], legends
    revision_legend = dev[dev.index("titled 'revision'"):]
    symbols = re.findall(r'role-legend-symbol[^>]*><path transform="[^"]*" d="([^"]*)"', revision_legend)[:2]
    assert len(symbols) == 2 and symbols[0] != symbols[1], symbols
    # per-step series: one panel per revision with its own step axis (the quick look is not squeezed)
    losses = _svg_of(dom, "Training loss per task (paper Figures 1-3)")
    assert ">workspace<" in losses and ">HEAD<" in losses
    assert ">100<" in losses and ">5,000<" in losses  # the quick look's last tick and the long run's
    assert _marks(losses, "line") == 3 * 2  # 3 tasks in each of the 2 panels


def test_plots_show_of_a_one_epoch_run_draws_its_dev_point(project, tmp_path):
    out = project / "show"
    dvc(project, "plots", "show", "-o", str(out))
    probe = out / "probe.html"
    probe.write_text((out / "index.html").read_text(encoding="utf-8").replace("</head>\n<body>", PROBE, 1), encoding="utf-8")
    dom = chromium(probe, tmp_path / "profile", "--dump-dom")
    assert _probes(dom) == ["DRAWN"] * len(PLOTS)
    assert _marks(_svg_of(dom, "Dev metrics per epoch"), "symbol") == len(DEV_METRICS)
