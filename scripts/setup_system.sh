#!/usr/bin/env bash
# Debian packages used by parts of the test suite: Fashion-MNIST (offline copy) and
# headless Chromium for the Prefect UI test. Installs them when run as root with
# apt-get available; otherwise says what is missing and carries on (the tests that
# need them then report it).
set -u
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
    || echo "warning: could not install ${need[*]}" >&2
else
  echo "warning: missing system packages (install as root): ${need[*]}" >&2
fi
exit 0
