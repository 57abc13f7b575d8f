#!/usr/bin/env bash
# Runs the tests of the packages given as a plain user, so that nothing in
# them leans on root unnoticed: the test binaries are built by the caller,
# then run as uid 65534 (setpriv, from util-linux) if the caller is root.
set -euo pipefail
GO=${GO:-go}
uid=65534

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
mkdir "$tmp/bin" "$tmp/home"
"$GO" test -race -c -o "$tmp/bin/" "$@"

as=()
if [ "$(id -u)" = 0 ]; then
	command -v setpriv >/dev/null || { echo "test-nonroot: setpriv missing: install util-linux (hack/deps.sh)" >&2; exit 1; }
	chown "$uid:$uid" "$tmp/home"
	as=(setpriv --reuid="$uid" --regid="$uid" --clear-groups)
fi
failed=0
for t in "$tmp"/bin/*.test; do
	echo "$(basename "$t" .test) as uid $( [ ${#as[@]} -gt 0 ] && echo "$uid" || id -u ):"
	(cd "$tmp/home" && "${as[@]}" env HOME="$tmp/home" TMPDIR="$tmp/home" "$t" -test.count=1) || failed=1
done
exit "$failed"
