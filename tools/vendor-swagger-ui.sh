#!/usr/bin/env bash
# Refreshes the Swagger UI files served at /docs from the npm registry's
# swagger-ui-dist package, with its licence. Run from the repository root
# when upgrading; the files are committed so building needs no network.
set -euo pipefail
version="${1:-5.32.0}"
dest=crates/common/assets/swagger-ui
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@${version}" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
mkdir -p "$dest"
for f in swagger-ui-bundle.js swagger-ui.css LICENSE; do
    cp "$work/package/$f" "$dest/$f"
done
echo "swagger-ui-dist ${version} (npm registry)" >"$dest/VERSION"
echo "vendored swagger-ui-dist ${version} into ${dest}"
