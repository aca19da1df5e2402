"""Regenerate the documentation's screenshots from a trained home, in the system Chromium.

    .venv/bin/python scripts/screenshots.py --home .gen_ssd_home [--out docs/images]

Writes `ui_lineage.png` (the Dagster UI: the lineage upstream of evaluation_scores, every asset
named on it) and `viewer_list.png`, `viewer_trajectory.png` (`gen-ssd view`: the list, then a pruned
Gen-SSD path when the home has one). Pages are 1600x1000 CSS pixels at 2x (PNGs of 3200x2000; the lineage 1300x1800, as it is tall); the home's path in the viewer's header is
shown as its last component, so no machine path reaches an image. Needs playwright (the test extra)
and Chromium (apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1600, "height": 1000}
# The lineage runs top to bottom (one column per group), so a tall page shows it at a readable zoom.
LINEAGE_VIEWPORT = {"width": 1300, "height": 1800}
LINEAGE = "/assets/evaluation_scores?view=lineage&lineageScope=upstream&lineageDepth=10"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def chromium() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        if path := shutil.which(candidate):
            return path
    raise SystemExit("no Chromium found (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"nothing answered at {url} (process exit code {proc.poll()})")


@contextmanager
def started(cmd: list[str], env: dict, url: str, log: Path, timeout_s: float = 300):
    """A server in its own process group (dagster dev ignores SIGTERM), stopped with its children."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(url, proc, timeout_s)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def upstream_asset_names() -> list[str]:
    """The names the lineage graph shows upstream of evaluation_scores (the last part of each key)."""
    import dagster as dg

    from gen_ssd_dagster.definitions import pipeline_definitions, resources

    graph = pipeline_definitions(resources()).resolve_asset_graph()
    keys = dg.AssetSelection.assets("evaluation_scores").upstream().resolve(graph)
    return sorted({key.path[-1] for key in keys})


def shows(label: str, name: str) -> bool:
    """Whether a graph node's label is `name`, whole or shortened in the middle ("gen_…_trajectories")."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return bool(head or tail) and name.startswith(head) and name.endswith(tail) and len(name) > len(head + tail)


def lineage_shot(page, url: str, out: Path, names: list[str], machine_path: Path) -> Path:
    """The lineage upstream of the scores, checked to name every asset in `names`."""
    page.set_viewport_size(LINEAGE_VIEWPORT)
    page.goto(url + LINEAGE)
    page.wait_for_load_state("networkidle")
    page.get_by_text("evaluation", exact=True).locator("visible=true").first.wait_for()
    hide = page.get_by_text("Hide navigation", exact=True)
    if hide.count():  # the graph gets the page's whole width
        hide.first.click()
        page.wait_for_timeout(1500)
    labels = page.inner_text("body").splitlines()
    missing = [n for n in names if not any(shows(label.strip(), n) for label in labels)]
    if missing:
        page.screenshot(path=str(out / "ui_lineage.FAILED.png"))
        raise RuntimeError(f"the lineage graph does not show {missing} (see {out / 'ui_lineage.FAILED.png'})")
    written = shot(page, out / "ui_lineage.png", machine_path)
    page.set_viewport_size(VIEWPORT)
    return written


def shot(page, path: Path, machine_path: Path, full_page: bool = False) -> Path:
    """A screenshot, once the viewer's header shows only the home's last component and no text on
    the page names `machine_path` (the home's absolute path)."""
    page.evaluate("document.querySelectorAll('header .home').forEach("
                  "e => e.textContent = e.textContent.trim().split('/').filter(Boolean).pop() || '')")
    if str(machine_path) in page.inner_text("body"):
        raise RuntimeError(f"{page.url} shows {machine_path}: it would be in {path.name}")
    page.screenshot(path=str(path), full_page=full_page)
    return path


def viewer_shots(page, url: str, out: Path, machine_path: Path) -> list[Path]:
    """The list of trajectories, then one Gen-SSD path: a pruned one when there is any."""
    page.goto(url + "/")
    paths = [shot(page, out / "viewer_list.png", machine_path)]
    for query in ("?method=gen_ssd&end_reason=pruned", "?method=gen_ssd"):
        page.goto(url + "/" + query)
        rows = page.locator("table.trajectories tbody tr")
        if rows.count():
            rows.first.locator("a").click()
            page.wait_for_url(re.compile(r"/t/"))
            paths.append(shot(page, out / "viewer_trajectory.png", machine_path, full_page=True))
            break
    return paths


def browser_page(playwright):
    browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=2)  # node labels stay legible
    page.set_default_timeout(120_000)
    return browser, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("GEN_SSD_HOME") or ".gen_ssd_home", help="a trained home")
    parser.add_argument("--out", default=str(REPO / "docs" / "images"), help="where the PNGs go")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from gen_ssd_dagster.instance import dagster_home
    from gen_ssd_dagster.store import Home

    home = Home.resolve(args.home)
    if not home.db_path.is_file():
        raise SystemExit(f"--home {home.root}: no {home.db_path.name} there; run `make demo` (or gen-ssd pipeline) first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    instance = dagster_home(home)
    nux = instance / ".nux"  # Dagster's "join the community" dialog would cover the graph
    nux.mkdir(exist_ok=True)
    (nux / "nux.yaml").write_text("seen: 1\n")
    env = {**os.environ, "DAGSTER_HOME": str(instance), "GEN_SSD_HOME": str(home.root), "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    dagster_port, viewer_port = free_port(), free_port()
    written = []
    with sync_playwright() as p:
        browser, page = browser_page(p)
        with started([str(bin_dir / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(dagster_port), "-w", "workspace.yaml"],
                     env, f"http://127.0.0.1:{dagster_port}/server_info", home.root / "screenshots_dagster.log"):
            written.append(lineage_shot(page, f"http://127.0.0.1:{dagster_port}", out, upstream_asset_names(), home.root))
        with started([sys.executable, "-m", "gen_ssd_dagster.cli", "--home", str(home.root), "view", "--port", str(viewer_port)],
                     env, f"http://127.0.0.1:{viewer_port}/", home.root / "screenshots_viewer.log"):
            written += viewer_shots(page, f"http://127.0.0.1:{viewer_port}", out, home.root)
        browser.close()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
