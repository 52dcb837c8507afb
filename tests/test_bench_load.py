"""The busy-machine check: the verdict's arithmetic, the load monitor, and the warning end to end with a faked load."""
from __future__ import annotations

import json
import logging

import pytest
from hydra import compose, initialize_config_module

from specdec.bench import app, metrics, runner

THRESHOLDS = {"margin_per_core": 0.25, "max_calibration_change": 0.2}


def sample(others, load=None):
    return {"loadavg": load if load is not None else others, "own": 0.0, "others": others}


def test_busy_when_other_load_exceeds_the_cores_our_threads_leave_free():
    """Limit = (cores - threads) + 0.25 x cores: 0.5 on 2 cores with 2 threads, 1.5 with 1 thread."""
    quiet = metrics.load_verdict([sample(0.4), sample(0.5)], 0.05, 0.05, 2, 2, **THRESHOLDS)
    assert quiet["others_limit"] == 0.5 and not quiet["busy"] and quiet["reasons"] == []
    busy = metrics.load_verdict([sample(0.1), sample(1.2), sample(0.1)], 0.05, 0.05, 2, 2, **THRESHOLDS)
    assert busy["busy"] and busy["others_max"] == 1.2 and "1.20" in busy["reasons"][0]
    one_thread = metrics.load_verdict([sample(1.2), sample(1.2)], 0.05, 0.05, 2, 1, **THRESHOLDS)
    assert one_thread["others_limit"] == 1.5 and not one_thread["busy"]


def test_busy_when_the_calibration_changes_by_more_than_the_limit():
    """max/min - 1 of the start and end calibrations, either direction; unknown load leaves only this rule."""
    slower = metrics.load_verdict([sample(None, load=None)] * 2, 0.050, 0.065, 2, 2, **THRESHOLDS)
    assert slower["busy"] and slower["calibration_change"] == pytest.approx(0.3) and slower["others_max"] is None
    faster = metrics.load_verdict([sample(0.0)] * 2, 0.065, 0.050, 2, 2, **THRESHOLDS)
    assert faster["busy"] and "calibration" in faster["reasons"][0]
    steady = metrics.load_verdict([sample(0.0)] * 2, 0.050, 0.055, 2, 2, **THRESHOLDS)
    assert not steady["busy"]


def test_monitor_subtracts_its_own_share(monkeypatch):
    """others = load average - our own CPU use as a 60 s moving average; never below zero."""
    monkeypatch.setattr(runner, "read_loadavg", lambda: 3.0)
    monitor = runner.LoadMonitor()
    first = monitor.sample()
    assert first["loadavg"] == 3.0 and 0.0 <= first["own"] <= 1.0
    assert first["others"] == pytest.approx(3.0 - first["own"])
    monkeypatch.setattr(runner, "read_loadavg", lambda: 0.0)
    assert monitor.sample()["others"] == 0.0
    monkeypatch.setattr(runner, "read_loadavg", lambda: None)
    assert monitor.sample()["others"] is None


def run_tiny(tmp_path, monkeypatch, loadavg, calibrations):
    """The benchmark in-process on the tiny target (2 methods, 2 prompts, 2 repeats) with a faked load."""
    calibration = iter(calibrations)
    monkeypatch.setattr(runner, "read_loadavg", lambda: loadavg)
    monkeypatch.setattr(runner, "calibrate", lambda: next(calibration))
    overrides = ["target=tiny", "drafter=prompt_lookup", "repeats=2", "dataset.categories=[qa,math]",
                 "max_new_tokens=6", "progress=false"]
    with initialize_config_module(config_module="specdec.configs", version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
        baseline = compose("bench", overrides=overrides + ["+method=hf_generate"]).method
    return app.run(cfg, {"hf_generate": baseline, "specdec_prompt_lookup": cfg.drafter}, tmp_path)


@pytest.mark.parametrize("loadavg, calibrations, busy", [(0.0, [0.05, 0.05], False), (8.0, [0.05, 0.05], True),
                                                         (0.0, [0.05, 0.08], True)])
def test_busy_warning_in_log_markdown_and_json(tmp_path, monkeypatch, caplog, loadavg, calibrations, busy):
    """A faked high load (or a slower end calibration) warns in the log, results.md and results.json; low does not."""
    with caplog.at_level(logging.INFO, logger="specdec.bench"):
        doc = run_tiny(tmp_path, monkeypatch, loadavg, calibrations)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["load"]["busy"] is doc["load"]["busy"] is busy
    assert saved["load"]["samples"] == 2 * 2 + 2  # before, after each of 4 rounds, after
    assert [saved["load"]["calibration_before"], saved["load"]["calibration_after"]] == calibrations
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "BUSY MACHINE" in r.getMessage()]
    assert len(warnings) == busy
    markdown = (tmp_path / "results.md").read_text()
    assert ("Warning: the machine was busy" in markdown) is busy
    assert ("Verdict: **busy**." in markdown) is busy
    if busy:
        assert all(f"> - {reason}" in markdown for reason in saved["load"]["reasons"])
    else:
        assert any("machine quiet" in r.getMessage() for r in caplog.records)
