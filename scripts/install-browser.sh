#!/usr/bin/env bash
# Installs the headless browser the web view's browser test drives (flow-web/tests/browser.rs):
# Debian's `chromium` and its WebDriver server `chromium-driver`. Idempotent: does nothing
# when both are installed. Needs root (apt-get), as CI and the developers' machines have.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "chromium and chromedriver are installed: $(chromium --version 2>/dev/null || true)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
echo "installed: $(chromium --version 2>/dev/null || true), $(chromedriver --version 2>/dev/null || true)"
