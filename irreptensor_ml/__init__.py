"""irreptensor_ml: equivariant graph networks that predict crystal tensors as irreps.

Sub-packages: ``data`` (records -> graphs -> batches), ``model`` (trunk, heads),
``train`` (Lightning module, strategies), ``cli``.
"""

__all__ = []
