#!/usr/bin/env bash
# The checks that need a GPU, as one script for a machine lent with one (see the device tool's
# README): exact resume on CUDA with background saves (pinned-memory snapshots, the copy on a
# stream of its own), with trainer.compile and with trainer.strategy=fsdp on NCCL, then the
# benchmarks on the GPU. Prints everything;
# writes the log to $OUT/gpu_check.log when OUT is set.
#
# That machine's python has torch but not hydra-core, omegaconf or antlr4. Before the call,
# here, in the repository's root (Python 3.12 there; antlr4 4.9.3 has no wheel on the index):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
# then run `bash benchmarks/gpu_check.sh` there, carrying .whl (about 9 minutes with the start).
# `GPU_CHECK_DEVICE=cpu GPU_CHECK_SKIP_BENCHMARKS=1 bash benchmarks/gpu_check.sh` tries the script on a CPU.
set -u
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-cuda}
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
exec > >(tee "${OUT:-/tmp}/gpu_check.log") 2>&1
[ "$device" = cuda ] && nvidia-smi -L && python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"

runs=/tmp/gpu_runs
rm -rf $runs
train() { python3 -m framework trainer.device=$device "$@" > /dev/null 2>&1; }

# 1. A SIGTERM mid-run with a background save, resumed: the same bits as a run never stopped.
for precision in 32 bf16 16-mixed; do
    common=(determinism=strict trainer.precision=$precision checkpoint.every_n_steps=7)
    train hydra.run.dir=$runs/straight-$precision "${common[@]}"
    python3 -m framework trainer.device=$device hydra.run.dir=$runs/stopped-$precision "${common[@]}" \
        checkpoint.async_save=true > /dev/null 2>&1 &
    pid=$!
    for _ in $(seq 3000); do grep -qs '"step": 200,' $runs/stopped-$precision/metrics.jsonl && break; sleep 0.01; done
    kill -TERM $pid
    wait $pid
    echo "precision $precision: stopped with exit $? (143: SIGTERM)"
    train hydra.run.dir=$runs/stopped-$precision resume=auto determinism=strict
    python3 -m framework.compare $runs/straight-$precision $runs/stopped-$precision
done

# 2. A larger model whose copy overlaps real GPU work: background saves change nothing, and a
#    resume from one of their mid-run files ends where a straight run ends.
big=(model=mlp "model.hidden=[4096,4096,4096]" trainer.max_epochs=4 checkpoint.every_n_steps=5 determinism=strict)
train hydra.run.dir=$runs/big-sync "${big[@]}"
train hydra.run.dir=$runs/big-async "${big[@]}" checkpoint.async_save=true
python3 -m framework.compare $runs/big-sync $runs/big-async
cp -r $runs/big-async $runs/big-resumed  # its history is cut back to the file's step
train hydra.run.dir=$runs/big-resumed "${big[@]}" resume=$runs/big-resumed/checkpoints/step_00000035.pt
python3 -m framework.compare $runs/big-sync $runs/big-resumed
python3 -m framework.ckpt verify $runs/big-async | tail -1

# 3. trainer.compile: a compiled run stopped mid-epoch and resumed in a new process ends as one
#    never stopped, at seeded (inductor may benchmark kernels as it compiles, and could choose
#    others in the new process) and at strict (torch's deterministic algorithms put inductor in its
#    deterministic mode, which skips the choices that change the numbers).
for level in seeded strict; do
    compiled=(model=mlp "model.hidden=[1024,1024]" trainer.max_epochs=2 trainer.compile=true determinism=$level)
    train hydra.run.dir=$runs/compiled-$level "${compiled[@]}"
    train hydra.run.dir=$runs/compiled-stopped-$level "${compiled[@]}" trainer.max_steps=30
    train hydra.run.dir=$runs/compiled-stopped-$level "${compiled[@]}" resume=auto trainer.max_steps=null
    echo "compiled, determinism=$level:"
    python3 -m framework.compare $runs/compiled-$level $runs/compiled-stopped-$level
done

# 4. trainer.strategy=fsdp on NCCL (one GPU: a one-rank group): stopped mid-epoch, with background
#    saves too, resumed from its checkpoint directory, it ends as a run never stopped; the directory
#    verifies and converts to one file.
sharded=(model=mlp "model.hidden=[1024,1024]" trainer.max_epochs=2 trainer.strategy=fsdp determinism=strict)
train hydra.run.dir=$runs/fsdp "${sharded[@]}"
for save in false true; do
    train hydra.run.dir=$runs/fsdp-stopped-$save "${sharded[@]}" checkpoint.async_save=$save trainer.max_steps=30
    train hydra.run.dir=$runs/fsdp-stopped-$save "${sharded[@]}" resume=auto trainer.max_steps=null
    echo "fsdp, async_save=$save:"
    python3 -m framework.compare $runs/fsdp $runs/fsdp-stopped-$save
done
python3 -m framework.ckpt verify $runs/fsdp | tail -1
python3 -m framework.ckpt convert $runs/fsdp/checkpoints/last $runs/fsdp-last.pt && echo "converted to one file"

# 5. The benchmarks (tables for the README).
[ "${GPU_CHECK_SKIP_BENCHMARKS:-}" ] && exit 0
python3 benchmarks/overhead.py --device $device
python3 benchmarks/overhead.py --device $device --data-on-device
python3 benchmarks/async_save.py --device $device
python3 benchmarks/checkpoint_io.py
python3 benchmarks/compile.py --device $device
