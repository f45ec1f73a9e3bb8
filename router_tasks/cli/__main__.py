"""`python -m router_tasks.cli`: the same as `tela`."""

import sys

from router_tasks.cli import main

sys.exit(main())
