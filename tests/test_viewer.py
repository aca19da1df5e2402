"""`gen-ssd view` as a person uses it: a small real home (the pipeline's three trajectory assets on
the demo, with tiny models), the real server on a free port of 127.0.0.1, and Debian's Chromium
through Playwright. The browser opens the list, filters to pruned Gen-SSD paths, opens one,
checks the candidates' PPLs against DuckDB's and follows the link to the Standard KD sample of the
same problem. Screenshots go to $GEN_SSD_UI_SCREENSHOTS (default: a pytest tmp directory).

The HTTP-level checks (bad input, export) need no browser; all of it needs the home, which the
pipeline makes in about two minutes, so the module is in the slow tier.
"""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import DEMO_SIZES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SMALL = {"batch_size": 4, "num_candidates": 2, "sampling": {"max_new_tokens": 96, "temperature": 0.7}}


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_models, memorizing_teacher):
    """Gen-SSD twice (never pruning, and pruning every path at its first chunk), Standard KD and post-hoc."""
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    home = Home.resolve(tmp_path_factory.mktemp("viewer") / "home")
    resources = {"models": ModelsResource(teacher=str(memorizing_teacher), student=str(tiny_models[1])),
                 "data": DataResource(**DEMO_SIZES)}
    trajectories = {**SMALL, "max_problems": 4, "offset": 4}
    rc = {"ops": {"cold_start_student": {"config": {**SMALL, "max_problems": 4, "train": {"epochs": 1}}},
                  "gen_ssd_trajectories": {"config": {**trajectories, "suitability": "none"}},
                  "standard_kd_trajectories": {"config": trajectories},
                  "posthoc_trajectories": {"config": trajectories}}}
    result = run_pipeline(home, "demo", rc, resources, log=lambda _: None, selection=[
        "teacher", "base_student", "problems", "cold_start_student", "gen_ssd_trajectories",
        "standard_kd_trajectories", "posthoc_trajectories"])
    assert result.success
    rc["ops"]["gen_ssd_trajectories"]["config"].update(suitability="absolute", max_ppl=1.01)
    assert run_pipeline(home, "demo", rc, resources, log=lambda _: None, selection=["gen_ssd_trajectories"]).success
    return home


def _rows(home, sql, params=()):
    from gen_ssd_dagster.store import Store

    return Store(home.db_path).trajectory_query(sql, list(params))  # the trajectory tables are Parquet batches


@pytest.fixture(scope="module")
def server(home):
    """`gen-ssd view` in its own process; the URL is read from what it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "gen_ssd_dagster.cli", "--home", str(home.root), "view"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert match, f"gen-ssd view printed no URL: {line!r}"
        url = match.group(1)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"gen-ssd view did not answer on {url}: {proc.stdout.read()}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _get(url: str) -> tuple[int, str]:
    """Status and text (entities unescaped) of one page."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, html.unescape(r.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, html.unescape(exc.read().decode())


