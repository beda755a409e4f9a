"""Side-by-side benchmarks of lthfast against stock ffcv, torch DataLoader and a plain PyTorch loop.

Every section measures lthfast and its baselines in the same process run, on the same data, and
reports medians over repeats; ``python -m benchmarks`` writes them all to BENCHMARKS.md.

    python -m benchmarks                       # everything, writes BENCHMARKS.md
    python -m benchmarks --quick               # smoke run with small sizes
    python -m benchmarks --only loader,packed  # some sections, printed (no file unless --out)
    python -m benchmarks --only gpu            # full-scale GPU figures (needs CUDA)

Sections (one module each): ``loader``, ``train_step``, ``packed``, ``end_to_end``, ``gpu``.
"""
