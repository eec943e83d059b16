"""`python -m pipeline`: see pipeline.cli."""

import sys

try:
    from pipeline.cli import main
except KeyboardInterrupt:  # Ctrl-C while TensorFlow/Beam are still being imported
    print("error: interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
