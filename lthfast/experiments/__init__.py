"""Experiments: IMP with rewinding on data subsets, and per-example scores (EL2N, forgetting)."""
