"""Data: sources (one module per dataset) -> build (arrays, betons, meta) -> subsets -> loaders."""
