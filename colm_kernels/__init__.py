"""Compute kernels for the two places where the chain rule lives: the chain linear and the
per-chain RMSNorm. Each kernel folder holds an obviously-correct reference, a fast PyTorch
path for CPU, and (where written) a Triton path for CUDA, behind one dispatching function.

Set COLM_KERNELS=reference to force the reference implementations everywhere (debugging,
and the ground truth the tests compare against)."""
