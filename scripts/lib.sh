# Sourced by the scripts in this folder: find the project and make its .venv.
# Works on a fresh Debian 12 machine: installs python3-venv when run as root.
set -euo pipefail
HYPHA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$HYPHA_ROOT/.venv"

hypha_venv() {
  local extras="${1:-test}"
  local py="${PYTHON:-python3}"
  if ! command -v "$py" >/dev/null 2>&1; then
    echo "error: $py not found; install Python 3.11 or newer (apt-get install python3)" >&2
    exit 1
  fi
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Hypha needs Python 3.11 or newer; $py is $("$py" --version 2>&1)" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing python3-venv (Debian's venv module)..." >&2
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        "$py" -m venv "$VENV"
      else
        echo "error: cannot create a venv; run: sudo apt-get install python3-venv" >&2
        exit 1
      fi
    fi
  fi
  # Reinstall only when pyproject.toml changed (or the extras asked for did).
  local stamp="$VENV/.hypha-installed"
  local want
  want="$(sha256sum "$HYPHA_ROOT/pyproject.toml" | cut -d' ' -f1) $extras"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing hypha[$extras] into $VENV ..." >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$HYPHA_ROOT[$extras]" >&2
    echo "$want" >"$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

# Install the Debian packages named, if any is missing and we can: root, apt-get and
# dpkg-query present, and HYPHA_NO_APT unset. Otherwise do nothing: what needs a
# missing package skips with a reason (the demo falls back to plain processes).
# A failed install is a note, not an error.
hypha_debs() {
  [ "$(id -u)" = 0 ] && [ -z "${HYPHA_NO_APT:-}" ] || return 0
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 || return 0
  local missing=() pkg
  for pkg in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]} (HYPHA_NO_APT=1 skips this) ..." >&2
  if ! { apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
              "${missing[@]}" >/dev/null; }; then
    echo "note: could not install ${missing[*]}; what needs them will be skipped" >&2
  fi
}
