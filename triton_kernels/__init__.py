"""Plain Triton kernels for surge's GPU attention backend, free of JAX.

In: pointers to contiguous row-major tensors (torch tensors under Triton's CPU
interpreter in the tests, jax arrays through ``jax_triton.triton_call`` on a
GPU) plus compile-time constants chosen by ``launch``. Out: the K/V page cache
written in place and the ragged paged-attention output.

- ``paged_attention``: the two ``@triton.jit`` kernels (K/V write, attention).
- ``launch``: pure-Python choice of grids and constexprs shared by every caller.

Importing this package imports nothing heavy; ``paged_attention`` needs triton.
"""
