"""Make a virtual environment built under a staging root run from wherever it is copied.

    python relocate_venv.py STAGED_VENV FINAL_VENV

install-agent.sh --root DIR builds the agent's venv at DIR/opt/moe2/venv; on the device it runs
at /opt/moe2/venv. pip writes the staging path into every script's ``#!`` line; this replaces
those lines by a ``/bin/sh`` launcher that runs the ``python`` beside the script (the launcher
uv writes in its relocatable venvs), so the scripts work from the staging tree and from any copy
of it. The activate scripts (sourced by a person, on the device) get the final path. The venv's
``python`` is a link to the system's python3 and pyvenv.cfg names its folder: the device needs
the same python3 at the same path, and the same architecture for compiled packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

LAUNCHER = (
    "#!/bin/sh\n"
    "'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")/python\" \"$0\" \"$@\"\n"
    "' '''\n"
)


def relocate_script(text: str, staged: Path, final: str) -> str | None:
    """The script's new text, or None when it does not name the staging path."""
    python = f"{staged}/bin/python"
    lines = text.splitlines(keepends=True)
    if not lines:
        return None
    if lines[0].startswith("#!" + python):
        return LAUNCHER + "".join(lines[1:])  # pip's #! line
    if len(lines) > 2 and lines[0] == "#!/bin/sh\n" and lines[1].startswith(f"'''exec' \"{python}"):
        return LAUNCHER + "".join(lines[3:])  # pip's launcher for a #! line too long for the kernel
    if str(staged) in text:
        return text.replace(str(staged), final)  # activate, activate.fish, activate.csh
    return None


def relocate(staged: Path, final: str) -> list[Path]:
    """Rewrite the venv's bin/ scripts; returns those rewritten."""
    changed = []
    for path in sorted((staged / "bin").iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # a binary
        new = relocate_script(text, staged, final)
        if new is not None and new != text:
            path.write_text(new)  # keeps the file's mode
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    staged = Path(argv[0]).resolve()
    if not (staged / "pyvenv.cfg").is_file():
        print(f"relocate_venv.py: {staged} is not a virtual environment", file=sys.stderr)
        return 1
    changed = relocate(staged, argv[1])
    print(f"relocate_venv.py: {len(changed)} script(s) in {staged}/bin now run as {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
