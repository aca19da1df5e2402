"""A seeded world of small multi-step arithmetic word problems, for the embedded demo.

Each problem is kept as a structured `Spec` (a start count and 2-3 additions or subtractions of
1..MAX_OPERAND, every value staying in 0..MAX_VALUE) and its solutions are rendered from it in
three styles that differ in how learnable they are for a small model:

* "stepwise":  one operation per line, the running value first ("Step 2: 8 - 2 = 6"): each line
               copies one number from the previous line and one from the question (its k-th
               sentence opens with the k-th connector), then does one small fact. Easiest to learn.
* "collapsed": all operations in one expression on one line ("Total: 5 + 3 - 2 = 6"), so the
               arithmetic of several steps happens at once, with no intermediate results.
* "verbose":   an opener, a restatement, wordy steps, random asides with random numbers, and
               sometimes a wrong partial result that gets corrected: long, full of unpredictable
               tokens, and still right in the end.
* "meandering": a reasoning teacher's usual trace (docs/reasoning-world.md): filler opener, each
               operation drawn independently as a concise stepwise line or one of four roundabout
               forms (wordy, counting one at a time, a slip caught at once, a re-check), asides
               with random numbers, a closing line. Concise steps sit inside long mixed traces, so
               a chunk-level selector can find them where a trace-level one cannot.

Gen-SSD exploits exactly this spread: a teacher trained on the mixture proposes all three, and the
student should keep the ones it can learn from. Each style opens with its own word ("Step",
"Total", a verbose opener), so the style is visible in the first chunk, and a greedy teacher picks
the most frequent style of its training mix rather than whichever first digit is likeliest.

Questions are short and keep the numbers in the order they are used; names and items are few, and
the solutions never restate them except in the verbose style: the teacher's budget goes to the
arithmetic, not to copying words.
"""

from __future__ import annotations

import json
import os
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.engines.prompts import final_answer_line
from gen_ssd_dagster.core.types import Problem

STYLES = ("stepwise", "collapsed", "verbose", "meandering")
SPLITS = ("train", "validation", "test")

NAMES = {"Mia": "she", "Tom": "he", "Ana": "she", "Leo": "he", "Sam": "he", "Ivy": "she"}
ITEMS = ("apples", "coins", "cards", "books", "shells", "eggs")
MAX_VALUE = 20  # every running value stays in 0..MAX_VALUE
MAX_OPERAND = 5

# (operator, phrase). "{n}" is the number.
PHRASES = (("+", "buys {n} more"), ("+", "finds {n} more"), ("-", "gives away {n}"), ("-", "loses {n}"))
CONNECTORS = ("First", "Then", "Last")  # the k-th operation's sentence opens with the k-th word

_VERBOSE_OPENERS = ("Let me think about this carefully.", "Okay, let us read the problem again.",
                    "Hmm, this one needs some care.", "Alright, I will go slowly here.")
_VERBOSE_STEPS = ("First", "Then", "Last")
_ASIDES = ("Note that {r} is not relevant here.", "By the way, {r} {o} would be too many.",
           "I should not confuse {i} with {o}.", "The number {r} does not appear in the problem.",
           "Let me double check: {a} {k} {n} = {b}. Yes.", "So far so good, {b} {i}.")

# The meandering style's parts (docs/reasoning-world.md gives the shares and why).
_MEANDER_OPENERS = ("Okay, let me read the problem again.", "Hmm, let me think about this step by step.",
                    "Alright, let me work through this.", "Let me start from the beginning.",
                    "Okay, so we need to track the count.", "Hmm, this looks simple, but let me be careful.")
_MEANDER_ASIDES = ("Note that {r} is not relevant here.", "The number {r} does not appear in the problem.",
                   "By the way, {r} would be far too many {i}.")
_MEANDER_CLOSINGS = ("So the answer is {b}.", "That gives {b} {i} in the end.")
P_OPENER, P_RESTATE, P_CONCISE_STEP, P_ASIDE, P_CLOSING = 0.8, 0.5, 0.35, 0.35, 0.5


@dataclass(frozen=True)
class Op:
    kind: str  # "+" or "-"
    n: int
    phrase: str  # the question's wording, e.g. "gives away 3"


@dataclass(frozen=True)
class Spec:
    """One problem as data: every solution style is rendered from these same operations."""

    name: str
    item: str
    start: int
    ops: tuple[Op, ...]

    @property
    def pronoun(self) -> str:
        return NAMES[self.name]

    def values(self) -> list[int]:
        """Running totals: the start, then the value after each operation."""
        out = [self.start]
        for op in self.ops:
            out.append(_apply(out[-1], op))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def question(self) -> str:
        parts = [f"{self.name} has {self.start} {self.item}."]
        parts += [f"{CONNECTORS[i]} {self.pronoun} {op.phrase}." for i, op in enumerate(self.ops)]
        parts.append(f"How many {self.item} now?")
        return " ".join(parts)


