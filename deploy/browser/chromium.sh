#!/usr/bin/env bash
# Find the headless browser the console's browser tests drive (tests/browser): Debian's Chromium,
# driven by Playwright over CDP. Playwright's own browser downloads are never used.
# Last line of stdout: the path of the chromium executable.
#
# Env: FUGOU_CHROMIUM (an executable to use instead of searching; it is not installed then).
# Installs Debian's chromium package when none is found (needs root and apt-get).
set -euo pipefail

find_chromium() {
  local c
  for c in "$(command -v chromium 2>/dev/null || true)" /usr/bin/chromium /usr/lib/chromium/chromium; do
    if [[ -n "$c" && -x "$c" ]]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if [[ -n "${FUGOU_CHROMIUM:-}" ]]; then
  if [[ ! -x "$FUGOU_CHROMIUM" ]]; then
    echo "chromium.sh: FUGOU_CHROMIUM=$FUGOU_CHROMIUM is not an executable file" >&2
    exit 1
  fi
  bin="$FUGOU_CHROMIUM"
elif ! bin="$(find_chromium)"; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "chromium.sh: no chromium found; install Debian's package" \
         "(sudo apt-get install --no-install-recommends chromium) or set FUGOU_CHROMIUM to a Chromium executable" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null; then
    echo "chromium.sh: no chromium found and no apt-get to install it; set FUGOU_CHROMIUM to a Chromium executable" >&2
    exit 1
  fi
  echo "chromium.sh: installing Chromium (apt-get install chromium)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends chromium >&2
  bin="$(find_chromium)" || { echo "chromium.sh: chromium still not found after install" >&2; exit 1; }
fi

# A font with Chinese glyphs, so the screenshots show the zh-CN console rather than boxes (the
# tests read text from the DOM, not from pixels, so they pass without one).
if [[ -z "${FUGOU_CHROMIUM:-}" ]] && ! fc-list :lang=zh 2>/dev/null | grep -q . && [[ "$(id -u)" == 0 ]] \
    && command -v apt-get >/dev/null; then
  echo "chromium.sh: installing a Chinese font (apt-get install fonts-wqy-microhei)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends fonts-wqy-microhei >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends fonts-wqy-microhei >&2; } \
    || echo "chromium.sh: no Chinese font installed; screenshots will show boxes for Chinese text" >&2
fi

# It must start: a broken install fails here, with its own words, not as a Playwright timeout.
# (Debian's /usr/bin/chromium is a shell wrapper whose harmless warnings go to stderr.)
if ! version="$("$bin" --headless=new --no-sandbox --version 2>/dev/null)"; then
  echo "chromium.sh: $bin --version failed:" >&2
  "$bin" --headless=new --no-sandbox --version >&2 || true
  exit 1
fi
echo "chromium.sh: $version at $bin" >&2
echo "$bin"
