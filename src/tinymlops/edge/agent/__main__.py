"""``python -m tinymlops.edge.agent`` (see :mod:`tinymlops.edge.agent.command`)."""

import sys

from tinymlops.edge.agent.command import main

sys.exit(main())
