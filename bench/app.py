"""The Hydra app behind ``python -m specdec.bench``: configs in, results files and a summary line out.

Which methods run:

- ``drafter=X`` given: the baseline and ``specdec_X`` (so ``-m drafter=a,b`` sweeps drafters);
- else ``methods`` (default ``all``): the baseline, ``specdec_<x>`` for every ``configs/drafter/<x>.yaml``
  and every other ``configs/method/<m>.yaml``; or a list of those names.

A method's config is the run's own config recomposed with that drafter or method selected, so
``${target...}`` interpolations and the command line's overrides apply to it as to the run.
"""
from __future__ import annotations

import datetime
import logging
import os
import platform
import sys
import time

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import specdec

from . import metrics, report, runner
from .methods import build_method, build_specdec, speculation_policy
from .prompts import encode, load_prompts

log = logging.getLogger("specdec.bench")
SPECDEC_PREFIX = "specdec_"


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="bench")
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    check_config(cfg)
    _quiet_transformers()
    hydra_cfg = HydraConfig.get()
    drafter_choice = hydra_cfg.runtime.choices.get("drafter")
    loader = GlobalHydra.instance().config_loader()
    names = select_methods(cfg.methods, drafter_choice, cfg.baseline,
                           loader.get_group_options("drafter"), loader.get_group_options("method"))
    configs = {name: _method_config(name, cfg, drafter_choice, hydra_cfg) for name in names}
    optional = set(names[1:]) if drafter_choice is None and cfg.methods == "all" else set()
    document = run(cfg, configs, hydra_cfg.runtime.output_dir, started, optional)
    print(report.markdown(document), flush=True)
    print(report.summary_line(document), flush=True)