def _apply(value: int, op: Op) -> int:
    return value + op.n if op.kind == "+" else value - op.n


def random_spec(rng: random.Random) -> Spec:
    """Draw one problem: 2-3 operations of 1..MAX_OPERAND, values within 0..MAX_VALUE."""
    name = rng.choice(sorted(NAMES))
    item = rng.choice(ITEMS)
    value = start = rng.randint(2, 12)
    ops = []
    for _ in range(rng.randint(2, 3)):
        kinds = [k for k, ok in (("+", value < MAX_VALUE), ("-", value > 0)) if ok]
        kind = rng.choice(kinds)
        room = MAX_VALUE - value if kind == "+" else value
        n = rng.randint(1, min(MAX_OPERAND, room))
        phrase = rng.choice([p for k, p in PHRASES if k == kind])
        op = Op(kind, n, phrase.format(n=n))
        ops.append(op)
        value = _apply(value, op)
    return Spec(name, item, start, tuple(ops))


def split_of(question: str) -> str:
    """Which split a question belongs to, by a stable hash: splits can never share a question."""
    bucket = zlib.crc32(question.encode()) % 20
    return "test" if bucket < 3 else "validation" if bucket == 3 else "train"


def generate_specs(n: int, seed: int, split: str) -> list[Spec]:
    """`n` distinct problems of `split`, the same for the same (seed, split)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    rng = random.Random(f"demo-{seed}-{split}")  # str seeds hash stably across processes
    specs, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(specs) == n:
            break
        spec = random_spec(rng)
        q = spec.question
        if q not in seen and split_of(q) == split:
            seen.add(q)
            specs.append(spec)
    if len(specs) < n:
        raise ConfigError(f"could not draw {n} distinct {split} problems (got {len(specs)})")
    return specs


def generate_problems(n: int, seed: int, split: str) -> list[Problem]:
    """`n` demo problems with gold answers and stepwise solutions; ids like ``demo-train-000123``."""
    return [
        Problem(dataset="demo", problem_id=f"demo-{split}-{i:06d}", question=s.question,
                gold=str(s.answer), solution=render_solution(s, "stepwise"))
        for i, s in enumerate(generate_specs(n, seed, split))
    ]


def spec_from_question(question: str) -> Spec:
    """Recover the `Spec` of a demo question (the inverse of `Spec.question`)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.?])\s+", question.strip())]
    head = re.fullmatch(r"(\w+) has (\d+) (\w+)\.", sentences[0])
    if head is None:
        raise ConfigError(f"not a demo question: {question!r}")
    name, start, item = head.group(1), int(head.group(2)), head.group(3)
    ops = []
    for sentence in sentences[1:-1]:
        for kind, phrase in PHRASES:
            m = re.search(re.escape(phrase).replace(r"\{n\}", r"(\d+)") + r"\.$", sentence)
            if m:
                ops.append(Op(kind, int(m.group(1)), m.group(0)[:-1]))
                break
        else:
            raise ConfigError(f"not a demo question (cannot read {sentence!r}): {question!r}")
    return Spec(name, item, start, tuple(ops))


def render_solution(problem: Spec | Problem, style: str, rng: random.Random | None = None) -> str:
    """A worked solution in `style`, ending in ``#### N``. Only "verbose" and "meandering" use `rng`."""
    spec = problem if isinstance(problem, Spec) else spec_from_question(problem.question)
    values = spec.values()
    if style == "stepwise":
        lines = [f"Step {i}: {a} {op.kind} {op.n} = {b}"
                 for i, (a, b, op) in enumerate(zip(values, values[1:], spec.ops), start=1)]
    elif style == "collapsed":
        expr = " ".join([str(spec.start), *(f"{op.kind} {op.n}" for op in spec.ops)])
        lines = [f"Total: {expr} = {spec.answer}"]
    elif style == "verbose":
        lines = _verbose_lines(spec, values, rng or random.Random(0))
    elif style == "meandering":
        lines = _meandering_lines(spec, values, rng or random.Random(0))
    else:
        raise ConfigError(f"style must be one of {STYLES}, got {style!r}")
    return "\n".join([*lines, final_answer_line(str(spec.answer))])


