import sys

from swamp.app.cli import main

sys.exit(main())
