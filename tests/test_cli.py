"""`python -m specdec` on a tiny model: it streams the answer, prints its stats, and refuses bad input clearly."""
import json
import os
import subprocess
import sys

import pytest

import specdec
from specdec.bench.targets import tiny_target

pytestmark = pytest.mark.slow  # subprocesses or the real model: seconds each


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny_target(num_layers=1, hidden=16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(*args, stdin=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "specdec", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=300)


def test_it_streams_the_greedy_answer_and_prints_stats(model_dir):
    proc = run("--model", str(model_dir), "--max-new-tokens", "12", "--threads", "1", "--json", "hello there")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    stats = json.loads(lines[-1])
    assert stats["tokens"] == 12 and stats["steps"] >= 1 and stats["mean_accepted_tokens"] >= 1.0
    assert "tokens/s" in proc.stderr and "tokens per step" in proc.stderr and "drafter prompt lookup, greedy" in proc.stderr
    # no drafter is packaged for this model: the CLI says so, and that it chose prompt lookup under the goodput policy
    assert f"specdec: drafter prompt lookup (no drafter is packaged for {model_dir.name!r}" in proc.stderr
    assert "goodput policy" in proc.stderr
    model, tokenizer = specdec.load_model(model_dir)
    ids = specdec.chat.encode_chat(tokenizer, [{"role": "user", "content": "hello there"}])
    want = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    text = tokenizer.decode(want[0, ids.shape[1]:], skip_special_tokens=True)
    assert "\n".join(lines[:-1]).strip() == text.strip()  # what was streamed is the model's own greedy answer


def test_stdin_chat_files_and_sampling(model_dir, tmp_path):
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                                {"role": "user", "content": "three"}]))
    for args, stdin in ((["--chat", str(chat), "--drafter", "none"], None),
                        (["--sample", "--temperature", "0.7", "--seed", "1", "--no-stream"], "from stdin")):
        proc = run("--model", str(model_dir), "--max-new-tokens", "6", *args, stdin=stdin)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "tokens per step" in proc.stderr


def test_bad_input_is_named(model_dir, tmp_path, capsys):
    """In-process (``python -m specdec`` calls the same ``main``): each mistake ends in a message, not a traceback.

    The rest of the CLI's bad input is in test_bad_input.py's table."""
    from test_bad_input import cli

    (tmp_path / "bad.json").write_text('{"role": "user"}')
    with pytest.raises(SystemExit, match="list of"):
        cli("--model", str(model_dir), "--chat", str(tmp_path / "bad.json"))()
    with pytest.raises(SystemExit, match="specdec: .*not found"):
        cli("--model", str(model_dir), "--drafter", "chimera", "hi")()
    with pytest.raises(SystemExit) as done:
        specdec.cli.main(["--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0 and "--drafter" in shown and "lossless" in shown


def test_interactive_chat_answers_each_turn_with_the_conversation_so_far(model_dir):
    """Two turns on standard input: each answer is the model's own greedy answer to the whole conversation."""
    proc = run("--model", str(model_dir), "--max-new-tokens", "5", "--threads", "1", "--interactive", "--no-stream",
               "--json", "--drafter", "hybrid", stdin="hello\n\nand again\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no model drafter is packaged" in proc.stderr  # the tiny model has none: copies alone
    stats = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"tokens"')]
    assert len(stats) == 2 and all(s["tokens"] == 5 for s in stats)
    model, tokenizer = specdec.load_model(model_dir)
    chat, expected = [], []
    for turn in ["hello", "and again"]:
        chat.append({"role": "user", "content": turn})
        ids = specdec.chat.encode_chat(tokenizer, chat)
        want = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
        text = tokenizer.decode(want[0, ids.shape[1]:], skip_special_tokens=True)
        expected.append(text + "\n" + json.dumps(stats[len(expected)]))  # each answer, then its stats line
        chat.append({"role": "assistant", "content": text})
    assert proc.stdout == "\n".join(expected) + "\n"