def check_config(cfg: DictConfig) -> None:
    """The run-wide settings, before anything loads: a bad one is named at once, not after the target's load."""
    for key in ("max_new_tokens", "repeats"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    for key in ("temperature", "top_p", "top_k"):
        if isinstance(cfg.get(key), (bool, str)) or not isinstance(cfg.get(key), (int, float)):
            raise ValueError(f"{key} must be a number, got {cfg.get(key)!r}")
    if not isinstance(cfg.get("do_sample"), bool):
        raise ValueError(f"do_sample must be true or false, got {cfg.get('do_sample')!r}")
    if cfg.do_sample:  # DecodeConfig's own checks, without a model
        specdec.DecodeConfig(do_sample=True, temperature=float(cfg.temperature), top_k=int(cfg.top_k),
                             top_p=float(cfg.top_p), seed=cfg.seed)
    speculation_policy(cfg.get("speculation"))


def select_methods(methods, drafter_choice: str | None, baseline: str,
                   drafter_options: list[str], method_options: list[str]) -> list[str]:
    """Method names to run, the baseline first.  See the module docstring for the rules."""
    known = [SPECDEC_PREFIX + d for d in sorted(drafter_options, key=lambda d: (d != "none", d))]
    known += sorted(method_options)
    if baseline not in method_options:
        raise ValueError(f"baseline {baseline!r} is not a config in method/: {sorted(method_options)}")
    if drafter_choice is not None:
        wanted = [SPECDEC_PREFIX + drafter_choice]
    elif methods == "all":
        wanted = known
    elif isinstance(methods, str):
        raise ValueError(f"methods must be 'all' or a list of names, got {methods!r}")
    else:
        wanted = list(methods)
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {known}")
    return [baseline] + [m for m in dict.fromkeys(wanted) if m != baseline]


def _method_config(name: str, cfg: DictConfig, drafter_choice, hydra_cfg) -> DictConfig:
    """The config node that builds ``name``: the run's config recomposed with it selected."""
    if name.startswith(SPECDEC_PREFIX) and name[len(SPECDEC_PREFIX):] == drafter_choice:
        return cfg.drafter
    overrides = [o for o in hydra_cfg.overrides.task if not _is_drafter_override(o)]
    if name.startswith(SPECDEC_PREFIX):
        drafter = name[len(SPECDEC_PREFIX):]
        return hydra.compose(hydra_cfg.job.config_name, overrides=overrides + [f"drafter={drafter}"]).drafter
    composed = hydra.compose(hydra_cfg.job.config_name, overrides=overrides + [f"+method={name}"])
    return composed.method


def _is_drafter_override(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "drafter" or key.startswith("drafter.")


def run(cfg: DictConfig, method_configs: dict[str, DictConfig], out_dir: str, started: float | None = None,
        optional: set[str] = frozenset()) -> dict:
    """Load the target, build the methods, time them and write the result files; return the document.

    ``started`` (perf_counter) is when the job began: ``wall_seconds`` counts from it.  Methods
    in ``optional`` whose trained artifact is missing are skipped (and listed as such); any
    other missing artifact is an error.
    """
    started = time.perf_counter() if started is None else started
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    monitor = runner.LoadMonitor()  # load and calibration before anything heavy of ours runs
    monitor.sample()
    calibration_before = runner.calibrate()
    timing = {}
    t0 = time.perf_counter()
    model, tokenizer = instantiate(cfg.target.load)
    timing["load_seconds"] = time.perf_counter() - t0
    log.info("loaded %s in %.1f s", cfg.target.name, timing["load_seconds"])
    decoding = _decoding(cfg, model, tokenizer)

    methods, skipped = [], {}
    for name, node in method_configs.items():
        t1 = time.perf_counter()
        try:
            if name.startswith(SPECDEC_PREFIX):
                methods.append(build_specdec(name, node, model, decoding, cfg.get("speculation")))
            else:
                methods.append(build_method(name, node, model, decoding))
        except Exception as error:  # instantiate wraps the drafter's own error
            missing = error if isinstance(error, FileNotFoundError) else error.__cause__
            if name not in optional or not isinstance(missing, FileNotFoundError):
                raise
            skipped[name] = str(missing)
            log.warning("skipping %s: %s", name, missing)
            continue
        log.info("built %s in %.1f s", name, time.perf_counter() - t1)
    timing["build_seconds"] = time.perf_counter() - t0 - timing["load_seconds"]
    prompts = load_prompts(cfg.dataset.path, cfg.dataset.categories, cfg.dataset.per_category)
    encoded = [encode(tokenizer, p.messages) for p in prompts]
    repeats = int(cfg.repeats)
    log.info("%d methods x %d prompts x %d repeats, max_new_tokens=%d: %s", len(methods), len(prompts), repeats,
             cfg.max_new_tokens, ", ".join(m.name for m in methods))

    t0 = time.perf_counter()
    timing["warmup_by_method"] = runner.warm_up(methods, model,
                                                encode(tokenizer, OmegaConf.to_container(cfg.warmup.messages)),
                                                cfg.warmup.max_new_tokens, progress=cfg.progress)
    timing["warmup_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = runner.run_prompts(methods, model, prompts, encoded, cfg.baseline, greedy=not cfg.do_sample,
                                 repeats=repeats, progress=cfg.progress, monitor=monitor)
    timing["run_seconds"] = time.perf_counter() - t0
    load = _check_load(cfg, monitor, calibration_before)
    timing["wall_seconds"] = time.perf_counter() - started

    names = [m.name for m in methods]
    tables = metrics.summarize(records, names, cfg.baseline)
    document = {
        "schema_version": report.SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": cfg.target.name,
        "baseline": cfg.baseline,
        "methods": names,
        "repeats": repeats,
        "spread": report.SPREAD,
        "skipped": skipped,
        "decoding": {k: getattr(decoding, k) for k in decoding.__dataclass_fields__
                     if k not in ("speculation", "typical_acceptance")},  # per-method settings
        "dataset": {"path": cfg.dataset.path, "categories": list(tables["by_category"]),
                    "per_category": cfg.dataset.per_category, "prompts": len(prompts)},
        "environment": _environment(),
        "timing": timing,
        "load": load,
        "output_dir": str(out_dir),
        "overall": tables["overall"],
        "by_category": tables["by_category"],
        "records": records,
        "method_configs": {n: OmegaConf.to_container(c, resolve=True) for n, c in method_configs.items()},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    paths = report.write_all(document, out_dir)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return document


def _decoding(cfg: DictConfig, model, tokenizer) -> specdec.DecodeConfig:
    """Budget, sampling and stopping rule shared by every method (eos from the model's config)."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    pad = getattr(gen, "pad_token_id", None)
    pad = pad if pad is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    if isinstance(pad, list):
        pad = pad[0]
    return specdec.DecodeConfig(max_new_tokens=int(cfg.max_new_tokens), do_sample=bool(cfg.do_sample),
                    temperature=float(cfg.temperature), top_k=int(cfg.top_k), top_p=float(cfg.top_p),
                    eos_token_id=eos, pad_token_id=pad, seed=cfg.seed)


def _check_load(cfg: DictConfig, monitor: runner.LoadMonitor, calibration_before: float) -> dict:
    """Sample the load and calibrate once more after the run; judge it, and warn in the log if busy."""
    monitor.sample()
    load = metrics.load_verdict(monitor.samples, calibration_before, runner.calibrate(), os.cpu_count() or 1,
                                torch.get_num_threads(), float(cfg.load.margin_per_core),
                                float(cfg.load.max_calibration_change))
    if load["busy"]:
        log.warning("BUSY MACHINE, timings not trustworthy: %s", "; ".join(load["reasons"]))
    else:
        log.info("machine quiet: other processes' load at most %s (limit %.2f), calibration change %s",
                 _fmt(load["others_max"], ".2f"), load["others_limit"], _fmt(load["calibration_change"], ".0%"))
    return load


def _fmt(value, spec: str) -> str:
    return "unknown" if value is None else f"{value:{spec}}"


def _environment() -> dict:
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "num_threads": torch.get_num_threads()}


def _quiet_transformers() -> None:
    """Keep the console to the progress bar and our log: no weight-loading bars or deprecations."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
