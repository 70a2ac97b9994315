#!/usr/bin/env bash
# Install Claude Code (npm @anthropic-ai/claude-code, pinned) into a private prefix
# for the end-to-end tests (`make e2e`, tests/e2e/). Needs only node and npm.
#
#   scripts/install_claude_code.sh [PREFIX]      # default: <repo>/.e2e
#
# Idempotent: a stamp file naming the pinned version ends a second run at once.
# The package's postinstall (install.cjs) copies the platform's native binary over
# a placeholder at bin/claude.exe. npm may skip install scripts (--ignore-scripts,
# ignore-scripts=true in an npmrc, or newer npm's allowScripts policy), so when the
# binary does not answer `--version` the script runs install.cjs itself.
set -euo pipefail

VERSION=2.1.337 # `npm view @anthropic-ai/claude-code version`; the version tests/e2e was checked with
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${1:-$ROOT/.e2e}"
PACKAGE="$PREFIX/node_modules/@anthropic-ai/claude-code"
CLAUDE="$PREFIX/node_modules/.bin/claude"
STAMP="$PREFIX/.installed-claude-code-$VERSION"

answers() { "$CLAUDE" --version 2>/dev/null | grep -q "^$VERSION "; }

if [[ -f "$STAMP" ]] && answers; then
  exit 0
fi
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH; make e2e needs node and npm" >&2; exit 2; }
done

mkdir -p "$PREFIX"
started=$SECONDS
# --no-audit/--no-fund: no calls beyond the registry; the engines warning (node >= 22
# wanted) does not matter, since the native binary does not run on node.
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@$VERSION"
if ! answers; then
  echo "npm left the placeholder at $PACKAGE/bin/claude.exe; running its install.cjs" >&2
  (cd "$PACKAGE" && node install.cjs)
fi
if ! answers; then
  echo "error: $CLAUDE --version does not print $VERSION after install.cjs" >&2
  exit 1
fi
rm -f "$PREFIX"/.installed-claude-code-*
touch "$STAMP"
echo "Claude Code $VERSION installed in $PREFIX in $((SECONDS - started)) s"
