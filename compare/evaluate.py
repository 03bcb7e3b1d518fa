"""``python -m compare.evaluate``: the standalone evaluator, :func:`compare.metrics.evaluate.main` (the
scoring protocol and the metrics are in :mod:`compare.metrics`)."""
import sys

from .metrics.evaluate import main

if __name__ == "__main__":
    main(sys.argv[1:])
