"""How a question becomes one model's prompt, and which token closes that model's answer.

Teacher and student each see the question through their OWN format: the model's chat template
when its tokenizer has one (an instruct model), else the plain `Question: …\\nAnswer:\\n` that the
embedded demo models were trained on. Only the solution text crosses between the two, so a
Qwen teacher and a Llama student never share token ids or special tokens.

A `Prompter` is built from a tokenizer and the model's `PromptSettings` (fields of `ModelSpec`).
Everything that turns a question into tokens goes through it: teacher sampling, student scoring,
fine-tuning and evaluation, so the student is measured on the text it learns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

from gen_ssd_dagster.core.errors import ConfigError

PLAIN_TEMPLATE = "Question: {question}\nAnswer:\n"
ChatTemplateMode = Literal["auto", "chat", "plain"]
CHAT_TEMPLATE_MODES = get_args(ChatTemplateMode)
FINAL_ANSWER_PREFIX = "#### "  # the demo world's (and GSM8K's) last solution line: "#### N"


@dataclass(frozen=True)
class PromptSettings:
    """How one model is prompted.

    chat_template: "auto" = the tokenizer's chat template when it has one, else the plain format;
        "chat" = the chat template, and an error if the tokenizer has none; "plain" = never.
    system_prompt: a system message (chat) or a first paragraph (plain); None = the template's own
        default (SmolLM2's, for instance, names itself).
    instruction: text appended to every question after a blank line, e.g. "Please reason step by
        step, and put your final answer within \\boxed{}." Part of the model's version, so stored
        work made under another instruction is never reused.
    """

    chat_template: ChatTemplateMode = "auto"
    system_prompt: str | None = None
    instruction: str | None = None

    def validate(self, who: str = "model") -> None:
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise ConfigError(f"{who}_chat_template must be one of {CHAT_TEMPLATE_MODES}, got {self.chat_template!r}")
        for name in ("system_prompt", "instruction"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{who}_{name} must be text, got {type(value).__name__}")

    @property
    def is_default(self) -> bool:
        return self == PromptSettings()

    def fingerprint(self) -> str:
        """Short hash of the settings ('' for the defaults, so existing versions do not move)."""
        if self.is_default:
            return ""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]

    def version_suffix(self) -> str:
        """What a model's version gains from these settings: `+prompt-<hash>`, or '' for the defaults."""
        return f"+prompt-{self.fingerprint()}" if not self.is_default else ""


def format_prompt(question: str) -> str:
    """The plain prompt of a model without a chat template; the solution follows it directly."""
    return PLAIN_TEMPLATE.format(question=question)


def user_text(question: str, settings: PromptSettings) -> str:
    """The question as the model is asked it: with the instruction after a blank line, if any."""
    return f"{question}\n\n{settings.instruction}" if settings.instruction else question


def plain_prompt(question: str, settings: PromptSettings) -> str:
    """The plain format with `settings`' system prompt and instruction (no tokenizer needed)."""
    system = f"{settings.system_prompt}\n\n" if settings.system_prompt else ""
    return system + format_prompt(user_text(question, settings))


def final_answer_line(answer: str) -> str:
    """The last line of a demo-world solution: ``#### 18``."""
    return f"{FINAL_ANSWER_PREFIX}{answer}"


_MARK = "\x00GEN_SSD_COMPLETION\x00"


class Prompter:
    """One model's prompts (text and ids) and the token that ends its answer."""

    def __init__(self, tokenizer, settings: PromptSettings | None = None, who: str = "model"):
        self.tokenizer, self.settings, self.who = tokenizer, settings or PromptSettings(), who
        self.settings.validate(who)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.settings.chat_template == "chat" and not has_template:
            raise ConfigError(f"{who}_chat_template is 'chat' but the {who}'s tokenizer has no chat template;"
                              f" set {who}_chat_template: plain (or auto)")
        self.uses_chat = has_template and self.settings.chat_template != "plain"
        self.end_id = self._end_of_turn_id()
        if self.end_id is None:
            raise ConfigError(f"the {who}'s tokenizer has no eos_token: cannot mark where a solution ends")

    # ------------------------------------------------------------ prompts

    def _messages(self, question: str) -> list[dict]:
        system = [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else []
        return [*system, {"role": "user", "content": user_text(question, self.settings)}]

    def text(self, question: str) -> str:
        """The prompt as text; the model's solution follows it directly."""
        if not self.uses_chat:
            return plain_prompt(question, self.settings)
        return self.tokenizer.apply_chat_template(self._messages(question), tokenize=False, add_generation_prompt=True)

    def ids(self, question: str) -> list[int]:
        """The prompt as token ids."""
        return self.tokenize(self.text(question))

    def ids_of_many(self, questions: Sequence[str]) -> list[list[int]]:
        """`ids` of each question, tokenized as one batch (a call per question cost a training run
        of 36,000 examples 7 s per pass over them)."""
        return self.tokenize_many([self.text(q) for q in questions])

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of a written-out prompt."""
        return self.tokenize_many([prompt])[0]

    def tokenize_many(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of written-out prompts, in one tokenizer call. A chat template writes its own
        special tokens (BOS included), so they are not added a second time; the plain format gets
        the usual ones."""
        if not prompts:
            return []
        return [list(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=not self.uses_chat)["input_ids"]]

    # ------------------------------------------------------------ the end of an answer

    def _end_of_turn_id(self) -> int | None:
        """The token the chat template writes right after the assistant's text (`<|im_end|>`,
        `<|eot_id|>`, …) when it is a special token; else the tokenizer's EOS."""
        eos = self.tokenizer.eos_token_id
        if not self.uses_chat:
            return eos
        try:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARK}], tokenize=False)
        except Exception:  # a template that refuses a bare assistant turn: fall back to EOS
            return eos
        after = rendered.split(_MARK, 1)[1] if _MARK in rendered else ""
        ids = self.tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        return ids[0] if ids and ids[0] in special else eos

    @property
    def stop_ids(self) -> set[int]:
        """Tokens that end a generated answer: the end of the turn and the tokenizer's EOS."""
        return {t for t in (self.end_id, self.tokenizer.eos_token_id) if t is not None}

    def record(self) -> dict:
        """What is stored beside work made with this prompter."""
        template = getattr(self.tokenizer, "chat_template", None) if self.uses_chat else None
        return {"format": "chat" if self.uses_chat else "plain", **asdict(self.settings),
                "template_sha": hashlib.sha256(str(template).encode()).hexdigest()[:12] if template else None}