def _verbose_lines(spec: Spec, values: list[int], rng: random.Random) -> list[str]:
    other = rng.choice([i for i in ITEMS if i != spec.item])
    lines = [rng.choice(_VERBOSE_OPENERS), f"{spec.name} has {spec.start} {spec.item} at the start."]
    wrong_at = rng.randrange(len(spec.ops)) if rng.random() < 0.6 else -1
    for i, (a, b, op) in enumerate(zip(values, values[1:], spec.ops)):
        step = f"{_VERBOSE_STEPS[i]} {spec.pronoun} {op.phrase}, so {a} {op.kind} {op.n} = "
        if i == wrong_at:  # a slip, caught at once: the final answer stays right
            slip = max(0, b + rng.choice((-3, -2, -1, 1, 2, 3)))
            slip = slip if slip != b else b + 1
            lines.append(f"{step}{slip}. Wait, that is wrong. {a} {op.kind} {op.n} = {b}.")
        else:
            lines.append(f"{step}{b}.")
        if rng.random() < 0.5:
            aside = rng.choice(_ASIDES)
            lines.append(aside.format(r=rng.randint(10, 99), o=other, i=spec.item, a=a, k=op.kind, n=op.n, b=b))
    lines.append(f"So {spec.name} has {spec.answer} {spec.item} now.")
    return lines


def _meandering_lines(spec: Spec, values: list[int], rng: random.Random) -> list[str]:
    lines = []
    if rng.random() < P_OPENER:
        lines.append(rng.choice(_MEANDER_OPENERS))
    if rng.random() < P_RESTATE:
        lines.append(f"{spec.name} starts with {spec.start} {spec.item}.")
    detours = ("wordy", "counting", "slip", "recheck")
    forms = ["concise" if rng.random() < P_CONCISE_STEP else rng.choice(detours) for _ in spec.ops]
    if not lines and set(forms) == {"concise"}:  # a meandering trace has at least one detour
        forms[0] = rng.choice(detours)
    for i, (a, b, op, form) in enumerate(zip(values, values[1:], spec.ops, forms)):
        lines.append(_meandering_step(i + 1, a, b, op, form, spec, rng))
        if rng.random() < P_ASIDE:
            lines.append(rng.choice(_MEANDER_ASIDES).format(r=rng.randint(10, 99), i=spec.item))
    if rng.random() < P_CLOSING:
        lines.append(rng.choice(_MEANDER_CLOSINGS).format(b=spec.answer, i=spec.item))
    return lines


def _meandering_step(k: int, a: int, b: int, op: Op, form: str, spec: Spec, rng: random.Random) -> str:
    concise = f"Step {k}: {a} {op.kind} {op.n} = {b}"
    if form == "concise":
        return concise
    if form == "wordy":
        return f"{CONNECTORS[k - 1]} {spec.pronoun} {op.phrase}, so {a} {op.kind} {op.n} = {b}."
    if form == "counting":  # one unit at a time: n <= MAX_OPERAND steps
        unit = 1 if op.kind == "+" else -1
        hops = [f"{a + j * unit} {op.kind} 1 = {a + (j + 1) * unit}" for j in range(op.n)]
        return f"{a} {op.kind} {op.n}: {', '.join(hops)}."
    if form == "slip":  # a wrong result, caught at once: the final answer stays right
        slip = max(0, b + rng.choice((-2, -1, 1, 2)))
        slip = slip if slip != b else b + 1
        return f"{concise[:-len(str(b))]}{slip}. Wait, that is wrong. {a} {op.kind} {op.n} = {b}."
    inverse = "-" if op.kind == "+" else "+"
    return f"{concise}. Let me check: {b} {inverse} {op.n} = {a}. Yes."


_STEP_LINE = re.compile(r"Step \d+: \d+ [+-] \d+ = \d+")


def classify_style(solution: str) -> str:
    """The style of a solution ("other" when none fits): collapsed and verbose by their opening
    line, stepwise when every line before the answer is a plain step, meandering when it opens with
    one of its fillers or has any other line."""
    lines = [line.strip() for line in solution.strip().split("\n")]
    body = [line for line in lines if line and not line.startswith("####")]
    if not body:
        return "other"
    if body[0].startswith("Total:"):
        return "collapsed"
    if body[0] in _VERBOSE_OPENERS:
        return "verbose"
    if all(_STEP_LINE.fullmatch(line) for line in body):
        return "stepwise"
    if body[0] in _MEANDER_OPENERS or body[0].startswith("Step 1:") or " starts with " in body[0] \
            or re.match(r"(First|\d+ [+-] \d+:)", body[0]):
        return "meandering"
    return "other"


def write_demo_dataset(directory: str | Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` in GSM8K's form (question, answer, id)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        path = directory / f"{split}.jsonl"
        tmp = path.with_suffix(f".jsonl.tmp{os.getpid()}")  # whole file or nothing
        with tmp.open("w") as f:
            for p in generate_problems(n, seed, split):
                f.write(json.dumps({"question": p.question, "answer": p.solution, "id": p.problem_id}) + "\n")
        tmp.replace(path)
        paths[split] = path
    return paths
