#!/bin/sh
# Rebuild the generator shipped as hpcxtal/data/generator_default.pt (and the VAE baseline
# used by benchmarks/bench_generate.py) from the bundled SACADA set. One command, seeds fixed;
# tens of minutes on 2 CPU cores (the two models train one thread each). Usage: scripts/train_default_model.sh [BUILD_DIR]
set -eu
BUILD=${1:-build/generator}
HPCXTAL=${HPCXTAL:-hpcxtal}
mkdir -p "$BUILD"
$HPCXTAL prepare sacada --size full --seed 0 -o "$BUILD/train_full.h5"
$HPCXTAL train "$BUILD/train_full.h5" --seed 0 --epochs 60 --batch-size 512 --hidden 256 --threads 1 -o "$BUILD/cvae.pt"
$HPCXTAL train "$BUILD/train_full.h5" --seed 0 --epochs 60 --batch-size 512 --hidden 256 --threads 1 --model vae -o "$BUILD/vae.pt"
cp "$BUILD/cvae.pt" hpcxtal/data/generator_default.pt
echo "wrote hpcxtal/data/generator_default.pt; benchmark with:"
echo "  python benchmarks/bench_generate.py --training $BUILD/train_full.h5 --cvae $BUILD/cvae.pt --vae $BUILD/vae.pt"
