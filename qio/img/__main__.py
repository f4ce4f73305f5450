import sys

from qio.img.main import main

sys.exit(main())
