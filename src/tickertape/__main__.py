"""``python -m tickertape``: the same as the ``tickertape`` command."""

import sys

from tickertape.cli.main import main

sys.exit(main())
