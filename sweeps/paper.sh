#!/usr/bin/env bash
# Every experiment of the paper, baselines first (docs/FIGURES.md: which file makes which figure). Safe to rerun (finished stages are skipped)
# and to run twice at once on one machine (each run directory is locked while in use).
#   sweeps/paper.sh [--out DIR] [--root DIR]
set -uo pipefail
here="$(dirname "$0")"  # not cd: relative --out / --root stay relative to the caller
status=0
for f in el2n_scores.toml fig2_baselines_cifar10.toml fig2_3_cifar10.toml \
         fig2_baselines_cifar100.toml fig2_3_cifar100.toml \
         fig2_baselines_cinic10.toml fig2_3_cinic10.toml fig14a_cinic10_tr200.toml \
         fig4_15_noisy_baselines_cifar10.toml fig4_15_label_noise_cifar10.toml \
         fig12_forgetting_cifar10.toml fig11a_lmc_scores_cifar100.toml \
         fig11b_lmc_scores_cinic10.toml fig10_el2n_scores.toml fig10_lmc_scores.toml \
         onset_lmc_cifar10.toml fig5a_lmc_all_cifar100.toml fig5a_lmc_cifar100.toml \
         fig5b_lmc_all_cinic10.toml fig5b_lmc_cinic10.toml \
         fig6_warmup_all_cifar10.toml fig6_warmup_easy_cifar10.toml \
         fig6_warmup_hard_random_cifar10.toml fig7_grads_easy_cifar100.toml \
         fig7_grads_all_cifar100.toml fig8_grads_cifar10.toml \
         fig9_errors_all_cinic10.toml fig9_errors_easy_cinic10.toml; do
  lthfast sweep "$here/$f" "$@" || status=1   # a failed sweep is reported; the others still run
done
exit $status
