import sys

from mige_bench.cli import main

sys.exit(main())
