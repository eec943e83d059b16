#!/usr/bin/env bash
# The whole job on this machine, on demo data the project makes itself: no download but pip's.
#
#   ./run_local.sh
#
# Creates .venv (if absent), installs requirements.txt and this package (`pip install -e .`, which
# gives the `beam-embeddings` command in .venv/bin), writes the demo data into demo_data/,
# trains the demo text model, runs the embedding job into demo_output/, then prints where the
# Parquet went and a few nearest neighbours per modality. Takes a few minutes on 2 cores.
# Keras' settings and cache go to .keras_home/ in this folder, not to ~/.keras.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}
VENV=.venv
DATA=demo_data
OUT=demo_output

export KERAS_HOME="$PWD/.keras_home"
export TF_CPP_MIN_LOG_LEVEL=2
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

if [[ ! -x "$VENV/bin/python" ]]; then
    step "Creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { echo "error: $PYTHON is older than Python 3.10 (set PYTHON=python3.11)" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
fi
step "Installing requirements.txt and this package (editable, with the beam-embeddings command) into $VENV"
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
mkdir -p "$KERAS_HOME"
py() { "$VENV/bin/python" "$@"; }

step "Generating the demo data into $DATA/ (reviews, shape images, and the image model)"
py -m examples.demo data --output "$DATA"

step "Training the demo text model -> $DATA/text_model.keras"
py -m pipeline train-text --text-input "$DATA/text/reviews.jsonl" --output "$DATA/text_model.keras" \
    --epochs 20 > "$DATA/text_model.train-text.log" 2>&1 || { cat "$DATA/text_model.train-text.log"; exit 1; }
py - "$DATA/text_model.training.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"text model: val accuracy {r['val_accuracy']:.3f}, train accuracy {r['train_accuracy']:.3f} "
      f"({r['train_records']} train / {r['val_records']} validation records, {r['bad_records']} bad skipped, "
      f"{r['epochs_run']} epochs, {r['elapsed_seconds']:.1f} s)")
PY

step "Running the embedding job -> $OUT/"
"$VENV/bin/beam-embeddings" run --output "$OUT" \
    --text-input "$DATA/text/reviews.jsonl" --text-model "$DATA/text_model.keras" \
    --image-input "$DATA/images/MANIFEST.csv" --image-model "$DATA/image_model.keras" --image-layer features \
    --passthrough label

step "Nearest neighbours (cosine) in $OUT/"
py -m examples.demo neighbors --output "$OUT" --queries 4

printf '\nDone in %d s. Embeddings: %s/text/ and %s/image/, dead letters: %s/errors/, summary: %s/_MANIFEST.json\n' \
    "$((SECONDS - started))" "$OUT" "$OUT" "$OUT" "$OUT"
