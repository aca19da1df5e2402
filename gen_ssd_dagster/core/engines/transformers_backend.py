"""The transformers backend: teacher sampling and student scoring on a model loaded in this process.

Both keep each path's KV cache between steps (see `kv_batch.KVBatch`), so the accepted prefix is
encoded once, not once per step, and the K candidates share it.
"""

from __future__ import annotations

import torch

from gen_ssd_dagster.core.errors import DataError
from gen_ssd_dagster.core.engines.interfaces import Proposal, Score, ScoresWholeTexts
from gen_ssd_dagster.core.engines.kv_batch import KVBatch, full_attention_only
from gen_ssd_dagster.core.engines.models import ModelSpec, context_size, load_model, load_tokenizer, model_version
from gen_ssd_dagster.core.engines.prefix_scoring import student_pieces
from gen_ssd_dagster.core.engines.prompt_fit import prompt_overflows
from gen_ssd_dagster.core.engines.prompts import Prompter


def check_prompt_lengths(model, ids: list[list[int]], prompts: list[str], who: str) -> None:
    """A prompt longer than the model's context is bad input, not a reason to run out of memory:
    say which one (its start) and how long it is, before anything is computed."""
    for i, why in prompt_overflows(ids, context_size(model), who).items():
        raise DataError(f"prompt {i + 1} of the batch is {why} (max_position_embeddings): {prompts[i][:80]!r}..."
                        " Shorten or drop that question.")


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row, with temperature and nucleus (top-p) sampling; greedy at temperature 0."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def _accept_rows(chosen: list[int | None], k: int) -> list[int]:
    """Rows of a K-way fanned-out batch to keep: the chosen candidate of each surviving path."""
    return [i * k + c for i, c in enumerate(chosen) if c is not None]


def generation_stop_ids(model, prompter: Prompter) -> set[int]:
    """Every token that ends a turn: the prompter's end of turn and EOS, plus the ids the model's
    generation config lists (Llama 3 and Qwen instruct models name several)."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    listed = [listed] if isinstance(listed, int) else list(listed or [])
    return prompter.stop_ids | set(listed)


class TransformersTeacher:
    """Teacher sampling with transformers, batched over paths x candidates, KV cache kept."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model = load_model(spec)
        self.tokenizer = load_tokenizer(spec)
        self.prompter = Prompter(self.tokenizer, spec.prompt_settings, "teacher")
        self.stop_ids = generation_stop_ids(self.model, self.prompter)
        self.version = model_version(spec)
        # Token ids whose text holds a newline: where a chunk may be snapped to a step boundary.
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        newline_ids = [i for i, piece in enumerate(vocab) if piece and ("\n" in piece or "Ċ" in piece)]
        self.newline_ids = set(newline_ids)

    def start(self, questions: list[str], temperature: float, top_p: float,
              seed: int | list[int]) -> "_TeacherSession":
        """A session over `questions`, each prompted through the teacher's own format."""
        return self.start_prompts([self.prompter.text(q) for q in questions], temperature, top_p, seed)

    def start_prompts(self, prompts: list[str], temperature: float, top_p: float,
                      seed: int | list[int]) -> "_TeacherSession":
        """A session over prompts already written out (a server that receives raw text)."""
        batch = self.encode(prompts)
        return _TeacherSession(self, batch, temperature, top_p, _generators(seed, len(prompts), batch.device))

    def too_long(self, questions: list[str]) -> dict[int, str]:
        """Index -> why, for each question whose prompt does not fit the teacher's context."""
        return prompt_overflows([self.prompter.tokenize(self.prompter.text(q)) for q in questions],
                                context_size(self.model), "teacher")

    def encode(self, prompts: list[str]) -> KVBatch:
        ids = [self.prompter.tokenize(p) for p in prompts]
        check_prompt_lengths(self.model, ids, prompts, "teacher")
        return KVBatch(self.model, ids, self.tokenizer.pad_token_id)


