"""The built-in mini-Taskonomy: procedural indoor scenes rendered with exact ground truth.

`synthesize(SynthConfig(...))` writes a dataset in the release's layout (see `layout.py`), so the
same loader reads it and a real Taskonomy download. Data layer: numpy, SciPy, scikit-image, PIL.
"""

from __future__ import annotations

from .synth import SynthConfig, SynthResult, synthesize

__all__ = ["SynthConfig", "SynthResult", "synthesize"]
