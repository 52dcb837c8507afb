"""A step-latency model fitted by profiling: how long a step takes for a batch, a draft size and a context.

Two regressions (SmartSpec, Liu et al. 2024; the features of its authors' vLLM fork):

* the target's verification, in batch size B, tokens verified per row n + 1 (n draft nodes) and
  context C per row, with T = B*(n+1) tokens in all:
  ``[1, B, T, B*C, [n > 0], [T > R], [T > R]*T, [T > 2]]`` (linear) or those plus the squares and
  pairwise products of B, T and B*C (quadratic).  The indicators are there because CPU matrix
  products change kernels: specdec's linear layers multiply up to R rows one way (the machine's
  :class:`~specdec.target.kernels.Kernels` ``linear_rows``) and more rows another, and one or two rows cost
  the same (one is padded to two);
* the drafter's proposal, in B and draft depth k: ``[1, k, B*k, B]`` (linear) or quadratic.

:func:`fit` keeps, for each, the form with the better R^2 on held-out points.  Where a query lies
inside the profiled grid (batch sizes and node counts or depths between the profiled ones), the
model answers from the measurements themselves instead, by multilinear interpolation
(:class:`Grid`; context is interpolated, or extrapolated along the two nearest contexts):
the regression's form cannot follow every kernel change of a CPU, and a policy choosing between
depths 0, 1 and 2 weighs differences of a few percent, smaller than the fit's error there.
Outside the grid the regression answers.  Least squares are weighted by 1/y, so the fit
minimises relative error: a policy compares steps of nearly equal length, and an unweighted fit
would spend its accuracy on the long steps of big batches.  A
:class:`LatencyModel` is saved as JSON keyed by the model, its dtype, the device and the thread
count, and loading refuses a file made for anything else.  The file also holds the machine's
:class:`~specdec.target.kernels.Kernels`, measured by the same profile, which the target's forward reads.
"""
from __future__ import annotations

import bisect
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

FEATURES_VERSION = 5  # in the profile key: files fitted on other features, without kernels, or with kernels timed
# one case after another (before 5: a noisy stretch could leave a 3-row product unpadded) are refused and re-profiled


def verify_features(batch, nodes, context, form: str, rows_cut: int = 8) -> np.ndarray:
    b, n, c = (np.asarray(x, dtype=np.float64) for x in (batch, nodes, context))
    tokens = b * (n + 1)
    many = (tokens > rows_cut).astype(np.float64)
    base = [np.ones_like(b), b, tokens, b * c / 1000.0, (n > 0).astype(np.float64), many, many * tokens,
            (tokens > 2).astype(np.float64)]
    return np.stack(base + (_quadratic(base[1:4]) if form == "quadratic" else []), axis=-1)


def draft_features(batch, depth, form: str) -> np.ndarray:
    b, k = (np.asarray(x, dtype=np.float64) for x in (batch, depth))
    base = [np.ones_like(b), k, b * k, b]
    return np.stack(base + (_quadratic(base[1:]) if form == "quadratic" else []), axis=-1)


def _quadratic(terms: list[np.ndarray]) -> list[np.ndarray]:
    return [terms[i] * terms[j] for i in range(len(terms)) for j in range(i, len(terms))]


@dataclass
class Regression:
    form: str  # "linear" or "quadratic"
    coef: list[float]
    r2_heldout: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ np.asarray(self.coef)


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else 1.0


