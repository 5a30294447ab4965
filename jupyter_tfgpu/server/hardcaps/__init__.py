"""Caps the NVIDIA driver enforces, per kernel (``TFGPU.hard_caps``), and the ``off`` mode.

``service.HardCaps`` (one per server) picks the mode and drives its mechanism; ``modes.MODES``
is the table of modes; ``mechanism.Mechanism`` the interface each implements; ``framework``
the ``off`` mode, which every mechanism falls back on; ``host`` what the machine offers;
``verified.VERIFIED`` the mechanisms a GPU run has shown holding (what level ``driver`` needs).
"""
