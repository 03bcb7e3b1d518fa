"""var: VAR (Tian et al., NeurIPS 2024) on the shared scale-wise backbone: the multi-scale residual VQ
tokenizer (``var.tokenizer``), the discrete head with top-k/top-p and classifier-free guidance
(``var.model``), and their training (``var.pipeline``)."""
