"""`python -m twossp_core.cli ...`: the `twossp` command."""

import sys

from twossp_core.cli.main import main

sys.exit(main())
