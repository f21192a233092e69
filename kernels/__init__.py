"""ssbx.kernels: pure, jit-able, differentiable array kernels.

Kernels never import :mod:`ssbx.engine`; they take arrays and return arrays.
Array axis convention everywhere: axis 0 is x, axis 1 is y, axis 2 is z.
"""
