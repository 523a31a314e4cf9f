"""taskonomy-ray: Taskonomy (Zamir et al., CVPR 2018) on Ray."""

__version__ = "0.1.0"
