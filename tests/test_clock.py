"""Device-correct timing: every time the runtime reads comes from one clock that synchronises accelerators."""
import re
from pathlib import Path
from types import SimpleNamespace

import torch
from conftest import tiny_llama

import specdec.clock
from specdec import drafters
from specdec.clock import Clock
from specdec.config import DecodeConfig
from specdec.engine import Decoding, decode
from specdec.sampling import seeded_randomness
from specdec.schedule import FixedBatches


def test_the_clock_synchronises_an_accelerator_before_each_reading_and_never_the_cpu():
    calls = []
    cuda = Clock("cuda", synchronize=calls.append)  # constructing a device needs no GPU
    readings = [cuda() for _ in range(3)]
    assert len(calls) == 3 and all(d.type == "cuda" for d in calls) and readings == sorted(readings)
    cpu = Clock("cpu", synchronize=lambda d: calls.append("cpu"))
    cpu(), cpu()
    assert "cpu" not in calls and not cpu.synchronizes


def test_the_engine_reads_every_time_through_its_clock(monkeypatch):
    """A decode on a pretend accelerator clock: one synchronisation per reading, for every reading it takes."""
    readings, synced = [], []
    fake = SimpleNamespace(perf_counter=lambda: readings.append(len(readings)) or float(len(readings)))
    monkeypatch.setattr(specdec.clock, "time", fake)
    model = tiny_llama(32)
    ids = torch.tensor([[3, 4, 5, 3, 4]])
    job = Decoding(model, drafters.PromptLookup(2), DecodeConfig(max_new_tokens=6, eos_token_id=[], speculation=2),
                   seeded_randomness(0, "cpu"), clock=Clock("cuda", synchronize=synced.append))
    decode(job, FixedBatches([([0], ids, torch.ones_like(ids))]))
    assert readings and len(synced) == len(readings)
    assert job.stats.verify_seconds > 0 and job.stats.steps >= 1


def test_no_runtime_module_reads_the_time_past_the_clock():
    """Only specdec/clock.py calls perf_counter: the engine, the profiler and the policies use a Clock."""
    root = Path(specdec.clock.__file__).parent
    readers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if re.search(r"perf_counter|time\.time\(", p.read_text(encoding="utf-8")) and p.name != "clock.py"]
    assert readers == []
