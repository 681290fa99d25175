"""vegan: optimal-transport generative models (AE-OT, AE-OT-GAN, the VEGAN cookbook)."""

__version__ = "0.2.0"
