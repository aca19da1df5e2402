"""What a person watches during long work: progress as sentences, and bars in a terminal.

The library reports progress as dicts (`fine_tune`: step, total_steps, loss, tokens_per_s; the
methods and `evaluate`: done, total). `sentence` turns one into a line a person reads, e.g.
"teacher: 1240/5000 steps (24.8%), loss 2.314, 5300 tokens/s". `Reporter` is the callable to hand
to the library: in a terminal (its stream is a TTY) it draws a tqdm bar per piece of work with rate
and time left; either way it passes a sentence to `log` now and then (first report, every
`every_s` seconds, last report), which is what the Dagster event log and a CI log get.
No dict ever reaches `log`.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from gen_ssd_dagster.core.types import Log


def _counts(info: dict) -> tuple[int, int]:
    if "step" in info:
        return int(info["step"]), int(info["total_steps"])
    return int(info["done"]), int(info["total"])


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def sentence(what: str, info: dict, unit: str = "steps", left_s: float | None = None) -> str:
    """One progress report as a sentence: "<what>: <done>/<total> <unit> (<pct>%)", then the loss
    and token rate of a training report, then the time left when known."""
    done, total = _counts(info)
    parts = [f"{what}: {done}/{total} {unit} ({100 * done / max(total, 1):.1f}%)"]
    if info.get("loss") is not None:
        parts.append(f"loss {info['loss']:.3f}")
    if info.get("tokens_per_s") is not None:
        parts.append(f"{info['tokens_per_s']:.0f} tokens/s")
    if left_s is not None and done < total:
        parts.append(f"about {_duration(left_s)} left")
    return ", ".join(parts)


class Reporter:
    """A progress callable for `fine_tune`, `evaluate` and the methods (see the module docstring).

    what: the name of the work ("cold_start", "demo models"); a report's "stage" or "method" key
        is appended to it, and each distinct name gets its own bar.
    log: where sentences go (`context.log.info`, `print`); None = written as lines to `stream`,
        and only when no bar is drawn there.
    stream: the terminal, or not: a bar is drawn only if `stream.isatty()` (default sys.stderr).
    every_s: least seconds between two sentences of one piece of work (its first and last always go).
    """

    def __init__(self, what: str, log: Log | None = None, unit: str = "steps", stream: IO[str] | None = None,
                 every_s: float = 30.0, bars: bool | None = None):
        self.what, self.log, self.unit, self.every_s = what, log, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.bars = _isatty(self.stream) if bars is None else bars
        self._bars: dict = {}
        self._started: dict[str, tuple[float, int]] = {}  # name -> (time, count) of its first report
        self._said: dict[str, float] = {}  # name -> time of its last sentence

    def __call__(self, info: dict) -> None:
        label = " ".join(str(x) for x in (self.what, info.get("stage"), info.get("method")) if x)
        done, total = _counts(info)
        now = time.monotonic()
        first_time, first_done = self._started.setdefault(label, (now, done))
        rate = (done - first_done) / (now - first_time) if now > first_time and done > first_done else None
        if self.bars:
            self._bar(label, info, done, total)
        last = done >= total
        if label not in self._said or last or now - self._said[label] >= self.every_s:
            self._said[label] = now
            text = sentence(label, info, self.unit, (total - done) / rate if rate else None)
            self._say(text)
        if last:
            self.close(label)

    def _bar(self, label: str, info: dict, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(label)
        if bar is None:  # a resumed run starts part-way: the bar starts there too
            self._bars[label] = tqdm(total=total, initial=done, desc=label, unit=self.unit.rstrip("s") or "it",
                                     file=self.stream, dynamic_ncols=True, leave=True)
            return
        if info.get("loss") is not None:
            bar.set_postfix(loss=f"{info['loss']:.3f}", refresh=False)
        bar.update(done - bar.n)

    def _say(self, text: str) -> None:
        if self.log is None:
            if not self.bars:
                self.stream.write(text + "\n")
                self.stream.flush()
            return
        if self._bars:  # lift the bars off the terminal while the line is written, then redraw them
            from tqdm import tqdm

            with tqdm.external_write_mode(file=self.stream):
                self.log(text)
        else:
            self.log(text)

    def close(self, label: str | None = None) -> None:
        """Finish the bar of `label` (None: every bar)."""
        for name in [label] if label else list(self._bars):
            bar = self._bars.pop(name, None)
            if bar is not None:
                bar.close()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
