"""`python -m specdec.train.remeasure` refuses folders that are not trained artifacts, naming why."""
import json

import pytest
from specdec.train.remeasure import drafter_factory, remeasure


def test_missing_card_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="card.json does not exist"):
        remeasure(tmp_path)


def test_unknown_kind_is_named(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"kind": "mystery", "target": "x"}))
    with pytest.raises(ValueError, match="kind 'mystery'"):
        drafter_factory(tmp_path, {"kind": "mystery"}, model=None)
