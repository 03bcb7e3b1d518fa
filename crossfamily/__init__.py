"""crossfamily: the models built from both families, so that ``var`` and ``flowar`` each import only
``nextscale``: VAR's quantizer on FlowAR's frozen autoencoder (``crossfamily.latent``, with its training)
and HART's hybrid, VAR's tokens plus a flow head for the residual they leave (``crossfamily.hybrid``)."""
