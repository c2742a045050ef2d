"""robcli: robustness without accuracy loss, and proofs of how robust a classifier is."""

__version__ = "0.1.0"
