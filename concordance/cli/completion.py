"""``concordance completion bash|zsh``: a completion script made from the parser itself.

Why generated: the commands and flags are defined once, in the argparse tree;
a script written by hand would drift from it. The script maps each command
path (``""``, ``"kv"``, ``"kv get"``) to its subcommands and flags.
"""

from __future__ import annotations

import argparse
import shlex

__all__ = ["add_command", "script"]


def _walk(
    parser: argparse.ArgumentParser, path: str, out: dict[str, tuple[list[str], list[str]]]
) -> None:
    subs: list[str] = []
    flags: list[str] = []
    for action in parser._actions:
        flags += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                subs.append(name)
                _walk(child, f"{path} {name}".strip(), out)
    out[path] = (subs, sorted(set(flags)))


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    table: dict[str, tuple[list[str], list[str]]] = {}
    _walk(parser, "", table)
    cmds = "\n".join(
        f"  [{shlex.quote(p)}]={shlex.quote(' '.join(s))}" for p, (s, _) in table.items()
    )
    opts = "\n".join(
        f"  [{shlex.quote(p)}]={shlex.quote(' '.join(f))}" for p, (_, f) in table.items()
    )
    head = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    load = f"source <(concordance completion {shell})"
    return f"""{head}# concordance completion ({shell}); load with: {load}
declare -A _concordance_cmds=(
{cmds}
)
declare -A _concordance_opts=(
{opts}
)
_concordance() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="${{COMP_WORDS[i]}}"
    [[ "$w" == -* ]] && continue
    [[ " ${{_concordance_cmds[$path]}} " == *" $w "* ]] && path="${{path:+$path }}$w"
  done
  COMPREPLY=($(compgen -W "${{_concordance_cmds[$path]}} ${{_concordance_opts[$path]}}" -- "$cur"))
}}
complete -o default -F _concordance concordance
"""


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(run=None)  # main() runs it: it needs the whole parser
