#!/usr/bin/env bash
# FID against network evaluations (NFE) for several samplers on one checkpoint:
#   scripts/fid_vs_nfe.sh outputs/train/<run>/checkpoints/last.ckpt [extra evaluate overrides...]
#   SAMPLERS="ddpm ddim dpm_solver edm_heun" scripts/fid_vs_nfe.sh CKPT n=500     # a DDPM (VP) checkpoint
# One `evaluate -m` sweep per sampler at about 10, 20, 35, 50 and 100 evaluations per image (Heun: 2N - 1 for N
# levels, so N = 5, 10, 18, 25, 50 give 9, 19, 35, 49, 99; edm_euler also runs as its ODE, eta=0); each sweep
# folder gets sweep.md, sweep.csv and fid_vs_nfe.png. SAMPLERS defaults to the EDM samplers; features=classifier
# n=1000 unless overridden. A guided run (guidance=w, w != 1) costs two evaluations per step.
set -euo pipefail
ckpt=${1:?usage: [SAMPLERS="..."] $0 CKPT [overrides...]}
shift
common=(ckpt="$ckpt" features=classifier n=1000 "$@")
for sampler in ${SAMPLERS:-edm_heun edm_euler edm_dpm_solver}; do
  case $sampler in
    edm_heun) steps=5,10,18,25,50 ;;
    *) steps=10,20,35,50,100 ;;
  esac
  python -m ddpm_lab.evaluate -m "${common[@]}" sampler="$sampler" sampler.steps=$steps
  if [ "$sampler" = edm_euler ]; then
    python -m ddpm_lab.evaluate -m "${common[@]}" sampler=edm_euler sampler.eta=0 sampler.steps=$steps
  fi
done
