"""Streaming: a Hugging Face streamer receives exactly the tokens generate returns, step by step."""
import pytest
import torch

import specdec
from specdec import drafters
from test_batch import PAD, expected_batch, prompts, target  # noqa: F401  (fixture)


class RecordingStreamer:
    """Hugging Face's streamer protocol (put/end), keeping every call."""

    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("drafter_of", [lambda t: None, lambda t: drafters.DraftModel(t, 4),
                                        lambda t: drafters.PromptLookup(4, 2)])
def test_batch_size_one_streams_each_step(target, drafter_of):
    """The prompt first, then each step's committed tokens as [1, n]; together exactly the output."""
    ids = torch.tensor([prompts(1, seed=2)[0]])
    streamer = RecordingStreamer()
    out = specdec.generate(target, ids, drafter_of(target), max_new_tokens=17, eos_token_id=[], streamer=streamer)
    assert torch.equal(streamer.puts[0], ids) and streamer.ended == 1
    steps = streamer.puts[1:]
    assert all(p.dim() == 2 and p.shape[0] == 1 and p.shape[1] >= 1 for p in steps)
    assert len(steps) == out.stats.steps  # one put per step
    assert torch.cat(steps, dim=1)[0].tolist() == out.sequences[0, ids.shape[1]:].tolist()


def test_a_batch_streams_columns_like_generate(target):
    """A batch with EOS in some rows streams [B] columns, padded after a row's end, equal to the output."""
    rows = prompts(3, seed=6)
    eos = expected_batch(target, rows, 12, None, PAD)[2][0, -6].item()  # a token row 0 emits mid-way
    ids, mask, expected = expected_batch(target, rows, 12, eos, PAD)
    streamer = RecordingStreamer()
    out = specdec.generate(target, ids, drafters.DraftModel(target, 3), attention_mask=mask, max_new_tokens=12,
                           eos_token_id=eos, pad_token_id=PAD, streamer=streamer)
    assert torch.equal(out.sequences, expected)
    assert len(set(out.stats.row_tokens)) > 1  # rows ended at different lengths: padding was streamed
    assert torch.equal(streamer.puts[0], ids)
    columns = torch.stack(streamer.puts[1:], dim=1)
    assert torch.equal(columns, out.sequences[:, ids.shape[1]:])
    assert streamer.ended == 1


def test_text_streamer_prints_the_decoded_output(capsys):
    """transformers' own TextStreamer, on the packaged model's tokenizer, prints exactly the decoded output."""
    from transformers import TextStreamer

    model, tokenizer = specdec.load_model("smollm2-135m-instruct")
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    out = specdec.generate(model, ids, drafters.PromptLookup(), max_new_tokens=12,
                           streamer=TextStreamer(tokenizer, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed.strip() == tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=False).strip()


def test_bad_streamer(target):
    with pytest.raises(TypeError, match="put"):
        specdec.generate(target, torch.tensor([[3, 4]]), max_new_tokens=2, streamer=object())
