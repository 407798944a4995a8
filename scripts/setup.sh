#!/usr/bin/env bash
# One-command setup: creates .venv in the checkout and installs every pinned dependency
# (requirements.lock, with constraints.txt pinning the transitive ones) plus this package
# in editable mode. Idempotent: a stamp holding the hash of the lock files and setup.py
# makes a second run a no-op unless one of them changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.ir_guidance_setup"
want="$(cat requirements.lock constraints.txt setup.py setup.cfg | sha256sum | cut -d' ' -f1)"

# pyrealsense2 needs the system libusb. Installed when we can; otherwise say exactly how.
# (grep without -q reads all input: with pipefail, -q's early exit would fail ldconfig.)
if ! ldconfig -p 2>/dev/null | grep 'libusb-1.0.so.0' >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing libusb-1.0-0 (needed by pyrealsense2)"
    (apt-get install -y --no-install-recommends libusb-1.0-0 >/dev/null 2>&1 ||
     (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends libusb-1.0-0 >/dev/null 2>&1)) ||
      echo "setup: WARNING apt could not install libusb-1.0-0; RealSense devices will be unavailable"
  else
    echo "setup: RealSense support needs libusb; run:  sudo apt-get install -y libusb-1.0-0"
  fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/ir-guidance" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r requirements.lock -c constraints.txt
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
[ -x "$venv/bin/ir-guidance" ] || { echo "setup: .venv/bin/ir-guidance missing after install" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done; try  .venv/bin/ir-guidance --help"
