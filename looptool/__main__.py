import sys

from looptool.app.cli import main

sys.exit(main())
