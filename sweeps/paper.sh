#!/usr/bin/env bash
# Every experiment of the paper, baselines first. Safe to rerun (finished stages are skipped)
# and to run twice at once on one machine (each run directory is locked while in use).
#   sweeps/paper.sh [--out DIR] [--root DIR]
set -uo pipefail
here="$(dirname "$0")"  # not cd: relative --out / --root stay relative to the caller
status=0
for f in el2n_scores.toml fig2_baselines_cifar10.toml fig2_3_cifar10.toml \
         fig2_baselines_cifar100.toml fig2_3_cifar100.toml \
         fig2_baselines_cinic10.toml fig2_3_cinic10.toml fig14a_cinic10_tr200.toml \
         fig4_15_noisy_baselines_cifar10.toml fig4_15_label_noise_cifar10.toml \
         fig12_forgetting_cifar10.toml fig11_lmc_scores_cinic10.toml \
         fig1_lmc_onset_cifar10.toml fig5_lmc_all_cifar100.toml fig5_lmc_cifar100.toml \
         fig6_warmup_all_cifar10.toml fig6_warmup_cifar10.toml fig7_8_grads.toml \
         fig9_errors_cifar10.toml; do
  lthfast sweep "$here/$f" "$@" || status=1   # a failed sweep is reported; the others still run
done
exit $status
