"""`python -m inbound` is the `inbound` command."""

import sys

from inbound.cli.main import main

sys.exit(main())
