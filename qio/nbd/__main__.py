"""``python -m qio.nbd`` runs qio-nbd."""

import sys

from qio.nbd.server import main

sys.exit(main())
