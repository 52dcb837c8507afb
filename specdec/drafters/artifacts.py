"""Trained drafter artifacts: finding them, reading their cards, and one loader for every kind.

An artifact is a folder holding the weights and ``card.json``.  The card says what it is
(``kind``), which target it was trained for (``target``, and the sizes its weights fit), how it
is served (``serving``: the draft's precision, a chain's length; ``tree``: a tree drafter's
largest tree, which the goodput policy prunes every step) and what was measured (``measured``).
:func:`load` reads the card and returns the drafter its kind names, with those settings; keyword
overrides win.  The kind-specific ``from_pretrained`` constructors read the same card and give the
same defaults.

Artifacts are found by path (absolute or relative to the working directory), relative to a
source checkout's root (``artifacts/<name>``), or by the name of a *packaged* artifact: the
folders of ``artifacts/`` install with the package as ``specdec.artifacts``, so
``drafters.load("chimera-smollm2-135m-instruct", model)`` works from any directory after a plain
``pip install``.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

CARD = "card.json"
REPOSITORY = Path(__file__).resolve().parents[2]


def packaged_root() -> Path | None:
    """The folder of the artifacts installed with the package (None if it did not install)."""
    try:
        root = Path(str(resources.files("specdec.artifacts")))
    except (ModuleNotFoundError, TypeError):
        return None
    return root if root.is_dir() else None


def packaged() -> list[str]:
    """Names of the packaged artifacts (folders with a card)."""
    root = packaged_root()
    return sorted(p.name for p in root.iterdir() if (p / CARD).is_file()) if root is not None else []


def resolve(path: str | Path) -> Path:
    """The folder ``path`` names: as given if it exists, else relative to the repository root, else a
    packaged artifact of that name (``artifacts/<name>`` also finds the packaged ``<name>``)."""
    given = Path(path).expanduser()
    if given.exists():
        return given
    if not given.is_absolute():
        beside = REPOSITORY / given
        if beside.exists():
            return beside
        root = packaged_root()
        name = given.name if given.parent in (Path("."), Path("artifacts")) else None
        if root is not None and name and (root / name).exists():
            return root / name
    raise FileNotFoundError(f"artifact {path} not found (looked in {Path.cwd()}, {REPOSITORY} and the packaged "
                            f"artifacts: {', '.join(packaged()) or 'none'}); train one with the commands in README.md")


def read_card(folder: str | Path, kind: str | None = None) -> dict:
    """The card of an artifact folder, with a clear error when it is missing, unreadable or (``kind``
    given, for a kind-specific loader) of another kind."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CARD}: not a trained specdec artifact")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the artifact is damaged") from None
    if not isinstance(card, dict) or ("kind" not in card and kind is None):
        raise ValueError(f"{path} names no kind: not a specdec artifact card")
    if kind is not None and not str(card.setdefault("kind", kind)).startswith(kind):
        raise ValueError(f"{folder} holds a {card['kind']!r} artifact, not a {kind!r} one")
    return card


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """An artifact's safetensors file; a missing or unreadable one is named, with what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact {path.parent} lacks {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}): the artifact is truncated or "
                         "corrupted; export it again") from None


def model_name(model: torch.nn.Module) -> str:
    """The name a card's ``target`` is compared with: the model folder's or Hub id's last part, lower-case."""
    return Path(str(getattr(model.config, "_name_or_path", "") or "")).name.lower()


def fitted_sizes(card: dict) -> dict:
    """The target sizes an artifact's weights fit: ``hidden_size`` and ``vocab_size`` where the card says."""
    config = card.get("config") or {}
    sizes = {"hidden_size": config.get("embed_dim") if card["kind"].startswith("specdec-draft")
             else config.get("hidden_size", card.get("hidden_size")),
             "vocab_size": config.get("vocab_size")}
    return {k: v for k, v in sizes.items() if v is not None}


def check_target(card: dict, model: torch.nn.Module, folder) -> None:
    """Refuse a target whose sizes differ from the ones the artifact was trained for, naming both."""
    from .base import output_vocab_size

    have = {"hidden_size": getattr(model.config, "hidden_size", None), "vocab_size": output_vocab_size(model)}
    wrong = {k: (v, have[k]) for k, v in fitted_sizes(card).items() if have.get(k) != v}
    if wrong:
        said = ", ".join(f"{k} {a} (this target: {b})" for k, (a, b) in wrong.items())
        raise ValueError(f"artifact {folder} was trained for {card.get('target', 'another target')!r}: {said}; "
                         f"this target is {model_name(model) or type(model).__name__!r}")