def _generators(seed: int | list[int], n: int, device) -> list[torch.Generator]:
    """One generator per path. A shared seed gives every path the SAME generator, drawn from in one
    call for the whole batch (as sessions always sampled); one seed per path gives each its own, so
    its draws do not depend on the paths beside it."""
    if isinstance(seed, int):
        return [torch.Generator(device=device).manual_seed(seed)] * n
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seed]


class _TeacherSession:
    def __init__(self, teacher: TransformersTeacher, batch: KVBatch, temperature: float, top_p: float,
                 gens: list[torch.Generator]):
        self.teacher, self.batch = teacher, batch
        self.temperature, self.top_p = temperature, top_p
        self.gens = gens  # one per path; sampling runs where the logits are
        self.k = 1

    def add(self, questions: list[str], seeds: list[int]) -> None:
        """New paths after the live ones, each drawing from its own seed."""
        self.batch.merge(self.teacher.encode([self.teacher.prompter.text(q) for q in questions]))
        self.gens += _generators(list(seeds), len(questions), self.batch.device)

    def _sample(self, live: torch.Tensor) -> torch.Tensor:
        """The next token of every row [paths x K]. Rows of a path draw from the path's generator,
        and only while one of them is live: its stream never depends on how long other paths run."""
        logits, k = self.batch.last_logits, self.k
        if self.temperature <= 0 or all(g is self.gens[0] for g in self.gens):
            return _sample(logits, self.temperature, self.top_p, self.gens[0] if self.gens else None).cpu()
        token = torch.zeros(len(live), dtype=torch.long)
        for i, gen in enumerate(self.gens):
            rows = slice(i * k, (i + 1) * k)
            if live[rows].any():
                token[rows] = _sample(logits[rows], self.temperature, self.top_p, gen).cpu()
        return token

    @torch.no_grad()
    def propose(self, k: int, max_tokens: list[int], stop_at_newline: bool) -> list[list[Proposal]]:
        tok = self.teacher.tokenizer
        self.k = k
        n_paths = len(self.batch)
        self.batch.select(torch.arange(n_paths).repeat_interleave(k))
        rows = n_paths * k
        budget = torch.tensor(max_tokens).repeat_interleave(k)
        # Never past the context: a path that fills it stops there (recorded as a length cap).
        limit = context_size(self.teacher.model)
        context_full = [False] * rows
        if limit:
            room = (limit - self.batch.next_pos).cpu()
            context_full = (room <= budget).tolist()
            budget = torch.minimum(budget, room.clamp(min=0))
        live = budget > 0
        generated = [[] for _ in range(rows)]
        ended = [False] * rows
        stop_ids = self.teacher.stop_ids
        for _ in range(int(budget.max()) if rows else 0):
            if not live.any():
                break
            token = self._sample(live)  # on the loop's side (CPU)
            token = torch.where(live, token, torch.full_like(token, tok.pad_token_id))
            mask = live.long()
            self.batch.extend(token[:, None], mask[:, None])
            for r in torch.nonzero(live).squeeze(1).tolist():
                t = int(token[r])
                generated[r].append(t)
                if t in stop_ids:
                    ended[r] = True
                    live[r] = False
                elif len(generated[r]) >= budget[r] or (stop_at_newline and t in self.teacher.newline_ids):
                    live[r] = False
        proposals = []
        for r in range(rows):
            text_ids = [t for t in generated[r] if t not in stop_ids]
            full = context_full[r] and not ended[r] and len(generated[r]) >= budget[r]
            proposals.append(Proposal(tok.decode(text_ids), len(generated[r]), ended[r], full))
        return [proposals[i * k:(i + 1) * k] for i in range(n_paths)]

    def accept(self, chosen: list[int | None]) -> None:
        self.batch.select(_accept_rows(chosen, self.k))
        self.gens = [g for g, c in zip(self.gens, chosen) if c is not None]
        self.k = 1


