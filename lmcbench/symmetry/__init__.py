"""Weight-space symmetries of transformers (GLMC section 2): declarative specs, group elements, apply."""
from lmcbench.symmetry.groups import (
    ADMITS,
    apply,
    perm_matrix,
    random_invertible,
    random_orthogonal,
    random_permutation,
    random_semiperm,
    sample_element,
)
from lmcbench.symmetry.spec import (
    GROUPS,
    Action,
    AttentionSite,
    Layout,
    MlpSite,
    NormSite,
    Ref,
    Space,
    SymmetrySpec,
    spec_from_layout,
)
from lmcbench.symmetry.specs import architecture_for, layout_for, spec_for

__all__ = [
    "ADMITS", "GROUPS", "Action", "AttentionSite", "Layout", "MlpSite", "NormSite", "Ref", "Space",
    "SymmetrySpec", "apply", "architecture_for", "layout_for", "perm_matrix",
    "random_invertible", "random_orthogonal", "random_permutation", "random_semiperm",
    "sample_element", "spec_for", "spec_from_layout",
]
