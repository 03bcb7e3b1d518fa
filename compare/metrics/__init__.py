"""The metrics library, apart from the harness: FID (and FID_inf), KID, precision/recall and
density/coverage, the Inception Score, the feature networks (the domain classifier, the FID InceptionV3,
DINOv2 ViT-L/14), image sets made elsewhere, and the scoring protocol with the standalone evaluator
(``compare.metrics.evaluate``; its command stays ``python -m compare.evaluate``). Its modules import only
``nextscale``, torch, numpy, scipy, pillow and the standard library (``tests/test_imports.py``)."""
