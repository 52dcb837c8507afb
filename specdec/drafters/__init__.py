"""Drafters: every way of proposing tokens, behind one protocol (:class:`Drafter`)."""
from . import artifacts
from .artifacts import auto, choose, load, packaged, packaged_for
from .base import CommitUpdate, Drafter, DraftRequest
from .chimera import Chimera
from .draft_cache import DraftCache
from .draft_model import DraftModel, load_draft_model
from .hybrid import Hybrid, merge_copies
from .medusa import Medusa
from .prompt_lookup import NgramIndex, PromptLookup, lookup_continuation
from .recursive_tree import RecursiveTree
from .self_draft import truncated_model
from .suffix_cache import SuffixCache
from .vocab import SubsetHead, with_subset_head

__all__ = ["auto", "choose", "load", "packaged", "packaged_for", "Chimera", "CommitUpdate", "Drafter", "DraftCache", "DraftRequest", "DraftModel", "Hybrid", "merge_copies", "Medusa", "PromptLookup", "RecursiveTree", "load_draft_model", "NgramIndex", "lookup_continuation", "truncated_model", "SubsetHead", "SuffixCache", "with_subset_head"]