def _relative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares of x @ coef ~ y weighted by 1/|y| (relative error)."""
    w = 1.0 / np.maximum(np.abs(y), 1e-9)
    return np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]


def fit(features, y: np.ndarray, seed: int = 0, holdout: float = 0.25) -> Regression:
    """The form (linear or quadratic) of ``features(form)`` with the better held-out R^2, refitted on all points."""
    y = np.asarray(y, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = max(1, int(round(len(y) * holdout)))
    test, train = order[:cut], order[cut:]
    best = None
    for form in ("linear", "quadratic"):
        x = features(form)
        if len(train) < x.shape[1]:
            continue
        coef = _relative_lstsq(x[train], y[train])
        score = r2(y[test], x[test] @ coef)
        if best is None or score > best.r2_heldout + 1e-3:  # the simpler form unless clearly worse
            best = Regression(form, _relative_lstsq(x, y).tolist(), score)
    if best is None and len(y) >= 2:  # fewer points than features (a drafter that drafts 1 deep): no held-out
        x = features("linear")          # split; the least-norm fit reproduces the profiled points, R^2 in-sample
        coef = _relative_lstsq(x, y)
        best = Regression("linear", coef.tolist(), r2(y, x @ coef))
    if best is None:
        raise ValueError(f"too few profiled points ({len(y)}) to fit a latency model")
    return best


def isotonic(values: list[float]) -> list[float]:
    """The non-decreasing sequence nearest ``values`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


class Grid:
    """Profiled seconds on a full grid over ``axes``, for multilinear interpolation (built once, queried per step).

    Along every axis in ``monotone`` the seconds are made non-decreasing (isotonic least squares,
    alternated over the axes until stable): more draft nodes, rows or context never cost less, and
    timing noise that made more nodes read cheaper than fewer would otherwise send a policy to the
    deeper draft for nothing."""

    def __init__(self, points: list[dict], axes: tuple[str, ...], monotone: tuple[str, ...] = ()):
        self.axes = axes
        values = {tuple(float(p[a]) for a in axes): float(p["seconds"]) for p in points}
        self.levels = [sorted({key[i] for key in values}) for i in range(len(axes))]
        self.complete = bool(values) and len(values) == math.prod(len(g) for g in self.levels)
        unknown = set(monotone) - set(axes)
        if unknown:
            raise ValueError(f"monotone axes {sorted(unknown)} are not grid axes {axes}")
        if self.complete and monotone:
            values = self._monotone(values, [axes.index(a) for a in monotone])
        self.values = values

    def _monotone(self, values: dict, dims: list[int], rounds: int = 50) -> dict:
        values = dict(values)
        for _ in range(rounds):
            change = 0.0
            for d in dims:
                others = [levels for i, levels in enumerate(self.levels) if i != d]
                for rest in itertools.product(*others):
                    keys = [rest[:d] + (level,) + rest[d:] for level in self.levels[d]]
                    for key, new in zip(keys, isotonic([values[k] for k in keys])):
                        change = max(change, abs(new - values[key]))
                        values[key] = new
            if change < 1e-12:
                break
        return values

    def at(self, query: dict, extrapolate: tuple[str, ...] = ()) -> float | None:
        """Seconds at ``query``, or None (incomplete grid; outside it along an axis not in ``extrapolate``)."""
        if not self.complete:
            return None
        brackets = []  # per axis: [(grid value, weight), ...]
        for axis, levels in zip(self.axes, self.levels):
            x = float(query[axis])
            if len(levels) == 1:
                if x != levels[0] and axis not in extrapolate:
                    return None
                brackets.append(((levels[0], 1.0),))
                continue
            if not levels[0] <= x <= levels[-1] and axis not in extrapolate:
                return None
            hi = min(max(bisect.bisect_left(levels, x), 1), len(levels) - 1)
            lo_value, hi_value = levels[hi - 1], levels[hi]
            t = (x - lo_value) / (hi_value - lo_value)
            brackets.append(((lo_value, 1.0 - t), (hi_value, t)))
        total = 0.0
        for corner in itertools.product(*brackets):
            weight = 1.0
            for _, w in corner:
                weight *= w
            if weight:
                total += weight * self.values[tuple(value for value, _ in corner)]
        return max(total, 0.0)


@dataclass
class LatencyModel:
    key: dict  # model, dtype, device, threads
    verify: Regression
    draft: dict[str, Regression] = field(default_factory=dict)  # drafter name -> its regression
    points: dict = field(default_factory=dict)  # the profiled measurements, for the record
    kernels: dict | None = None  # the machine's Kernels (specdec.target.kernels), measured by the same profile

    @cached_property
    def _verify_grid(self) -> Grid:
        return Grid(self.points.get("verify", []), ("batch", "nodes", "context"), monotone=("nodes", "batch", "context"))

    @cached_property
    def _draft_grids(self) -> dict[str, Grid]:
        return {name: Grid(points, ("batch", "depth"), monotone=("batch", "depth"))
                for name, points in self.points.get("draft", {}).items()}

    @property
    def _rows_cut(self) -> int:
        return int((self.kernels or {}).get("linear_rows", 8))

    def add_drafter(self, name: str, regression: Regression, points: list[dict] | None = None) -> None:
        """A drafter's fitted cost (and its profiled points, which then answer inside their grid)."""
        self.draft[name] = regression
        if points is not None:
            self.points.setdefault("draft", {})[name] = points
        self.__dict__.pop("_draft_grids", None)  # rebuilt on next use

    def verify_seconds(self, batch: int, nodes: int, context: float) -> float:
        measured = self._verify_grid.at({"batch": batch, "nodes": nodes, "context": context}, extrapolate=("context",))
        if measured is not None:
            return max(measured, 1e-6)
        x = verify_features([batch], [nodes], [context], self.verify.form, self._rows_cut)
        return max(float(self.verify.predict(x)[0]), 1e-6)

    def draft_seconds(self, drafter: str, batch: int, depth: int) -> float:
        if depth <= 0 or drafter not in self.draft:
            return 0.0
        grid = self._draft_grids.get(drafter)
        measured = None if grid is None else grid.at({"batch": batch, "depth": depth})
        if measured is not None:
            return measured
        model = self.draft[drafter]
        return max(float(model.predict(draft_features([batch], [depth], model.form))[0]), 0.0)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_key: dict | None = None) -> "LatencyModel":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        model = cls(data["key"], Regression(**data["verify"]), {k: Regression(**v) for k, v in data["draft"].items()},
                    data.get("points", {}), data.get("kernels"))
        if expected_key is not None and model.key != expected_key:
            differs = {k: (model.key.get(k), v) for k, v in expected_key.items() if model.key.get(k) != v}
            raise ValueError(f"latency model {path} was profiled for another setting: {differs} "
                             "(file, now); run `python -m specdec.policy.profile` for this one")
        return model


def latency_key(model, threads: int | None = None) -> dict:
    """What a latency profile is valid for: the model, its dtype, the device and processor, the threads, the forward."""
    import torch

    parameter = next(model.parameters())
    name = getattr(model.config, "_name_or_path", None) or type(model).__name__
    size = sum(p.numel() for p in model.parameters())
    from ..target.lean_llama import supports

    forward = "lean" if supports(model) else "hf"  # the forward Target runs (specdec.target.verifier)
    return {"model": f"{Path(str(name)).name}:{size}", "dtype": str(parameter.dtype).replace("torch.", ""),
            "device": parameter.device.type, "machine": machine_name(parameter.device),
            "threads": int(threads or torch.get_num_threads()), "forward": forward, "features": FEATURES_VERSION}


def machine_name(device) -> str:
    """The processor the times belong to: the GPU's name, or the CPU's model name (a profile is per machine)."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def default_path(key: dict) -> Path:
    """``<cache>/profiles/<model>-<dtype>-<device>-t<threads>.json`` beside the model cache
    (``$SPECDEC_PROFILES`` instead of ``<cache>/profiles`` where set)."""
    from ..loading import default_cache_dir

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key["model"])
    folder = Path(os.environ["SPECDEC_PROFILES"]) if os.environ.get("SPECDEC_PROFILES") else default_cache_dir() / "profiles"
    return folder / f"{safe}-{key['dtype']}-{key['device']}-t{key['threads']}.json"