def matches(card: dict, model: torch.nn.Module) -> bool:
    """Whether the card was made for this model: the same name and the sizes its weights need."""
    try:
        check_target(card, model, "")
    except ValueError:
        return False
    return str(card.get("target", "")).lower() == model_name(model)


def packaged_for(model: torch.nn.Module) -> list[tuple[str, dict]]:
    """Packaged artifacts made for ``model``, fastest first by the speed over plain decoding on their cards."""
    root = packaged_root()
    found = []
    for name in packaged():
        card = read_card(root / name)
        if matches(card, model):
            found.append((name, card))
    return sorted(found, key=lambda item: -float((item[1].get("measured") or {}).get("speed_over_plain") or 0.0))


def load(artifact: str | Path | None, target: torch.nn.Module, self_draft_layers: int | None = None, **overrides):
    """The drafter of a trained artifact (a path or a packaged name), bound to ``target``, set up as its card says.

    The card's ``kind`` picks the class: ``chimera`` -> :class:`~specdec.drafters.Chimera`, ``medusa``
    -> :class:`~specdec.drafters.Medusa`, ``specdec-draft-v2`` (or a Hugging Face folder) ->
    :class:`~specdec.drafters.DraftModel`.  ``overrides`` are that class's settings (``dtype``,
    ``depth``, ``max_nodes``, ``num_tokens``...).  ``artifact=None`` with ``self_draft_layers=k``
    drafts with the target's own first k layers (no training, no card).
    """
    from .chimera import Chimera
    from .draft_model import DraftModel
    from .medusa import Medusa

    if not isinstance(target, torch.nn.Module) or not hasattr(target, "config"):
        raise TypeError(f"target must be a Hugging Face causal LM, got {type(target).__name__}")
    if artifact is None:
        if self_draft_layers is None:
            raise ValueError("drafters.load needs an artifact (a path or a packaged name: "
                             f"{', '.join(packaged()) or 'none installed'}), or self_draft_layers for a self-draft")
        return DraftModel.from_target_layers(target, int(self_draft_layers), **overrides)
    folder = resolve(artifact)
    if not (folder / CARD).is_file() and (folder / "config.json").is_file():
        return DraftModel.from_pretrained(folder, target, **overrides)  # a plain Hugging Face draft LM
    card = read_card(folder)
    check_target(card, target, folder)
    kind = card["kind"]
    if kind == "chimera":
        return Chimera.from_pretrained(folder, target, **overrides)
    if kind == "medusa":
        return Medusa.from_pretrained(folder, target, **overrides)
    if kind.startswith("specdec-draft"):
        return DraftModel.from_pretrained(folder, target, **overrides)
    raise ValueError(f"{folder}/{CARD} has kind {kind!r}; drafters.load knows chimera, medusa and specdec-draft-v2")


def choose(target: torch.nn.Module) -> tuple:
    """The drafter a user gets without naming one, and why: copies from the context merged with the
    packaged artifact made for ``target`` that its card measured fastest (a :class:`Hybrid`, whose
    goodput policy drafts with the model only on steps where it pays), else prompt lookup (which needs
    no training), also where that card measured prompt lookup faster than its model (a target that
    repeats itself, as Gemma 3 270M does, where the hybrid's larger trees cost more than its model
    wins).  RESULTS.md (2026-12-07, fifth session) has the measurements behind both."""
    from .hybrid import Hybrid
    from .prompt_lookup import PromptLookup

    found = packaged_for(target)
    if not found:
        return PromptLookup(), (f"prompt lookup (no drafter is packaged for {model_name(target) or 'this model'!r}; "
                                f"packaged: {', '.join(packaged()) or 'none'})")
    name, card = found[0]
    speed = (card.get("measured") or {}).get("speed_over_plain")
    copying = (card.get("measured") or {}).get("prompt_lookup_over_plain")
    if speed and copying and copying > speed:  # a model that repeats itself (a base model's loops)
        return PromptLookup(), (f"prompt lookup ({copying:.2f}x plain decoding on {name}'s card, "
                                f"which measured itself at {speed:.2f}x)")
    why = f"{speed:.2f}x plain decoding on its card" if speed else "no speed measured on its card"
    others = f"; also packaged for it: {', '.join(n for n, _ in found[1:])}" if len(found) > 1 else ""
    return Hybrid(load(name, target)), (f"copies merged with {name} (the fastest drafter packaged for this "
                                        f"model: {why}{others})")


def auto(target: torch.nn.Module):
    """:func:`choose`'s drafter alone (what the CLI and ``configs/drafter/auto.yaml`` use)."""
    return choose(target)[0]

