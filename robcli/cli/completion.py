"""Shell completion of registered names: which flag of which command completes from which list.

Typer's ``--install-completion`` / ``--show-completion`` on the root app complete command names and flags; this
module adds the values: data sets, architectures, losses, attacks, selectors and the small fixed choices, all
from :mod:`robcli.names` (plain tuples), so a TAB press imports no torch. :class:`CompletingGroup` is the root
group's class; it attaches the completers once, when Typer builds the click command tree (both for the
``robcli`` entry point and for Typer's test runner).
"""

from __future__ import annotations

from typer.core import TyperGroup

from robcli import names

# flag -> names, for every command that has the flag
BY_FLAG: dict[str, tuple[str, ...]] = {
    "--dataset": names.DATASETS,
    "--arch": names.MODELS,
    "--loss": names.LOSSES,
    "--selector": names.SELECTORS,
    "--norm": names.NORMS,
}
# (command path below robcli, flag) -> names: flags whose meaning depends on the command
BY_COMMAND: dict[tuple[str, str], tuple[str, ...]] = {
    ("attack", "--attack"): names.ATTACKS,
    ("partition", "--attack"): names.ATTACKS,
    ("attack", "--version"): names.AA_VERSIONS,
    ("finetune", "--train-attack"): names.TRAIN_SETTINGS,
    ("compose", "--export-inner-attack"): names.INNER_ATTACKS,
    ("certify", "--mode"): names.CERTIFY_MODES,
    ("report", "--format"): names.REPORT_FORMATS,
    ("list", "what"): names.LISTS,
}
# --model takes a run dir, a file or a registered architecture: architectures are offered while one matches;
# when none does, no value is returned and the shell completes file names (Typer's bash script registers
# ``complete -o default``, its zsh script answers ``_files``)
BY_FLAG["--model"] = names.MODELS


def _completer(choices: tuple[str, ...]):
    def complete(ctx, param, incomplete: str):
        from typer._click.shell_completion import CompletionItem  # typer vendors click

        return [CompletionItem(c) for c in choices if c.startswith(incomplete)]

    return complete


def choices_for(path: str, param) -> tuple[str, ...] | None:
    """The names that ``param`` of the command ``path`` (``"attack"``) completes from, or None."""
    keys = list(getattr(param, "opts", ())) or [param.name]
    for k in keys:
        if (path, k) in BY_COMMAND:
            return BY_COMMAND[(path, k)]
    for k in keys:
        if k in BY_FLAG:
            return BY_FLAG[k]
    return None


def attach(command, path: str = "") -> None:
    """Give every parameter of ``command`` and its subcommands that takes registered names a completer."""
    for p in command.params:
        found = choices_for(path, p)
        if found is not None and getattr(p, "_custom_shell_complete", None) is None:
            p._custom_shell_complete = _completer(found)
    for name, sub in getattr(command, "commands", {}).items():
        attach(sub, f"{path} {name}".strip())


class CompletingGroup(TyperGroup):
    """The root group: Typer's group with the value completers of :func:`attach` on every subcommand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        attach(self)
