"""ACE track: approximately equivariant networks by constrained optimisation (Manolache, Chamon, Niepert 2025).

Submodules: `constrained` (primal–dual API), `layers` (mixed layers f_eq + γ f_neq), `models` (escnn
steerable CNN, plain-torch EGNN, relaxed group conv), `nbody` (charged 5-body simulator), `baselines`,
`metrics` (equivariance errors), `jobs` (experiment jobs), `report` (tables and figures).
escnn is imported lazily inside `models`, never at import of this package.
"""
