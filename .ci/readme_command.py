"""Print one of the two commands README.md opens with, so that CI runs exactly what a newcomer runs.

    python3 .ci/readme_command.py install   # the first line, without its `&& atoll quickstart` (the tests run it)
    python3 .ci/readme_command.py test      # the second line

The README's first ```bash block must hold those two lines; anything else fails here, loudly, before CI installs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

QUICKSTART = " && atoll quickstart"


def commands(readme: str) -> dict[str, str]:
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    lines = [line.split("#", 1)[0].strip() for line in (block.group(1) if block else "").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) != 2 or not lines[0].endswith(QUICKSTART):
        raise SystemExit("README.md's first ```bash block must be two commands: `<install> && atoll quickstart` "
                         f"and the test command; found {lines!r}")
    return {"install": lines[0].removesuffix(QUICKSTART), "test": lines[1]}


if __name__ == "__main__":
    print(commands((Path(__file__).resolve().parent.parent / "README.md").read_text())[sys.argv[1]])
