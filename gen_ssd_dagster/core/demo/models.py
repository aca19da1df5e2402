"""The demo's teacher and base student: small transformers the project builds itself, offline.

* Teacher: a ~1M-parameter Llama fine-tuned on demo problems whose solutions are drawn from the
  mixture of styles (stepwise / collapsed / verbose), so its samples are mostly right and visibly
  diverse in style: the raw material Gen-SSD selects from.
* Base student: a much smaller Llama with its OWN tokenizer (a smaller, almost character-level
  BPE), so the pipeline really has to score teacher text under the student's tokenizer. It is
  pretrained briefly as a plain LM on question texts only: it knows the words and numbers of
  the problems but has never seen a solution, so its accuracy starts near 0 and its perplexities
  of the teacher's styles are not all uniform noise (as a random model's would be).

Both are saved with `save_pretrained` and loaded back through `core/engines/models.py`, like any checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gen_ssd_dagster.core.demo.world import STYLES, generate_specs, render_solution
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.engines.prompts import format_prompt
from gen_ssd_dagster.core.types import Progress
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune, save_atomically

log = logging.getLogger(__name__)

MARKER = "demo_models.json"  # written last: its presence with the same config means "done"
BUILD_VERSION = 4  # bump when the demo world's text or this recipe changes: old caches then rebuild


@dataclass(frozen=True)
class DemoModelsConfig:
    """How the demo models are built. Defaults take about 3.5 minutes on 2 quiet CPU cores.

    The teacher sees ~2.5M tokens (36k problems of ~70 tokens, one pass): with the small demo
    world that makes it mostly right (see benchmarks/demo_models_quality.py). A peak rate of 4e-3
    was already on the edge (a run stalled on a loss plateau); 3e-3 with 50 warmup steps is smooth.

    data:
        seed: seeds problems, styles, weights and shuffling.
        n_teacher_problems: training problems of the teacher (one solution each).
        style_weights: probabilities of stepwise / collapsed / verbose / meandering in the teacher's
            data (demo_world.STYLES). The default is the easy world; configs/reasoning_teacher.yaml
            is the reasoning-teacher world of docs/reasoning-world.md.
        n_student_questions: question texts the base student is pretrained on.
    tokenizers (byte-level BPE, digits split one by one so arithmetic is learnable):
        teacher_vocab / student_vocab: vocabulary sizes (at most: the small demo text may run out
            of merges a little earlier); they must differ.
    models (Llama):
        teacher_hidden / teacher_layers / teacher_heads; student_hidden / student_layers / student_heads.
    training:
        teacher_epochs, student_epochs, learning_rate (peak), warmup_steps, batch_size,
        bf16: autocast where the CPU has native bf16. Off: for models this narrow bf16 was slower,
            1.4x the float32 step time for the teacher on a 2-core AVX-512/AMX Xeon
            (benchmarks/training_precision.py, 2026-12-07), and in float32 every CPU builds the
            same models (an AVX2 CPU never had bf16). Until 2026-12-07 it was on: the demo models
            of earlier measurements on AVX-512 machines were built in bf16.
    """

    seed: int = 0
    n_teacher_problems: int = 36000
    style_weights: tuple[float, float, float, float] = (0.5, 0.25, 0.25, 0.0)
    n_student_questions: int = 2000
    teacher_vocab: int = 512
    student_vocab: int = 320
    teacher_hidden: int = 128
    teacher_layers: int = 4
    teacher_heads: int = 4
    student_hidden: int = 96
    student_layers: int = 2
    student_heads: int = 2
    teacher_epochs: float = 1.0
    student_epochs: float = 2.0
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    batch_size: int = 16
    bf16: bool = False

    def validate(self) -> None:
        if self.n_teacher_problems < 1 or self.n_student_questions < 1:
            raise ConfigError("n_teacher_problems and n_student_questions must be >= 1")
        if len(self.style_weights) != len(STYLES) or min(self.style_weights) < 0 or sum(self.style_weights) <= 0:
            raise ConfigError(f"style_weights must be {len(STYLES)} non-negative weights, got {self.style_weights}")
        if self.teacher_vocab == self.student_vocab:
            raise ConfigError("teacher_vocab and student_vocab must differ: the demo needs two tokenizers")
        for side in ("teacher", "student"):
            if getattr(self, f"{side}_hidden") % getattr(self, f"{side}_heads"):
                raise ConfigError(f"{side}_hidden must be divisible by {side}_heads")


@dataclass(frozen=True)
class DemoModels:
    teacher: Path
    student: Path
    seconds: float  # time spent building (0.0 when taken from the cache)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE over `texts` with digits split one by one, and <bos>/<eos>/<pad>.

    Each digit is its own pre-token, the first digit of a number keeping its leading space
    (" 12" -> " 1", "2"). `Digits(individual_digits=True)` would also split the space off, and a
    bare " " before every number made copying a number from the question ambiguous (the token
    after "buys" was always " "): the teacher then failed to copy operands.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, nothing lost
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def init_model(tokenizer, hidden: int, layers: int, heads: int, seed: int, out_dir: Path) -> Path:
    """Save a randomly initialised Llama and its tokenizer: the starting point of `fine_tune`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return save_atomically(LlamaForCausalLM(config), tokenizer, out_dir)


