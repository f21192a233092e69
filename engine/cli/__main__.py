"""``python -m ssbx.engine.cli`` = ``ssbx``."""

import sys

from ssbx.engine.cli.main import main

sys.exit(main())
