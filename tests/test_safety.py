"""Safety defaults: servers on 127.0.0.1, no remote code unless asked, no API key in any log or store."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import data_dir

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- 127.0.0.1 by default

def test_servers_bind_to_localhost_by_default():
    ui = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert re.search(r"dagster dev .*-h 127\.0\.0\.1", ui), ui
    commands = (REPO / "README.md").read_text() + (REPO / "docs" / "pipeline.md").read_text()
    for server in re.findall(r"[^\n`|]*(?:dagster dev|mlflow ui|dagster-webserver|vllm serve)[^\n`|]*", commands):
        if "-h" in server or "--host" in server or "--port" in server:
            assert "127.0.0.1" in server, server
    # nothing the project ships opens a port on every interface
    shipped = [*REPO.glob("gen_ssd_dagster/**/*.py"), *REPO.glob("configs/*"), REPO / "Makefile",
               REPO / "dagster.yaml", REPO / "workspace.yaml", *REPO.glob("benchmarks/*.py"), *REPO.glob("tests/*.py")]
    offenders = [str(p) for p in shipped if p.is_file() and p != Path(__file__)
                 and re.search(r"0\.0\.0\.0|host\s*=\s*['\"]['\"]", p.read_text(errors="replace"))]
    assert offenders == []


# ---------------------------------------------------------------- trust_remote_code

def test_remote_code_is_not_run_unless_asked(tmp_path):
    from gen_ssd_dagster.core.errors import ModelLoadError
    from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer
    from gen_ssd_dagster.defs.resources import ModelsResource

    marker = tmp_path / "remote_code_ran"
    ckpt = tmp_path / "evil"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "evil_llama", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                     "AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (ckpt / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")

    assert ModelSpec("x").trust_remote_code is False
    assert "trust_remote_code" not in ModelsResource.model_fields  # the pipeline cannot turn it on by accident
    with pytest.raises(ModelLoadError, match=str(ckpt)):
        load_model(ModelSpec(str(ckpt)))
    with pytest.raises(ModelLoadError, match=str(ckpt)):
        load_tokenizer(ModelSpec(str(ckpt)))
    assert not marker.exists()


# ---------------------------------------------------------------- API keys

KEY = "sk-test-Zq8vN3secretKEY-1234"
WRONG = "sk-wrong-Pp2secretOTHER-9876"


class TeacherServer(ThreadingHTTPServer):
    """An OpenAI-compatible `/v1/completions` server in front of the real tiny teacher, on
    127.0.0.1, that wants `Bearer KEY` and, like some real servers, echoes a bad key back."""

    def __init__(self, teacher_dir: Path):
        from gen_ssd_dagster.core.engines.transformers_backend import TransformersTeacher
        from gen_ssd_dagster.core.engines.models import ModelSpec

        self.teacher = TransformersTeacher(ModelSpec(str(teacher_dir)))
        self.authorized = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        if got != f"Bearer {KEY}":
            self._send(401, {"error": f"invalid api key: {got}"})
            return False
        self.server.authorized += 1
        return True

    def do_GET(self):
        if self._authorized():
            self._send(200, {"data": [{"id": "tiny-teacher", "root": "tiny-teacher"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorized():
            return
        with self.server.lock:
            session = self.server.teacher.start_prompts([body["prompt"]], body["temperature"], body["top_p"],
                                                body.get("seed", 0))
            [props] = session.propose(body["n"], [body["max_tokens"]], stop_at_newline=bool(body.get("stop")))
        choices = [{"index": i, "text": p.text, "logprobs": {"tokens": ["t"] * p.tokens},
                    "finish_reason": "stop" if p.ended or p.text.endswith("\n") else "length",
                    "stop_reason": None if p.ended else "\n"} for i, p in enumerate(props)]
        self._send(200, {"choices": choices})


@pytest.fixture
def teacher_server(tiny_models):
    server = TeacherServer(tiny_models[0])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run(home, server, student, ops, selection, log):
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    return run_pipeline(Home.resolve(home), "demo", {"ops": ops},
                        {"models": ModelsResource(teacher="tiny-teacher", teacher_url=server.url, student=str(student)),
                         "data": DataResource(demo_train=6, demo_test=2, data_dir=str(data_dir()))},
                        log=log, selection=selection)


@pytest.mark.slow
def test_teacher_api_key_never_reaches_logs_stores_or_errors(tmp_path, tiny_models, teacher_server, monkeypatch,
                                                             capfd):
    from gen_ssd_dagster.core.errors import ConfigError
    from gen_ssd_dagster.core.engines.openai_backend import OpenAITeacher

    home = tmp_path / "home"
    small = {"max_problems": 2, "offset": 0, "batch_size": 2, "num_candidates": 2, "sampling": {"max_new_tokens": 12}}
    ops = {"problems": {"config": {"max_problems": 4}}, "cold_start_student": {"config": {"max_problems": 0}},
           "gen_ssd_trajectories": {"config": {**small, "chunk_tokens": 6, "suitability": "none"}}}
    selection = ["teacher", "base_student", "problems", "cold_start_student", "gen_ssd_trajectories"]
    lines: list[str] = []

    monkeypatch.setenv("GEN_SSD_TEACHER_API_KEY", KEY)
    result = _run(home, teacher_server, tiny_models[1], ops, selection, lines.append)
    assert result.success, lines
    assert teacher_server.authorized > 2  # the key did reach the server, in the header
    from gen_ssd_dagster.store import Home, Store

    assert Store(Home.resolve(home).db_path).query("SELECT count(*) FROM trajectories")[0][0] == 2

    # a wrong key: the server echoes it, the error says what is wrong without repeating it
    monkeypatch.setenv("GEN_SSD_TEACHER_API_KEY", WRONG)
    failed = _run(home, teacher_server, tiny_models[1], ops, ["teacher", "problems"], lines.append)
    assert not failed.success
    errors = [e.step_failure_data.error for e in failed.all_events if e.is_step_failure]
    message = "\n".join((err.cause or err).message + (err.cause or err).to_string() for err in errors)
    assert "rejected the request (401)" in message and "API key" in message and "***" in message, message
    with pytest.raises(ConfigError) as exc:
        OpenAITeacher(teacher_server.url, "tiny-teacher", api_key=WRONG, max_retries=0)
    assert WRONG not in str(exc.value) and "401" in str(exc.value) and exc.value.__cause__ is None
    with pytest.raises(ConfigError) as exc:  # credentials in the URL: refused, and not repeated either
        OpenAITeacher(teacher_server.url.replace("http://", "http://user:hunter2@"), "tiny-teacher", api_key=WRONG,
                      max_retries=0)
    assert "hunter2" not in str(exc.value) and "http://***@127.0.0.1" in str(exc.value)

    captured = capfd.readouterr()
    for secret in (KEY, WRONG, "hunter2"):
        assert secret not in message and secret not in "\n".join(lines)
        assert secret not in captured.out + captured.err
        # nothing persisted anywhere: DuckDB, the Dagster instance (runs, event logs, compute logs),
        # MLflow's store and artifacts, plots
        leaks = [str(p) for p in home.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert leaks == [], secret
    run = result.dagster_run
    assert KEY not in json.dumps(run.run_config, default=str)
