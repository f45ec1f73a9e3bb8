"""Write docs/settings.md, the settings reference, from the code: every pipeline parameter
(router_tasks/core/params.py) and every TELA_* environment variable
(router_tasks/core/settings.py).

    python scripts/settings_doc.py           # (re)write docs/settings.md
    python scripts/settings_doc.py --check   # exit 1 when docs/settings.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from router_tasks.core.settings import markdown
from router_tasks.routers import ROUTERS

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def render() -> str:
    """The reference as it should read now (router_type's choices: the router registry)."""
    return markdown(enums={"router_type": sorted(ROUTERS)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare: exit 1 when the file is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/settings_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
