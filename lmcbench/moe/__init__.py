"""MoE-LMC track: the G(n) symmetry of MoE layers, Algorithm 1 matching, barrier metrics and jobs.

The MoE layer itself lives in `lmcbench.models.moe` (so `build_model` can rebuild MoE checkpoints).
"""
