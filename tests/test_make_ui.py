"""`make ui` runs Dagster on the instance inside $GEN_SSD_HOME, wherever that home is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from test_ui import _free_port, _serving

REPO = Path(__file__).resolve().parents[1]


def _instance_info(url: str) -> str:
    query = json.dumps({"query": "{ instance { info } }"}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=query, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)["data"]["instance"]["info"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_make_ui_keeps_the_instance_under_gen_ssd_home(tmp_path):
    home = tmp_path / "a home elsewhere"
    port = _free_port()
    venv = Path(sys.prefix)  # this interpreter's venv; -o: make must not reinstall it
    env = {**os.environ, "GEN_SSD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "make_ui.log", "w")
    proc = subprocess.Popen(["make", "-s", "ui", f"VENV={venv}", f"UI_PORT={port}", "-o", f"{venv}/.installed"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _serving(url, proc, 300), (tmp_path / "make_ui.log").read_text()[-3000:]
        info = _instance_info(url)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # make, webserver, daemon, code server
        proc.wait(timeout=30)
        log.close()
    instance = home.resolve() / "dagster"
    assert (instance / "dagster.yaml").is_file()
    served = yaml.safe_load(info)  # the instance the webserver runs on
    assert served["local_artifact_storage"]["config"]["base_dir"] == str(instance), info
    assert (instance / "history").is_dir() or (instance / "storage").is_dir(), sorted(os.listdir(instance))
