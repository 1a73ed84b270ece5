"""Devices and clocks: audio in, window, camera, OSC, sound, parameters; the live, render and capture loops.

May import :mod:`engine` and :mod:`scenes`. So far: :mod:`installation.vad` (voice-activity gate) and
:mod:`installation.render` (``run.py render``: offline video with the frame-counter clock).
"""
