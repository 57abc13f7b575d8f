#!/usr/bin/env bash
# Fails if git tracks a built program: an ELF file, or an executable file
# that is not a script (no #! line). Built binaries belong in bin/, ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=()
while IFS= read -r -d '' entry; do
  mode=${entry%% *}
  path=${entry#*$'\t'}
  [ -f "$path" ] || continue
  magic=$(head -c 4 "$path" | od -An -tx1 | tr -d ' \n')
  if [ "$magic" = 7f454c46 ]; then
    bad+=("$path (ELF)")
  elif [ "$mode" = 100755 ] && [ "$(head -c 2 "$path")" != '#!' ]; then
    bad+=("$path (executable, not a script)")
  fi
done < <(git ls-files -s -z)
if [ ${#bad[@]} -gt 0 ]; then
  printf 'verify: these tracked files are built programs; remove them and ignore them:\n' >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
