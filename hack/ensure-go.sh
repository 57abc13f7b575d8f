#!/usr/bin/env bash
# Makes sure a Go toolchain new enough for go.mod is installed, and prints the
# directory holding its go binary. Machines of this project come with Go in
# /usr/local/go; elsewhere the toolchain is fetched from the Go module proxy
# (the golang.org/toolchain module), whose address Debian's own Go knows.
set -euo pipefail
want=$(awk '/^go /{print $2}' "$(dirname "$0")/../go.mod")

ok() { # ok GO: is GO at least the version go.mod asks for?
  local have
  have=$("$1" env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
  [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" = "$want" ]
}

for g in "$(command -v go || true)" /usr/local/go/bin/go; do
  if [ -n "$g" ] && [ -x "$g" ] && ok "$g"; then dirname "$g"; exit 0; fi
done

echo "ensure-go: installing Go $want from the module proxy" >&2
if ! command -v curl >/dev/null || ! command -v unzip >/dev/null || ! command -v go >/dev/null; then
  apt-get update -qq >&2
  apt-get install -y -qq curl unzip ca-certificates golang-go >&2
fi
proxy=${GOPROXY:-$(go env GOPROXY)}
proxy=${proxy%%,*}
version=$(curl -fsSL "$proxy/golang.org/toolchain/@v/list" | grep -E "^v0\.0\.1-go${want}(\.[0-9]+)?\.linux-amd64$" | sort -V | tail -1)
[ -n "$version" ] || { echo "ensure-go: no toolchain for go $want on the proxy" >&2; exit 1; }
tmp=$(mktemp -d)
curl -fsSL -o "$tmp/go.zip" "$proxy/golang.org/toolchain/@v/$version.zip"
unzip -q "$tmp/go.zip" -d "$tmp"
rm -rf /usr/local/go
mv "$tmp/golang.org/toolchain@$version" /usr/local/go
chmod -R a+x /usr/local/go/bin /usr/local/go/pkg/tool  # module zips keep no file modes
rm -rf "$tmp"
ok /usr/local/go/bin/go || { echo "ensure-go: installed toolchain does not work" >&2; exit 1; }
echo /usr/local/go/bin
