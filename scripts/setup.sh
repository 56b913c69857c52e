#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the suite and the tests need.
# Idempotent: a second run only checks that the pinned packages are present.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HEAR_DYMN_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
pip_install() {
  # pip's notes about the venv location are filtered out; a failing pip still fails this script (pipefail)
  "${PIP[@]}" install "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
pip_install --upgrade pip

echo "[setup] torch 2.9.1 + torchaudio 2.9.1"
pip_install "torch==2.9.1" "torchaudio==2.9.1"

echo "[setup] hear_dymn with the eval, dev and ray extras"
pip_install -e ".[eval,dev,ray]"

# hearvalidator 2021.0.6 declares Python < 3.9; the resolver would silently fall back to 2021.0.2, which rejects
# 32 kHz models. Its real dependencies (torch, tensorflow, numpy) come from the dev extra above.
echo "[setup] hearvalidator 2021.0.6"
pip_install --no-deps --ignore-requires-python "hearvalidator==2021.0.6"

# hearbaseline 2021.1.1 (HEAR's baseline modules; the tests run hear:hearbaseline.torchcrepe) pins numpy 1.19 and
# numba 0.48 in its metadata; what its CREPE module imports (torch, torchcrepe, librosa) comes from the dev extra.
echo "[setup] hearbaseline 2021.1.1"
pip_install --no-deps "hearbaseline==2021.1.1"

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import importlib.util
import joblib, matplotlib, pandas, pytest, ray, scipy, sklearn, soundfile, torch, torchaudio, tqdm  # noqa: F401
import sed_eval, dcase_util  # noqa: F401  (HEAR event scores)
import hear_dymn  # noqa: F401
missing = [name for name in ("tensorflow", "hearvalidator", "hearbaseline", "torchcrepe")
           if importlib.util.find_spec(name) is None]
assert not missing, f"not installed: {missing}"
assert torch.__version__.startswith("2.9"), torch.__version__
assert torchaudio.__version__.startswith("2.9"), torchaudio.__version__
assert md.version("hearvalidator") == "2021.0.6", md.version("hearvalidator")
print(f"[setup] ok: torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
      f"hearvalidator {md.version('hearvalidator')}, ray {ray.__version__}")
PY
