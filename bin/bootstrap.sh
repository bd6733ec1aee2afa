# Sourced by bin/groklab and bin/test: make (or refresh) the project's virtualenv, quietly.
# GROKLAB_VENV picks its folder; EXTRAS picks the optional dependency groups to install.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GROKLAB_VENV:-$root/.venv}"
stamp="$venv/.installed${EXTRAS:+-$EXTRAS}"
# An install with extras also satisfies a plain one.
[ -z "${EXTRAS:-}" ] && [ -f "$venv/.installed-test" ] && [ ! -f "$stamp" ] && stamp="$venv/.installed-test"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "groklab: installing into $venv (first run takes a minute)..." >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -e "$root${EXTRAS:+[$EXTRAS]}" >&2
  touch "$stamp"
fi
