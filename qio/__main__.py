import sys

from qio.cli import main

sys.exit(main())
