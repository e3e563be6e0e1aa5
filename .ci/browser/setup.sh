#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the test that opens the `snakemake --report` page (tests/workflow/test_workflow.py).
#
#   .ci/browser/setup.sh        as root; instant when both are already installed
#   .ci/browser/setup.sh --dry-run   says what it would install, changes nothing (`make test` says it first)
#
# Without root or apt-get it changes nothing and exits 0 (the report test then skips and says why).
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    [[ ${1:-} == --dry-run ]] && echo "browser-setup: Chromium and ChromeDriver already installed: nothing to install"
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "browser-setup: not root or no apt-get: leaving this machine alone (the report test will skip)"
    exit 0
fi
if [[ ${1:-} == --dry-run ]]; then
    echo "browser-setup: as root, will install chromium and chromium-driver with apt-get (Debian's packages) for" \
         "the report test in tests/workflow/test_workflow.py"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "browser-setup: $(chromium --version)"
