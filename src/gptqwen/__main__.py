import sys

from gptqwen.cli import main

sys.exit(main())
