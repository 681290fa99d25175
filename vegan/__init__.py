"""vegan: optimal-transport generative models (AE-OT, AE-OT-GAN, the VEGAN cookbook)."""

from vegan.signals import resolve_signal_path

__version__ = "0.2.0"

resolve_signal_path()  # before any AMX use: see vegan.signals
