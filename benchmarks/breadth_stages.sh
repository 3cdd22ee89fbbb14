#!/usr/bin/env bash
# The breadth and stages studies (issue 35) in the order they are run: optimizer rows first (cheap), then
# the learners where the question is open (where plain Adam fails: does a learned policy rescue it?),
# then the rest. Each command resumable (finished runs are skipped). Run from a
# frozen install of the committed code so that editing the checkout cannot change runs in flight:
#
#   pip install --no-deps --target /tmp/frozen . && cd /tmp && PYTHONPATH=/tmp/frozen bash <repo>/benchmarks/breadth_stages.sh <repo>
#
# Assembly-v0's stages cells are the breadth study's runs (the same jobs): `share` copies them.
set -uo pipefail
R="${1:?the repository}/results"
C="python -m diffenvs.cli compare --no-progress --workers ${WORKERS:-1}"
phase() { echo "=== $(date +%T) $*"; "$@"; local rc=$?; echo "=== $(date +%T) exit $rc"; }
share() {
  mkdir -p "$R/stages/runs"
  for run in "$R"/breadth/runs/Assembly-*; do
    [ -f "$run/job.json" ] && [ ! -e "$R/stages/runs/$(basename "$run")" ] && cp -r "$run" "$R/stages/runs/"
  done; true
}
phase $C --config breadth --out-dir "$R/breadth" --methods adam adam_cd cem
phase $C --config breadth --out-dir "$R/breadth" --methods ppo shac --envs DiffEnvs/Assembly-v0
share
for env in TripleMove1 TripleMove2 TripleMove3; do
  phase $C --config stages --out-dir "$R/stages" --methods adam adam_cd cem --envs DiffEnvs/$env-v0
done
phase $C --config stages --out-dir "$R/stages" --methods ppo shac --envs DiffEnvs/TripleMove2-v0
# Then the learners where plain Adam fails (does a policy rescue it?): Pinch (CEM ahead), Chopsticks and
# Table (one instance each lost), TripleMove3 (two pieces never touched); then the stages optimizers of
# Assembly2/3 and the learners where gradients already win.
for env in Pinch Chopsticks Table; do
  phase $C --config breadth --out-dir "$R/breadth" --methods ppo shac --envs DiffEnvs/$env-v0
done
phase $C --config stages --out-dir "$R/stages" --methods ppo shac --envs DiffEnvs/TripleMove3-v0
for env in Assembly2 Assembly3; do
  phase $C --config stages --out-dir "$R/stages" --methods adam adam_cd cem --envs DiffEnvs/$env-v0
done
phase $C --config stages --out-dir "$R/stages" --methods ppo shac --envs DiffEnvs/TripleMove1-v0
for env in Writer TripleMove Torus Rope; do
  phase $C --config breadth --out-dir "$R/breadth" --methods ppo shac --envs DiffEnvs/$env-v0
done
phase $C --config breadth --out-dir "$R/breadth" --methods apg
echo "=== all done $(date +%T)"