def test_bad_input_is_a_message_not_a_trace(server, tmp_path):
    status, body = _get(f"{server}/t/no-such-key")
    assert status == 404 and "no trajectory has the key 'no-such-key'" in body and "Traceback" not in body
    status, body = _get(f"{server}/?end_reason=exploded")
    assert status == 400 and "end_reason='exploded' is not one of" in body
    status, body = _get(f"{server}/?dataset=nowhere")
    assert status == 200 and "No trajectory matches these filters" in body
    status, body = _get(f"{server}/?colour=red")
    assert status == 400 and "unknown filter 'colour'" in body
    # a home without DuckDB: one line from the CLI, exit code 2, nothing created
    empty = tmp_path / "empty_home"
    out = subprocess.run([sys.executable, "-m", "gen_ssd_dagster.cli", "--home", str(empty), "view"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "gen_ssd.duckdb does not exist" in out.stderr and "Traceback" not in out.stderr
    assert not empty.exists()


def test_list_pages_and_filters_count_what_duckdb_holds(server, home):
    [(total,)] = _rows(home, "SELECT count(*) FROM trajectories")
    [(pruned,)] = _rows(home, "SELECT count(*) FROM trajectories WHERE method = 'gen_ssd' AND end_reason = 'pruned'")
    assert 0 < pruned < total
    assert f"{total} trajectories" in _get(f"{server}/")[1]
    body = _get(f"{server}/?method=gen_ssd&end_reason=pruned&sort=ppl&order=asc")[1]
    assert f"{pruned} trajectories" in body and body.count('class="pruned"') == pruned
    with urllib.request.urlopen(f"{server}/distributions.png?method=gen_ssd", timeout=60) as r:
        assert r.headers["content-type"] == "image/png" and r.read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_is_one_self_contained_file(home, tmp_path):
    from gen_ssd_dagster.viewer import export_partition

    out = export_partition(home, "demo", tmp_path / "demo.html")
    html = out.read_text()
    keys = [k for (k,) in _rows(home, "SELECT trajectory_key FROM trajectories WHERE dataset = 'demo'")]
    assert all(f'id="t-{k}"' in html for k in keys)
    assert "data:image/png;base64," in html and "http://" not in html and "src=\"/" not in html


@pytest.mark.timeout(600)
def test_a_person_finds_a_pruned_path_and_its_standard_kd_twin(server, home, tmp_path_factory):
    from test_ui import _chromium  # Debian's Chromium; skips (or fails under CI=true) without it

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    shots = Path(os.environ.get("GEN_SSD_UI_SCREENSHOTS") or tmp_path_factory.mktemp("viewer_shots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {shots}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)

        page.goto(server + "/")
        assert page.locator("table.trajectories tbody tr").count() > 0
        page.screenshot(path=str(shots / "viewer_list.png"))

        # filter to pruned Gen-SSD paths, as a person does: two menus and the button
        page.locator("select[name=method]").select_option("gen_ssd")
        page.locator("select[name=end_reason]").select_option("pruned")
        page.get_by_role("button", name="Show").click()
        page.wait_for_url(re.compile(r"end_reason=pruned"))
        rows = page.locator("table.trajectories tbody tr")
        assert rows.count() > 0
        assert set(page.locator("table.trajectories tbody td:nth-child(5)").all_inner_texts()) == {"pruned"}
        assert set(page.locator("table.trajectories tbody td:nth-child(3)").all_inner_texts()) == {"gen_ssd"}
        page.screenshot(path=str(shots / "viewer_pruned.png"))

        # open one: its candidates' PPLs are DuckDB's, step by step, and the pruned step is marked
        key = rows.first.get_attribute("data-key")
        rows.first.locator("a").click()
        page.wait_for_url(re.compile(f"/t/{key}$"))
        stored = _rows(home, "SELECT step, candidate_index, ppl, chosen FROM candidates WHERE trajectory_key = ?"
                             " ORDER BY step, candidate_index", [key])
        assert stored
        shown = [(int(c.get_attribute("data-candidate")), c.locator(".ppl").inner_text())
                 for c in page.locator(".cand").all()]
        assert shown == [(i, f"{ppl:.2f}") for _, i, ppl, _ in stored]
        last_step = max(s for s, *_ in stored)
        assert page.locator(".step.pruned-step").get_attribute("data-step") == str(last_step)
        assert page.locator(".cand.chosen").count() == sum(1 for *_, chosen in stored if chosen)
        page.screenshot(path=str(shots / "viewer_trajectory.png"), full_page=True)

        # the same problem's Standard KD sample, one click away
        [(problem,)] = _rows(home, "SELECT problem_id FROM trajectories WHERE trajectory_key = ?", [key])
        kd = page.locator("table.trajectories tbody tr", has=page.locator("td:nth-child(3)", has_text="standard_kd"))
        assert kd.count() > 0
        kd_key = kd.first.get_attribute("data-key")
        kd.first.locator("a").click()
        page.wait_for_url(re.compile(f"/t/{kd_key}$"))
        assert page.get_by_role("heading", name=f"standard_kd on demo/{problem}").is_visible()
        [(kd_text,)] = _rows(home, "SELECT text FROM trajectories WHERE trajectory_key = ?", [kd_key])
        assert page.locator(".accepted").inner_text().strip() == kd_text.strip()
        page.screenshot(path=str(shots / "viewer_standard_kd.png"), full_page=True)
        browser.close()


@pytest.mark.timeout(600)
def test_screenshot_script_on_a_home(home, tmp_path):
    """scripts/screenshots.py on this home: the lineage (every upstream asset named) and the viewer
    pages at 1600x1000, with the pruned path; the script itself refuses a page that shows the home's path."""
    from test_ui import _chromium

    _chromium()  # skips (or fails under CI=true) without Chromium
    pytest.importorskip("playwright", reason="the playwright package is not installed (pip install -e '.[test]')")
    from PIL import Image

    out = tmp_path / "images"
    run = subprocess.run([sys.executable, "scripts/screenshots.py", "--home", str(home.root), "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    shots = {p.name: Image.open(p).size for p in out.glob("*.png")}
    assert set(shots) == {"ui_lineage.png", "viewer_list.png", "viewer_trajectory.png"}, shots
    assert shots["viewer_list.png"] == (3200, 2000) and shots["ui_lineage.png"] == (2600, 3600)  # at 2x
    assert shots["viewer_trajectory.png"][0] == 3200
