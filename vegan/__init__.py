"""vegan: optimal-transport generative models (AE-OT, AE-OT-GAN, the VEGAN cookbook)."""

__version__ = "0.1.0"
