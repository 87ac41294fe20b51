#!/usr/bin/env bash
# prodcat entry point. Bootstraps .venv on first use (pinned requirements.txt + constraints.txt),
# then: ./run.sh all | test | docs | folds | train MODEL [--fold K] | submit | scores | ... [--data DIR] [--config FILE]
set -euo pipefail
# paths given on the command line mean what the user typed: relative to the caller's directory
export PRODCAT_CALLER_DIR="$PWD"
cd "$(dirname "$0")"
VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha"

bootstrap() {
  local want
  want=$(cat requirements.txt constraints.txt | sha1sum | cut -d' ' -f1)
  if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return 0
  fi
  echo "run.sh: installing the environment into $VENV (first run, or the pins changed) ..." >&2
  # changed pins rebuild the environment from scratch: a package dropped from requirements.txt
  # (a replaced build of the same module, say) must not linger beside its successor
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade "pip>=24"
  "$PY" -m pip install --quiet -r requirements.txt -c constraints.txt
  echo "$want" > "$STAMP"
}

bootstrap
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
cmd="${1:-all}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  test) exec "$PY" -m pytest "$@" ;;
  docs) exec "$PY" -m mkdocs build --strict --site-dir site "$@" ;;
  python) exec "$PY" "$@" ;;
  *) exec "$PY" -m prodcat "$cmd" "$@" ;;
esac
