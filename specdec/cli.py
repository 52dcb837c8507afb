"""``python -m specdec`` (or ``specdec``): generate text with speculative decoding, streamed, then the stats.

Examples::

    specdec "Why is the sky blue?"                                   # copies + the best drafter packaged for the model
    specdec --drafter chimera "Summarise: ..." --max-new-tokens 200
    specdec --chat chat.json --drafter draft_model --sample --temperature 0.7 --seed 0
    echo "Translate into French: good morning" | specdec --drafter none
    specdec --interactive --drafter hybrid                           # a chat: one line per turn, until EOF

The prompt is sent as one user turn through the model's chat template (``--raw`` sends it as
plain text instead); ``--chat`` reads a JSON list of ``{"role", "content"}`` messages.
``--interactive`` reads one user turn per line from standard input and answers each with the whole
conversation as the prompt; the drafter (with a hybrid's suffix cache) and its policy are kept across
turns, so later turns copy from earlier answers.

With no ``--drafter`` the CLI picks (``specdec.drafters.choose``): copies from the context merged with
the packaged drafter made for the model that its card measured fastest (a ``Hybrid``), else prompt
lookup (also where that card measured copying alone faster); each step's tree is sized
by the goodput policy (``specdec.SmartSpec``) unless ``--speculation`` fixes a depth.  It prints one
line saying what it chose and why.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DRAFTERS = ("auto", "none", "prompt_lookup", "draft_model", "medusa", "chimera", "rsd", "hybrid")
ARTIFACTS = {"draft_model": "draft-{name}", "rsd": "draft-{name}", "medusa": "medusa-{name}",
             "chimera": "chimera-{name}"}  # packaged artifact names (specdec.drafters.load)
HYBRID_MODELS = ("chimera", "draft_model")  # --drafter hybrid: copies plus the first of these packaged for the model


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specdec", description="Generate text with lossless speculative decoding: greedy output is the "
        "model's own greedy output, sampled output is distributed as the model's.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::")[1].split("The prompt")[0])
    p.add_argument("prompt", nargs="?", help="the user's message (default: read standard input)")
    p.add_argument("--chat", type=Path, help="a JSON file holding a list of {role, content} messages")
    p.add_argument("--interactive", action="store_true",
                   help="chat: read one user turn per line from standard input until end of input")
    p.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="a packaged model name, a local Hugging Face directory or a Hub id (default: %(default)s)")
    p.add_argument("--drafter", choices=DRAFTERS, default="auto",
                   help="how tokens are drafted (default: auto, copies merged with the fastest drafter packaged "
                        "for the model, else prompt_lookup)")
    p.add_argument("--draft-path", help="the drafter's artifact, a folder or a packaged name "
                                        "(default: the packaged <kind>-<model>)")
    p.add_argument("--speculation", default=None,
                   help="draft depth: an int (0: plain decoding); default: each step's tree sized by the goodput policy")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-stream", action="store_true", help="print the answer at the end instead of streaming it")
    p.add_argument("--json", action="store_true", help="end with the stats as one JSON line")
    return p


def build_drafter(kind: str, model, model_name: str, path: str | None):
    """The drafter ``--drafter kind`` names, and one line saying what it is and why it was chosen."""
    from specdec import drafters

    if kind == "auto":
        return drafters.choose(model)
    if kind == "none":
        return None, "none (plain decoding)"
    if kind == "prompt_lookup":
        return drafters.PromptLookup(), "prompt lookup (asked for)"
    if kind == "hybrid":
        name = Path(str(model_name)).name.lower()
        for part in ([None] if path else HYBRID_MODELS):
            artifact = path or ARTIFACTS[part].format(name=name)
            try:
                return drafters.Hybrid(drafters.load(artifact, model)), f"hybrid of copies and {artifact} (asked for)"
            except FileNotFoundError:
                if path:
                    raise
        return drafters.PromptLookup(), "prompt lookup (a hybrid was asked for, but no model drafter is packaged)"
    artifact = path or ARTIFACTS[kind].format(name=Path(str(model_name)).name.lower())
    if kind == "rsd":
        return drafters.RecursiveTree(drafters.load_draft_model(model, artifact)), f"RSD trees drafted by {artifact} (asked for)"
    return drafters.load(artifact, model), f"{artifact} (asked for)"


def messages_of(args) -> list[dict] | str:
    """The prompt: ``--chat``'s messages, else the text (as one user turn unless ``--raw``); with
    ``--interactive`` the conversation so far (``--chat``'s messages, or none)."""
    if args.chat is not None:
        try:
            chat = json.loads(args.chat.read_text(encoding="utf-8"))
        except OSError as error:
            raise SystemExit(f"--chat {args.chat}: cannot read it ({error.strerror})") from None
        except json.JSONDecodeError as error:
            raise SystemExit(f"--chat {args.chat}: not JSON ({error})") from None
        if not isinstance(chat, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in chat):
            raise SystemExit(f"{args.chat}: expected a JSON list of {{\"role\", \"content\"}} messages")
        return chat
    if args.interactive:
        return []
    text = args.prompt if args.prompt is not None else sys.stdin.read()
    if not text.strip():
        raise SystemExit("no prompt: give one as an argument, on standard input, or with --chat")
    return text if args.raw else [{"role": "user", "content": text}]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch
    import transformers
    from transformers import TextStreamer

    transformers.logging.disable_progress_bar()  # keep the terminal to the answer and the stats

    import specdec
    from specdec.chat import encode_chat
    from specdec.clock import clock_for

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_new_tokens < 1:
        raise SystemExit("--max-new-tokens must be at least 1")
    speculation = args.speculation
    if speculation is not None:
        try:
            speculation = None if speculation.lower() in ("goodput", "smartspec") else int(speculation)
        except ValueError:
            speculation = -1
        if speculation is not None and speculation < 0:
            raise SystemExit(f"--speculation must be an int >= 0 or 'goodput', got {args.speculation!r}")
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) if args.sample else {}
    try:  # DecodeConfig's own checks, before the model loads; its messages start with the field's name
        specdec.DecodeConfig(seed=args.seed, **sampling)
    except (ValueError, TypeError) as error:
        field, _, rest = str(error).partition(" ")
        raise SystemExit(f"--{field.replace('_', '-')} {rest}") from None
    prompt = messages_of(args)
    try:
        model, tokenizer = specdec.load_model(args.model)
        drafter, chosen = build_drafter(args.drafter, model, args.model, args.draft_path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"specdec: {error}") from None
    if drafter is not None:
        policy = "each step's tree sized by the goodput policy" if speculation is None else f"depth fixed at {speculation}"
        print(f"specdec: drafter {chosen}; {policy}", file=sys.stderr, flush=True)
        if speculation is None:  # a first use on this machine profiles it here, not on the clock below
            drafter.default_policy().start(model, drafter)
    streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    clock = clock_for(model)

    def answer(prompt):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"] if isinstance(prompt, str) else encode_chat(tokenizer, prompt)
        started = clock()
        with torch.inference_mode():
            out = specdec.generate(model, ids, drafter, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                   speculation=speculation if drafter is not None else None, streamer=streamer, **sampling)
        seconds = clock() - started
        text = tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True)
        if args.no_stream:
            print(text)
        report(args, out.stats, seconds, chosen)
        return text

    if not args.interactive:
        answer(prompt)
        return 0
    print("specdec: one message per line; end of input (Ctrl-D) ends the chat", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        prompt.append({"role": "user", "content": line.rstrip("\n")})
        prompt.append({"role": "assistant", "content": answer(prompt)})
    return 0


def report(args, stats, seconds: float, chosen: str) -> None:
    """The stats line on standard error (and with ``--json`` one JSON line on standard output)."""
    rates = " / ".join(f"{a:.2f}" for a in stats.acceptance_by_position()[:8]) or "-"
    print(f"\n[{stats.tokens_generated} tokens in {seconds:.1f} s: {stats.tokens_generated / seconds:.1f} tokens/s, "
          f"{stats.mean_accepted_tokens:.2f} tokens per step, acceptance by position {rates}; "
          f"drafter {chosen.split(' (')[0]}, {'sampled' if args.sample else 'greedy'}]", file=sys.stderr)
    if args.json:
        print(json.dumps({"tokens": stats.tokens_generated, "seconds": seconds, **{
            k: v for k, v in stats.as_dict().items() if k in ("steps", "mean_accepted_tokens", "acceptance_by_position")}}))


if __name__ == "__main__":
    sys.exit(main())
