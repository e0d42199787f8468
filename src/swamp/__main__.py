import sys

from swamp.cli import main

sys.exit(main())
