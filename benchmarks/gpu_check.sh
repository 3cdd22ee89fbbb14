#!/bin/bash
# The GPU check of the device tool (see docs/performance.md, "On a GPU"): run from the repository root on a
# CUDA machine that has Python and numpy but no Warp or Gymnasium and no network. Expects, copied
# beforehand: the warp-lang 1.19.0 wheel for Python 3.12 split into /tmp/w/warp.part-* (64 MiB
# travel per call), its checksum in .gpu/warp.sha256 and the gymnasium and farama-notifications
# wheels in .gpu/. Writes its figures under $OUT. Prepare the parts here with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d .whl warp-lang==1.19.0 gymnasium==1.4.0 farama-notifications==0.0.6
#   (cd .gpu && split -b 50M ../.whl/warp_lang-*.whl warp.part- && sha256sum ../.whl/warp_lang-*.whl | sed 's#../.whl/##' > warp.sha256)
REPO=$(pwd)
export PYTHONUNBUFFERED=1
T0=$(date +%s)
cd /tmp/w && cat warp.part-* > warp_lang-1.19.0-py3-none-manylinux_2_28_x86_64.whl && sha256sum -c $REPO/.gpu/warp.sha256 || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/warp_lang-*.whl $REPO/.gpu/gymnasium-*.whl $REPO/.gpu/farama*.whl || exit 4
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/proj $REPO 2>&1 | tail -2
export PYTHONPATH=/tmp/proj:/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
echo "installed after $(( $(date +%s) - T0 )) s"
mkdir -p /tmp/t && cp -r $REPO/tests $REPO/pyproject.toml /tmp/t/ && cd /tmp/t
timeout ${TEST_S:-90} python3 -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tee $OUT/pytest_cuda.log | tail -30
grep -q "failed" $OUT/pytest_cuda.log && echo "SOME CUDA TESTS FAILED"
echo "tests done after $(( $(date +%s) - T0 )) s"
cd /tmp
timeout ${BENCH_S:-150} python3 -m diffenvs.cli bench --device cuda --tasks RollingPin --no-startup --repeats 3 \
  --worlds 1,256,65536 --batched paper:1,64,256 --batched default:1,256,4096 --json $OUT/bench_cuda.json 2>&1 | tee $OUT/bench_cuda.log
echo "bench done after $(( $(date +%s) - T0 )) s"
timeout 25 python3 $REPO/benchmarks/profile_gpu.py --preset paper --worlds 64 --json $OUT/profile_paper64.json 2>&1 | tail -20
echo "profiles done after $(( $(date +%s) - T0 )) s"
