import sys

from raylhf.orchestration.cli import main

sys.exit(main())
