"""``python -m infra.exchange up|down|status|serve``: see :mod:`infra.exchange.daemon`."""

import sys

from infra.exchange.daemon import main

sys.exit(main())
