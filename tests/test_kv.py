"""RaggedCache on its own: appends in place, crops without copies, compacts tree paths, realigns, splits and joins."""
import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from conftest import tiny_llama
from specdec.target.kv import BufferLayer, RaggedCache

CONFIG = LlamaConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=16, vocab_size=16)


def write(cache: RaggedCache, values: torch.Tensor, real: torch.Tensor) -> None:
    """Append columns whose keys (and values, negated) equal ``values`` [B, W], as one forward would."""
    b, w = values.shape
    for i in range(CONFIG.num_hidden_layers):
        keys = (values + 100 * i).to(torch.float64)[:, None, :, None].expand(b, 1, w, 4)
        cache.kv.update(keys, -keys, i)
    cache.appended(real)


def row_values(cache: RaggedCache, layer: int = 0) -> list[list[float]]:
    """Each row's real key entries (first channel), in order."""
    keys = cache.layers[layer].keys[:, 0, :, 0] - 100 * layer
    return [k[m].tolist() for k, m in zip(keys, cache.mask)]


def filled(batch: int, width: int) -> RaggedCache:
    cache = RaggedCache(CONFIG, batch, "cpu")
    write(cache, torch.arange(batch * width, dtype=torch.float64).reshape(batch, width),
          torch.ones(batch, width, dtype=torch.bool))
    return cache


def test_appends_write_in_place_and_values_follow_keys():
    cache = filled(2, 3)
    buffer = cache.layers[0].key_buffer
    write(cache, torch.tensor([[50.0], [60.0]]), torch.ones(2, 1, dtype=torch.bool))
    assert cache.layers[0].key_buffer.data_ptr() == buffer.data_ptr()  # no reallocation, no copy
    assert row_values(cache) == [[0, 1, 2, 50], [3, 4, 5, 60]]
    assert row_values(cache, 1) == [[0, 1, 2, 50], [3, 4, 5, 60]]
    assert torch.equal(cache.layers[0].values, -cache.layers[0].keys)
    assert cache.lengths.tolist() == [4, 4] and cache.kv.get_seq_length() == 4


def test_growth_keeps_every_entry():
    cache = filled(1, 2)
    for step in range(300):  # far past the spare columns: the buffer grows
        write(cache, torch.tensor([[float(10 + step)]]), torch.ones(1, 1, dtype=torch.bool))
    assert row_values(cache)[0] == [0, 1] + [float(10 + s) for s in range(300)]


def test_a_chain_prefix_is_kept_by_cropping_without_copies():
    cache = filled(2, 6)
    keep = cache.mask.clone()
    keep[:, 4:] = False
    buffer = cache.layers[0].key_buffer
    assert cache.keep(keep) is False
    assert cache.layers[0].key_buffer is buffer  # a crop moves nothing
    assert row_values(cache) == [[0, 1, 2, 3], [6, 7, 8, 9]]


def test_a_tree_path_is_compacted_in_place():
    """Rows keeping the same number of new entries (different ones) are not a realignment."""
    cache = filled(2, 6)
    keep = cache.mask.clone()
    keep[:, 3:] = False
    keep[0, [3, 5]] = True
    keep[1, [4, 5]] = True
    assert cache.keep(keep) is False
    assert row_values(cache) == [[0, 1, 2, 3, 5], [6, 7, 8, 10, 11]]
    assert cache.width == 5
    write(cache, torch.tensor([[70.0], [80.0]]), torch.ones(2, 1, dtype=torch.bool))  # appends after them
    assert row_values(cache) == [[0, 1, 2, 3, 5, 70], [6, 7, 8, 10, 11, 80]]


def test_ragged_rows_are_realigned_right():
    cache = filled(2, 5)
    keep = cache.mask.clone()
    keep[0, 3:] = False  # row 0 keeps 3 entries, row 1 all 5
    assert cache.keep(keep) is True
    assert row_values(cache) == [[0, 1, 2], [5, 6, 7, 8, 9]]
    assert cache.mask.tolist() == [[False, False, True, True, True], [True] * 5]


def test_left_padding_common_to_all_rows_is_forgotten():
    cache = RaggedCache(CONFIG, 2, "cpu")
    real = torch.tensor([[False, False, True, True], [False, True, True, True]])
    write(cache, torch.arange(8, dtype=torch.float64).reshape(2, 4), real)
    part = cache.take_rows(torch.tensor([0]))
    assert part.width == 2 and row_values(part) == [[2, 3]]
    assert cache.width == 4  # the source is unchanged


def test_take_rows_and_concat_with_zero_width_caches():
    empty = RaggedCache(CONFIG, 2, "cpu")
    full = filled(1, 3)
    joined = RaggedCache.concat([empty, full])
    assert joined.batch_size == 3 and joined.width == 3
    assert joined.lengths.tolist() == [0, 0, 3]
    assert row_values(joined) == [[], [], [0, 1, 2]]
    both_empty = RaggedCache.concat([RaggedCache(CONFIG, 1, "cpu"), RaggedCache(CONFIG, 2, "cpu")])
    assert both_empty.batch_size == 3 and both_empty.width == 0
    picked = joined.take_rows(torch.tensor([2, 0]))
    assert row_values(picked) == [[0, 1, 2], []]
    write(picked, torch.tensor([[9.0], [8.0]]), torch.ones(2, 1, dtype=torch.bool))
    assert row_values(picked) == [[0, 1, 2, 9], [8]]
    assert row_values(joined) == [[], [], [0, 1, 2]]  # copies, not views


def test_a_model_attends_over_the_buffer_as_over_a_dynamic_cache():
    """Incremental decoding through RaggedCache gives the logits of Hugging Face's DynamicCache."""
    model = tiny_llama(32, seed=2)
    ids = torch.tensor([[3, 9, 4, 7, 1, 30, 2]])
    ours, theirs = RaggedCache(model.config, 1, "cpu"), DynamicCache(config=model.config)
    with torch.no_grad():
        for step in range(ids.shape[1]):
            token = ids[:, step:step + 1]
            a = model(token, past_key_values=ours.kv, use_cache=True, position_ids=torch.tensor([[step]])).logits
            ours.appended(torch.ones(1, 1, dtype=torch.bool))
            b = model(token, past_key_values=theirs, use_cache=True).logits
            assert torch.allclose(a, b, atol=1e-12)


def test_sliding_window_layers_keep_their_whole_history_and_recurrent_ones_are_refused():
    from transformers import MambaConfig, MistralConfig

    config = MistralConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=16, vocab_size=16, sliding_window=4)
    assert all(isinstance(layer, BufferLayer) for layer in RaggedCache(config, 1, "cpu").layers)
    with pytest.raises(NotImplementedError, match="mamba"):
        RaggedCache(MambaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=2), 1, "cpu")
