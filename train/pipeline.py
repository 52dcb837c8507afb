"""``python -m specdec.train.pipeline target=... drafter=...``: every stage of making a drafter, in order.

Stages (each one of the ``specdec.train`` commands, run as a child process with the target's and the
size overrides, so that a stage can also be rerun by hand with the command the log prints):

1. ``corpus``: corpus v2 from text that installs with pip, decontaminated (skipped with ``corpus=FILE``);
2. ``answers``: the target's own greedy answers to ``sizes.prompts`` prompt-only records;
3. ``teacher``: teacher forcing over the corpus and the answers (hidden states, top-32 laws);
4. ``train``: the drafter's trainer (``chimera``, ``draft`` or ``medusa``), exported with its card;
5. ``bench``: the artifact against plain decoding on the benchmark's prompts, one line.

A stage whose output is complete is skipped, so an interrupted run resumes where it stopped; the long
stages resume mid-way themselves (answers by record id, teacher shards, training checkpoints).  Each
shows a progress bar with its ETA.  A base model (a tokenizer without a chat template) gets
continuation-style data: every chat becomes a plain ``User: ... / Assistant:`` transcript
(:func:`specdec.chat.transcript`), the form in which ``specdec`` and its benchmark prompt such a
model, and the model's own continuation of that transcript is its answer.

``--plan`` prints the stages, their sizes and the time each should take on this machine, from a short
measurement (:mod:`specdec.train.plan`), and runs nothing.  The artifact's card gets a ``pipeline``
section: every stage's command and seconds, and the bench line.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig

log = logging.getLogger("specdec.train.pipeline")

DRAFTERS = {"chimera": "chimera", "draft_model": "draft", "medusa": "medusa"}  # drafter -> trainer module


@dataclass
class Stage:
    name: str
    command: list[str] | None  # a child process; None: runs in this process (the bench)
    done: Callable[[], bool]
    size: str  # what it makes, for the plan


def target_overrides(argv: list[str]) -> list[str]:
    """The command line with ``target=<directory or Hub id>`` spelt as the ``hf`` target config.

    ``target=smollm2`` (a config in ``configs/target/``) stays as it is; anything else becomes
    ``target=hf target.name=<its last path part> target.load.name_or_path=<it>``."""
    configs = {p.stem for p in _config_dir().glob("target/*.yaml")}
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "target" and value and value not in configs:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(value.rstrip("/")).name).strip("-").lower() or "model"
            out += ["target=hf", f"target.name={name}", f"target.load.name_or_path={value}"]
        else:
            out.append(arg)
    return out


def _config_dir() -> Path:
    import specdec.configs

    return Path(specdec.configs.__file__).parent


def export_dir(cfg: DictConfig) -> Path:
    folder = cfg.export_dir or f"artifacts/{DRAFTERS[cfg.drafter_kind]}-{cfg.target.name}"
    return Path(hydra.utils.to_absolute_path(str(folder)))


def stages(cfg: DictConfig, base: list[str]) -> list[Stage]:
    """The five stages for ``cfg``; ``base`` holds the target and work_dir overrides every child gets."""
    work = Path(cfg.work_dir)
    s = cfg.sizes
    corpus = str(cfg.corpus) if cfg.corpus else str(work / "corpus" / "corpus.jsonl")
    run = [sys.executable, "-m"]
    trainer = DRAFTERS[cfg.drafter_kind]
    train_sizes = [f"vocab_size={s.vocab_size}", f"optim.steps={s.steps}", f"export_dir={export_dir(cfg)}"]
    if s.batch_size:
        train_sizes.append(f"optim.batch_size={s.batch_size}")
    if trainer == "medusa":
        train_sizes.append(f"max_positions={s.positions}")
    out = [
        Stage("corpus", None if cfg.corpus else run + ["specdec.train.corpus_build", *base, *cfg.overrides.corpus],
              lambda: bool(cfg.corpus) and Path(corpus).is_file() or (work / "corpus" / "card.json").is_file(),
              "corpus v2" if not cfg.corpus else f"given: {corpus}"),
        Stage("answers", run + ["specdec.train.answers", *base, f"corpus={corpus}", f"limit={s.prompts}",
                                f"max_new_tokens={s.answer_tokens}", f"batch_size={s.answer_batch}",
                                *cfg.overrides.answers],
              lambda: _answers_done(corpus, work / "answers" / "answers.jsonl", int(s.prompts)),
              f"{s.prompts} prompts x up to {s.answer_tokens} tokens"),
        Stage("teacher", run + ["specdec.train.teacher", *base, f"corpus={corpus}", f"max_positions={s.positions}",
                                f"valid_max_positions={s.valid_positions}", *cfg.overrides.teacher],
              lambda: (work / "teacher" / "teacher.json").is_file(),
              f"{s.positions:,} train + {s.valid_positions:,} held-out positions"),
        Stage("train", run + [f"specdec.train.{trainer}", *base, *train_sizes, *cfg.overrides.train],
              lambda: _trained(export_dir(cfg), int(s.steps)),
              f"{trainer}, {s.steps} steps, {s.vocab_size}-token head"),
        Stage("bench", None, lambda: _benched(cfg),
              f"{cfg.bench.per_category} prompt(s) per category x {cfg.bench.max_new_tokens} tokens x "
              f"{cfg.bench.repeats} repeats"),
    ]
    return out


def _answers_done(corpus: str, answers: Path, limit: int) -> bool:
    from .answers import load_answers, prompt_records
    from .corpus_build import load_corpus

    if not Path(corpus).is_file() or not answers.is_file():
        return False
    done = load_answers(answers)
    return all(r["id"] in done for r in prompt_records(load_corpus(corpus), limit))


def _trained(folder: Path, steps: int) -> bool:
    card = folder / "card.json"
    return card.is_file() and json.loads(card.read_text()).get("training", {}).get("steps", 0) >= steps


def _benched(cfg: DictConfig) -> bool:
    """A bench line newer than the artifact's weights (the card itself is rewritten after the bench)."""
    weights = list(export_dir(cfg).glob("*.safetensors"))
    return _bench_file(cfg).is_file() and bool(weights) and \
        _bench_file(cfg).stat().st_mtime >= max(w.stat().st_mtime for w in weights)


