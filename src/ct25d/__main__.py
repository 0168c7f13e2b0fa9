"""`python -m ct25d`: the command line (how `torchrun` starts the ranks of a multi-GPU training)."""

import sys

from ct25d.cli import main

sys.exit(main())
