"""Final-answer extraction and equivalence grading (math-verify), bounded in time in any thread.

Extraction is ours (a few documented rules, versioned in `GRADER_VERSION`); the equivalence itself
is math-verify's. math-verify can spend unbounded time in sympy (e.g. comparing
``10^{10^{10^{10}}}``), and its own timeout is signal.alarm: it raises outside the main thread,
it cancels other SIGALRM users (pytest-timeout), and it cannot interrupt a long call inside C.
So every comparison runs in a small persistent worker process that the caller kills when it
overruns: the bound holds in any thread, and a timeout counts as incorrect (and is logged).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from importlib.metadata import version as _pkg_version
from pathlib import Path

log = logging.getLogger(__name__)

# Bump when extraction or wrapping rules change: stored scores record which grader made them.
EXTRACTION_RULES_VERSION = "1"
GRADER_VERSION = f"extract-v{EXTRACTION_RULES_VERSION}+math-verify-{_pkg_version('math-verify')}"

_THOUSANDS = re.compile(r"(?<![\d.,])(-?\d{1,3}(?:,\d{3})+)(?![\d,])")
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _strip_thousands(s: str) -> str:
    """`1,234,567` -> `1234567`; leaves tuples like `(1, 2)` and `1,2` alone."""
    return _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s.replace("{,}", ","))


def extract_gsm8k(text: str) -> str | None:
    """What follows the last `####` on its line, cleaned (`$`, thousands commas, final period)."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    ans = text[idx + 4 :].split("\n", 1)[0].replace("$", "").strip().rstrip(".").strip()
    return _strip_thousands(ans) or None


def closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` that closes the `{` just before `start` (nested braces counted), or None."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


def boxes(text: str, opener: re.Pattern = _BOXED):
    """(match of `opener` (`\\boxed{` or `\\fbox{`), index of its closing brace) for every closed
    box, in order."""
    for m in opener.finditer(text):
        end = closing_brace(text, m.end())
        if end is not None:
            yield m, end


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces allowed."""
    for m, end in reversed(list(boxes(text))):
        content = text[m.end():end].strip()
        if content:
            # Only a whole-content thousands number is unambiguous inside LaTeX.
            if re.fullmatch(r"-?\d{1,3}(?:(?:,|\{,\})\d{3})+(?:\.\d+)?", content):
                content = re.sub(r"\{,\}|,", "", content)
            return content
        # empty: try an earlier box (an unbalanced one is not a box)
    return None


def extract_last_number(text: str) -> str | None:
    """The last number in the text (int, decimal, negative; thousands commas removed)."""
    nums = NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None


def extract_answer(text: str) -> str | None:
    """Final answer of a completion or reference solution: `#### N`, else last `\\boxed{}`,
    else the last number. None when nothing is found."""
    if not text:
        return None
    for rule in (extract_gsm8k, extract_boxed, extract_last_number):
        ans = rule(text)
        if ans:
            return ans
    return None


def _wrap(ans: str) -> str:
    """Give math-verify one LaTeX math span to parse (it extracts from `$...$`)."""
    ans = ans.strip()
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    return f"${ans}$"


# ---------------------------------------------------------------- the worker process side


def _worker_main() -> None:
    """Serve JSON requests {"gold", "pred"} on stdin; answer {"ok": bool} on the saved stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol stream
    import math_verify.grader as mvg
    import math_verify.parser as mvp
    from math_verify import parse, verify

    # Our parent bounds the time; silence math-verify's "timeout disabled" warning.
    mvg.TIMEOUT_WARNING_SHOWN = mvp.TIMEOUT_WARNING_SHOWN = True
    parse("$1$", parsing_timeout=None)  # warm the lazy imports before saying ready
    out.write('{"ready": true}\n')
    for line in sys.stdin:
        req = json.loads(line)
        try:
            gold = parse(_wrap(req["gold"]), parsing_timeout=None)
            pred = parse(_wrap(req["pred"]), parsing_timeout=None)
            ok = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        except Exception:  # math-verify raises on odd inputs; that is a wrong answer, not a crash
            ok = False
        out.write(json.dumps({"ok": ok}) + "\n")


# ---------------------------------------------------------------- the caller side


class _Worker:
    """One grading subprocess. Not thread-safe: the pool lends each to one caller at a time."""

    def __init__(self, startup_timeout_s: float = 60.0) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # so the child imports this package
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gen_ssd_dagster.core.data.grading import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        if self._read(startup_timeout_s) is None:
            self.kill()
            raise RuntimeError("the math-verify grading worker did not start")

    def _read(self, timeout_s: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def ask(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        """True/False from math-verify, or None on timeout or a dead worker."""
        try:
            self.proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
            self.proc.stdin.flush()
            reply = self._read(timeout_s)
        except (OSError, ValueError):
            return None
        return None if reply is None else bool(reply["ok"])

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


_pool: list[_Worker] = []
_pool_lock = threading.Lock()
_pool_pid = os.getpid()
_MAX_IDLE = 2  # idle workers kept warm; concurrent callers beyond that start (and drop) their own


def _borrow() -> _Worker:
    global _pool, _pool_pid
    with _pool_lock:
        if os.getpid() != _pool_pid:  # forked: the parent's pipes are not ours to use
            _pool, _pool_pid = [], os.getpid()
        if _pool:
            return _pool.pop()
    return _Worker()


def _give_back(w: _Worker) -> None:
    with _pool_lock:
        if os.getpid() == _pool_pid and len(_pool) < _MAX_IDLE and w.proc.poll() is None:
            _pool.append(w)
            return
    w.kill()


@atexit.register
def shutdown_workers() -> None:
    """Stop the idle grading workers (called at exit; safe to call any time)."""
    with _pool_lock:
        workers = _pool[:] if os.getpid() == _pool_pid else []
        _pool.clear()
    for w in workers:
        w.kill()


def is_correct(predicted: str | None, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether `predicted` equals `gold` under math-verify (`27.0`==`27`, `\\frac{14}{3}`==`14/3`).

    Both are final answers (see `extract_answer`). Bounded by `timeout_s` of comparison time in any
    thread; a timeout is logged and counts as incorrect.
    """
    if predicted is None or not str(predicted).strip() or not str(gold).strip():
        return False
    # No shortcut for identical text: self-grading a gold must prove math-verify can read it.
    predicted, gold = str(predicted), str(gold)
    w = _borrow()
    t0 = time.monotonic()
    ok = w.ask(gold, predicted, timeout_s)
    if ok is None:
        died = w.proc.poll()
        w.kill()  # it may still be computing; a fresh worker serves the next call
        what = f"grading worker died (exit {died})" if died is not None else "grading timed out"
        log.warning(
            "%s after %.1fs (counted incorrect): gold=%.80r predicted=%.80r",
            what, time.monotonic() - t0, gold, predicted,
        )
        return False
    _give_back(w)
    return ok


def grade(completion: str, gold: str, timeout_s: float = 5.0) -> tuple[str | None, bool]:
    """Extract the final answer of `completion` and grade it against `gold`."""
    pred = extract_answer(completion)
    return pred, is_correct(pred, gold, timeout_s)
