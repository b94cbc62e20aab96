"""rnn_jax: recurrent neural networks as pure JAX functions.

Importing the package (or any module in it) changes no process state: XLA flags, the glibc
allocator settings and log filters are set by the entry points (`rnn_jax.cli.setup_process`).
"""
