#!/usr/bin/env bash
# Debian packages the test suite needs: Fashion-MNIST (offline copy, for the metrics tests)
# and headless Chromium + chromedriver (for the Prefect UI test). Installs what is missing
# when run as root with apt-get; exits non-zero, naming what is missing, when it cannot:
# the suite must not go green by skipping or substituting what it could not get.
set -u
missing() {
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
}
missing
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing system packages: ${need[*]}; run 'sudo bash scripts/setup_system.sh' on a Debian/Ubuntu" \
       "machine, or install them by hand" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
if ! apt-get update -qq >/dev/null || ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; then
  echo "error: apt-get could not install ${need[*]}" >&2
  exit 1
fi
missing  # the packages installed, but do they provide what the tests look for?
if [ ${#need[@]} -ne 0 ]; then
  echo "error: still missing after installing: ${need[*]}" >&2
  exit 1
fi
