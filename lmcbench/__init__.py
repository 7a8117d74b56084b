"""lmcbench: reproducibility harness for LMC of Transformers and MoE, and approximately equivariant networks."""
__version__ = "0.1.0"
