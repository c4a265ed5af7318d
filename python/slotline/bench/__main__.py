"""``python -m slotline.bench``."""

import sys

from slotline.bench.runner import main

sys.exit(main())