def teacher_examples(config: DemoModelsConfig) -> list[tuple[str, str]]:
    """(question, solution) pairs, each solution in a style drawn from `style_weights`."""
    rng = random.Random(f"teacher-{config.seed}")
    specs = generate_specs(config.n_teacher_problems, config.seed + 10_000, "train")
    return [
        (s.question, render_solution(s, rng.choices(STYLES, config.style_weights)[0], rng))
        for s in specs
    ]


def _cached(out_dir: Path, config: DemoModelsConfig) -> DemoModels | None:
    marker = out_dir / MARKER
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    paths = DemoModels(out_dir / "teacher", out_dir / "student", 0.0)
    same = saved.get("config") == json.loads(json.dumps(dataclasses.asdict(config)))
    same = same and saved.get("version") == BUILD_VERSION
    if same and (paths.teacher / "config.json").is_file() and (paths.student / "config.json").is_file():
        return paths
    return None


def build_demo_models(
    out_dir: str | Path,
    config: DemoModelsConfig = DemoModelsConfig(),
    progress: Progress | None = None,
) -> DemoModels:
    """Build (or take from `out_dir`, when built there with the same config) the demo models.

    Writes ``out_dir/teacher`` and ``out_dir/student`` (save_pretrained checkpoints) and then the
    marker ``out_dir/demo_models.json`` holding the config. `progress` gets the trainer's reports
    with a "stage" key ("teacher" or "student").
    """
    config.validate()
    out_dir = Path(out_dir)
    if (hit := _cached(out_dir, config)) is not None:
        log.info("demo models found in %s", out_dir)
        return hit
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)  # a rebuild in progress is not "done"

    examples = teacher_examples(config)
    questions = [s.question for s in generate_specs(config.n_student_questions, config.seed + 20_000, "train")]
    # Both tokenizers learn from the same text (prompts and every style of solution), so both
    # can encode anything the teacher says; they differ in vocabulary size, hence in merges.
    rng = random.Random(f"tokenizer-{config.seed}")
    extra = generate_specs(500, config.seed + 30_000, "train")
    # Meandering text joins the corpus only when the teacher writes it, so the three-style worlds
    # keep the tokenizers (and models) they were measured with.
    styles = [st for st, w in zip(STYLES, config.style_weights) if st != "meandering" or w > 0]
    corpus = [format_prompt(q) for q, _ in examples] + [render_solution(s, style, rng) for s in extra for style in styles]
    train_cfg = dict(learning_rate=config.learning_rate, batch_size=config.batch_size, bf16=config.bf16,
                     seed=config.seed, warmup_steps=config.warmup_steps, max_length=384)

    tokens = {}
    for side, epochs, data in (("teacher", config.teacher_epochs, examples),
                               ("student", config.student_epochs, [("", q) for q in questions])):  # no prompt: plain text
        tokenizer = train_tokenizer(corpus, getattr(config, f"{side}_vocab"))
        init = init_model(tokenizer, getattr(config, f"{side}_hidden"), getattr(config, f"{side}_layers"),
                          getattr(config, f"{side}_heads"), config.seed, out_dir / f".{side}-init")
        report = (lambda info, side=side: progress({"stage": side, **info})) if progress else None
        # The whole set shuffled at once (36,000 teacher examples, past the default buffer): the
        # order the demo models were built and measured with.
        result = fine_tune(init, data, out_dir / side, TrainConfig(epochs=epochs, shuffle_buffer=len(data), **train_cfg),
                           report)
        shutil.rmtree(init, ignore_errors=True)
        tokens[f"{side}_tokens"] = result.train_tokens
        log.info("%s: %d steps, %d tokens, loss %.3f, %.0f s", side, result.steps, result.train_tokens,
                 result.final_loss, result.seconds)

    seconds = time.perf_counter() - start
    marker = {"config": dataclasses.asdict(config), "version": BUILD_VERSION, "seconds": round(seconds, 1), **tokens}
    (out_dir / f"{MARKER}.tmp").write_text(json.dumps(marker, indent=2))
    (out_dir / f"{MARKER}.tmp").replace(out_dir / MARKER)
    return DemoModels(out_dir / "teacher", out_dir / "student", seconds)