def ran_stages(cfg: DictConfig) -> Path:
    """The run's record: each stage the pipeline ran, with its command and seconds."""
    return Path(cfg.work_dir) / "pipeline" / f"{DRAFTERS[cfg.drafter_kind]}.json"


def _bench_file(cfg: DictConfig) -> Path:
    return Path(cfg.work_dir) / "pipeline" / f"bench-{DRAFTERS[cfg.drafter_kind]}.json"


def run_bench(cfg: DictConfig) -> dict:
    """The exported drafter against plain decoding, interleaved, greedy; written beside the run's other outputs."""
    import torch
    from hydra.utils import instantiate

    from specdec import drafters

    from .measure import speeds_against_plain

    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    model, tokenizer = instantiate(cfg.target.load)
    folder = export_dir(cfg)
    makers = {"artifact": lambda: drafters.load(folder, model), "prompt_lookup": drafters.PromptLookup}
    speeds = speeds_against_plain(model, tokenizer, makers, int(cfg.bench.per_category),
                                  int(cfg.bench.max_new_tokens), int(cfg.bench.repeats))
    line = {**speeds["artifact"], "prompt_lookup_speedup": speeds["prompt_lookup"]["speedup"]}
    path = _bench_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(line, indent=2) + "\n", encoding="utf-8")
    return line


def record(cfg: DictConfig, done: dict[str, dict], bench: dict | None) -> None:
    """The card's ``pipeline`` section (each stage's command and seconds, the bench line) and, unless
    ``tree_choice`` measured them already, the speeds :func:`specdec.drafters.choose` reads."""
    card_path = export_dir(cfg) / "card.json"
    card = json.loads(card_path.read_text())
    card["pipeline"] = {"command": "python -m specdec.train.pipeline " + " ".join(map(shlex.quote, sys.argv[1:])),
                        "stages": done, "bench": bench}
    if bench is not None:
        measured = card.setdefault("measured", {})
        measured.setdefault("speed_over_plain", bench["speedup"])
        measured.setdefault("prompt_lookup_over_plain", bench["prompt_lookup_speedup"])
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def bench_summary(line: dict) -> str:
    return (f"{line['speedup']:.2f}x plain decoding ({line['tokens_per_step']:.2f} tokens/step; prompt lookup "
            f"{line['prompt_lookup_speedup']:.2f}x; {line['prompts']} prompts x {line['max_new_tokens']} tokens, "
            f"greedy; outputs {'equal' if line['equal'] else 'DIFFERENT'})")


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/pipeline")
def main(cfg: DictConfig) -> None:
    if cfg.drafter_kind not in DRAFTERS:
        raise ValueError(f"drafter={cfg.drafter_kind!r}: choose one of {sorted(DRAFTERS)}")
    from hydra.core.hydra_config import HydraConfig

    given = list(HydraConfig.get().overrides.task)
    base = [o for o in given if o.split("=", 1)[0].lstrip("+~").startswith("target")] + [f"work_dir={cfg.work_dir}"]
    todo = stages(cfg, base)
    if cfg.plan:
        from .plan import print_plan

        print_plan(cfg, todo)
        return
    state_path = ran_stages(cfg)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(state_path.read_text()) if state_path.is_file() else {}
    bench = None
    for i, stage in enumerate(todo, 1):
        if stage.done():
            log.info("[%d/%d] %s: complete, skipped", i, len(todo), stage.name)
            continue
        if stage.command is None and stage.name == "corpus":
            raise FileNotFoundError(f"corpus={cfg.corpus} does not exist")
        shown = " ".join(shlex.quote(c) for c in (["python", *stage.command[1:]] if stage.command else ["(bench)"]))
        log.info("[%d/%d] %s (%s): %s", i, len(todo), stage.name, stage.size, shown)
        started = time.perf_counter()
        if stage.command is not None:
            result = subprocess.run(stage.command)
            if result.returncode:
                raise SystemExit(f"stage {stage.name} failed (exit {result.returncode}); rerun the pipeline to resume")
        else:
            bench = run_bench(cfg)
        done[stage.name] = {"command": shown, "seconds": round(time.perf_counter() - started, 1)}
        state_path.write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
    if bench is None and _bench_file(cfg).is_file():
        bench = json.loads(_bench_file(cfg).read_text())
    record(cfg, done, bench)
    log.info("%s: %s", export_dir(cfg), bench_summary(bench))


def cli() -> None:
    """``--plan``, ``drafter=`` (a config group's name elsewhere) and ``target=<directory>`` are read before Hydra."""
    argv = sys.argv[1:]
    plan = "--plan" in argv
    argv = [f"drafter_kind={a.split('=', 1)[1]}" if a.startswith("drafter=") else a for a in argv if a != "--plan"]
    argv = target_overrides(argv) + (["plan=true"] if plan else [])
    sys.argv = [sys.argv[0], *argv]
    main()


if __name__ == "__main__":
    cli()
