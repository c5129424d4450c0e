#!/usr/bin/env python
"""Entry point: `python train.py --task lm [--config FILE.yaml] [--set section.field=value ...]`."""
import sys

from raytrain_llm.cli import main

if __name__ == "__main__":
    sys.exit(main())
