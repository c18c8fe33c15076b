#!/usr/bin/env bash
# FID against network evaluations for each EDM sampler on one checkpoint (an EDM model, or any DDPM one):
#   scripts/edm_fid_vs_nfe.sh outputs/train/<run>/checkpoints/last.ckpt [extra evaluate overrides...]
# One `evaluate -m` sweep per sampler at about 10, 20, 35, 50 and 100 evaluations per image (Heun: 2N - 1 for N
# levels, so N = 5, 10, 18, 25, 50 give 9, 19, 35, 49, 99); each sweep folder gets sweep.md, sweep.csv and
# fid_vs_nfe.png. Defaults: features=classifier n=1000 (pass features=... n=... to change them).
set -euo pipefail
ckpt=${1:?usage: $0 CKPT [overrides...]}
shift
common=(ckpt="$ckpt" features=classifier n=1000 "$@")
python -m ddpm_lab.evaluate -m "${common[@]}" sampler=edm_heun sampler.steps=5,10,18,25,50
python -m ddpm_lab.evaluate -m "${common[@]}" sampler=edm_euler sampler.steps=10,20,35,50,100
python -m ddpm_lab.evaluate -m "${common[@]}" sampler=edm_euler sampler.eta=0 sampler.steps=10,20,35,50,100
python -m ddpm_lab.evaluate -m "${common[@]}" sampler=edm_dpm_solver sampler.steps=10,20,35,50,100