class TransformersScorer(ScoresWholeTexts):
    """The student's view: summed NLL of candidate text under its own tokenizer, KV cache kept."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model = load_model(spec)
        self.tokenizer = load_tokenizer(spec)
        self.prompter = Prompter(self.tokenizer, spec.prompt_settings, "student")
        self.version = model_version(spec)

    def start(self, questions: list[str]) -> "_ScorerSession":
        """A session over `questions`, each prompted through the student's own format."""
        return _ScorerSession(self, self.encode(questions))

    def too_long(self, questions: list[str]) -> dict[int, str]:
        """Index -> why, for each question whose prompt does not fit the student's context."""
        return prompt_overflows([self.prompter.ids(q) for q in questions], context_size(self.model), "student")

    def encode(self, questions: list[str]) -> KVBatch:
        ids = [self.prompter.ids(q) for q in questions]
        check_prompt_lengths(self.model, ids, questions, "student")
        return KVBatch(self.model, ids, self.tokenizer.pad_token_id)


class _ScorerSession:
    """Each path is one cache row; its K candidates are scored in that row side by side
    (`KVBatch.score_branches`), so a step costs the candidates, not K copies of the prefix. Models
    with sliding-window layers fan each path out into K rows instead (`KVBatch.select`)."""

    def __init__(self, scorer: TransformersScorer, batch: KVBatch):
        self.scorer, self.batch, self.k = scorer, batch, 1
        self.in_one_row = full_attention_only(scorer.model)

    def add(self, questions: list[str]) -> None:
        """New paths after the live ones."""
        self.batch.merge(self.scorer.encode(questions))

    @torch.no_grad()
    def score(self, candidates: list[list[str]], ends: list[list[bool]]) -> list[list[Score]]:
        pieces = [[student_pieces(self.scorer.prompter, text, end) for text, end in zip(texts, text_ends)]
                  for texts, text_ends in zip(candidates, ends)]
        self._check_context(pieces)
        if self.in_one_row:
            logprobs = self.batch.score_branches(pieces)
            return [[Score(float(-lp.sum()), len(lp)) for lp in row] for row in logprobs]
        return self._score_fanned_out(pieces)

    def _score_fanned_out(self, pieces: list[list[list[int]]]) -> list[list[Score]]:
        n_paths, k = len(pieces), len(pieces[0])
        self.k = k
        self.batch.select(torch.arange(n_paths).repeat_interleave(k))
        ids = [p for row in pieces for p in row]
        width = max(1, max(len(t) for t in ids))
        padded = torch.full((len(ids), width), self.scorer.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(padded)
        for r, t in enumerate(ids):
            padded[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[r, : len(t)] = 1
        logprobs = self.batch.next_token_logprobs(padded, mask)
        flat = [Score(float(-logprobs[r].sum()), len(ids[r])) for r in range(len(ids))]
        return [flat[i * k:(i + 1) * k] for i in range(n_paths)]

    def accept(self, chosen: list[int | None]) -> None:
        if self.in_one_row:
            self.batch.keep_branches(chosen)
            return
        self.batch.select(_accept_rows(chosen, self.k))
        self.k = 1

    def _check_context(self, pieces: list[list[list[int]]]) -> None:
        """A path that outgrows the student's context is a setting to change, not a kernel error."""
        limit = context_size(self.scorer.model)
        if not limit:
            return
        longest = torch.tensor([max([len(t) for t in row] + [0]) for row in pieces])
        lengths = self.batch.next_pos.cpu() + longest
        if len(lengths) and int(lengths.max()) > limit:
            raise DataError(
                f"a trajectory reached {int(lengths.max())} student tokens (prompt + solution), more than the "
                f"student's context of {limit} (max_position_embeddings): lower max_new_tokens (the teacher's "
                f"length cap) or use a student with a longer context")
