"""The CLI package's layout: every option's help is one short sentence (details live in docs/), and options shared
by several commands come from probe.cli.options, so their help reads the same everywhere."""

from __future__ import annotations

import re

import typer.main

from probe.cli import app


def _options():
    """(command, option, help) of every option of every command, sub-commands included."""
    def walk(command, prefix):
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{prefix} {name}".strip())
        for param in command.params:
            yield prefix, (param.opts or [param.name])[0], getattr(param, "help", None) or ""
    return list(walk(typer.main.get_command(app), ""))


def test_every_option_help_is_one_sentence_of_at_most_80_characters():
    options = _options()
    assert len(options) > 250  # every command's options were seen
    too_long = [(command, option, len(text)) for command, option, text in options if len(text) > 80]
    assert too_long == []
    two_sentences = [(command, option) for command, option, text in options
                     if re.search(r"[a-z0-9)]\. [A-Z]", text)]
    assert two_sentences == []


def test_an_option_shared_by_commands_has_one_help():
    helps = {}
    for command, option, text in _options():
        if option in ("--seed", "--device", "--dataset", "--data", "--data-root", "--checkpoint", "--early-batch-size",
                      "--ray", "--gpus-per-cell", "--dry-run", "--cache"):
            helps.setdefault(option, set()).add(text)
    assert helps["--device"] == {"cpu or cuda."}
    assert helps["--early-batch-size"] == {"Batch of epochs 0-3: 64 (authors', default) or 128."}
    # only where the option means something else: synthesize's --seed, ddpm sample's and layers' --checkpoint,
    # segment's --ray (with --seeds), correspond's --dataset (correspondence benchmarks)
    varying = {option for option, texts in helps.items() if len(texts) > 1}
    assert varying == {"--seed", "--checkpoint", "--ray", "--dataset"}
    assert len(helps["--dataset"]) == 2
