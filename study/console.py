"""``vae-study COMMAND …``: one console script for the project's command lines (``pip install -e .`` puts it on
PATH). ``python -m study.run`` and the other ``python -m`` forms stay the documented ones; each command here is
exactly one of them:

- ``vae-study run STUDY …``      = ``python -m study.run STUDY …``
- ``vae-study resume STUDY …``   = ``python -m study.run STUDY … --resume``
- ``vae-study evaluate …``       = ``python -m study.evaluate …``
- ``vae-study report …``         = ``python -m analysis report …``
- ``vae-study download …``       = ``python -m vae_attention.data download …``

The commands are named by module and imported when chosen: ``analysis`` stands beside ``study`` in the layers
(tests/test_import_layers.py), so the dispatcher does not import it, and each command loads only what it needs.
"""

from __future__ import annotations

import importlib
import sys

# command → (module whose main(argv) runs it, arguments put before the user's, arguments put after them)
COMMANDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "run": ("study.run", (), ()),
    "resume": ("study.run", (), ("--resume",)),
    "evaluate": ("study.evaluate", (), ()),
    "report": ("analysis.cli", ("report",), ()),
    "download": ("vae_attention.data.__main__", ("download",), ()),
}
EQUIVALENTS = {
    "run": "python -m study.run STUDY …",
    "resume": "python -m study.run STUDY … --resume",
    "evaluate": "python -m study.evaluate …",
    "report": "python -m analysis report …",
    "download": "python -m vae_attention.data download …",
}
USAGE = "usage: vae-study {" + ",".join(COMMANDS) + "} …\n\n" + "\n".join(
    f"  vae-study {name:<9} = {EQUIVALENTS[name]}" for name in COMMANDS) + "\n\n" \
    "`vae-study COMMAND --help` shows the options of each.\n"


def main(argv: list[str] | None = None) -> int:
    """Run ``COMMAND``'s module's ``main`` with the rest of ``argv``; its exit code (2 for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see vae-study --help)",
              file=sys.stderr)
        return 2
    module, before, after = COMMANDS[command]
    # `vae-study resume STUDY --help` shows study.run's help, not a second --resume error
    if any(a in ("-h", "--help") for a in rest):
        after = ()
    return importlib.import_module(module).main([*before, *rest, *after])


if __name__ == "__main__":
    sys.exit(main())
