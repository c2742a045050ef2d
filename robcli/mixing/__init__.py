"""Mixing classifiers and adaptive smoothing (papers 002 and 003/004): fixed-alpha mixtures, their certified
radii, the adaptive mixing network alpha_theta(x), its training, and adaptive attacks (settings A-D).

Library only: no typer/rich; errors are ``robcli.errors`` types. Import submodules directly:
``robcli.mixing.mixed``, ``.alphanet``, ``.radii``, ``.attacks``, ``.train``, ``.io``, ``.sweep``.
"""
