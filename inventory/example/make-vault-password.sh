#!/usr/bin/env bash
# Writes the vault password of THIS EXAMPLE ONLY (it encrypts the demo secrets in host_vars/) into
# inventory/example/vault-password.example, which git ignores. A real fleet keeps its own password
# outside the repository (or uses --ask-vault-pass); never commit one.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/vault-password.example"
umask 077
printf '%s\n' example-vault-password-do-not-use >"$out"
echo "$out"
